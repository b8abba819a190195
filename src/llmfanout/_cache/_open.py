"""A cache from a place: a Redis URL, else the path of a SQLite file."""

from __future__ import annotations

from urllib.parse import urlsplit

from ._front import Cache
from ._redis import RedisCache
from ._sqlite import SQLiteCache

REDIS_SCHEMES = ("redis", "rediss", "unix")


def is_redis(place: str) -> bool:
    """Whether ``place`` names a Redis server rather than a file."""
    return "://" in place and urlsplit(place).scheme in REDIS_SCHEMES


def open_cache(place: str, namespace: str | None = None) -> Cache:
    """:class:`RedisCache` for ``redis://``, ``rediss://``, ``unix://``; else
    :class:`SQLiteCache` at that path. Raises ``ValueError`` (or ``ImportError`` for a
    missing redis client) naming the problem."""
    if is_redis(place):
        return RedisCache(place, namespace=namespace)
    return SQLiteCache(place, namespace=namespace or "")
