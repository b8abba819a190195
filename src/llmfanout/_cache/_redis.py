"""RedisCache: one cache shared by every worker of a cluster, through Redis.

The sync redis-py client runs in a worker thread (so asyncio and trio alike), and the
lookups or writes made while one is in flight go in one ``MGET`` or one pipeline
(:mod:`._batcher`). Keys are ``llmfanout:cache:<namespace>:<hash>``; ``ttl`` becomes
Redis's own expiry. The URL's password never appears in a repr or a message.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from .._flow._redislimit import redact
from ._batcher import BatchedStore

_SCHEMES = ("redis", "rediss", "unix")
_TIMEOUT = 5.0  # seconds to connect or to answer


class RedisCache(BatchedStore):
    """A response cache in Redis (needs the ``redis`` extra: ``pip install 'llmfanout[redis]'``).

    ``url``: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix://`` for
    a socket). ``ttl``: seconds an answer stays (None: until evicted by Redis's own
    policy). ``namespace`` both prefixes the keys and is mixed into them: a new one starts
    an empty cache. Raises ``ValueError`` for a URL that is not Redis's, ``ImportError``
    naming the extra when the client is missing. Redis errors during a run are raised
    from ``get``/``put``; the executor then treats the call as a miss and logs it.
    """

    def __init__(self, url: str, *, ttl: float | None = None, namespace: str | None = None) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            shown = redact(url) if isinstance(url, str) else repr(url)
            raise ValueError(
                f"RedisCache: url is {shown!r}; give a Redis URL such as "
                "'redis://localhost:6379/0' (or rediss:// for TLS, unix:// for a socket)"
            )
        if ttl is not None and (
            not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0
        ):
            raise ValueError(f"RedisCache: ttl is {ttl!r}; give seconds > 0, or None")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ValueError(f"RedisCache: namespace is {namespace!r}; give a non-empty string")
        try:
            import redis  # noqa: F401  (fail here, not in a worker thread mid-run)
        except ImportError as exc:
            raise ImportError(
                "RedisCache needs the redis client: pip install 'llmfanout[redis]'"
            ) from exc
        self.url = url
        self.ttl = ttl
        self.namespace = namespace or ""
        self._prefix = f"llmfanout:cache:{namespace or 'default'}:"
        self._mutex = threading.Lock()
        self._client: Any = None
        super().__init__()

    def __repr__(self) -> str:
        return f"RedisCache({redact(self.url)!r}, ttl={self.ttl!r}, namespace={self.namespace!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.url, self.ttl, self.namespace or None))

    def clear(self) -> int:
        """Remove every answer of this namespace; return how many there were (blocking)."""
        with self._mutex:
            client = self._connect()
            removed = 0
            batch: list[Any] = []
            for name in client.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    removed += client.delete(*batch)
                    batch = []
            if batch:
                removed += client.delete(*batch)
        return removed

    # Alike in shape only with SQLiteCache.close: each closes its own kind of client.
    def close(self) -> None:
        """Close the connection pool (a later call opens another)."""
        with self._mutex:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _connect(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
            )
        return self._client

    def _read(self, keys: list[str]) -> list[bytes | None]:
        with self._mutex:
            client = self._connect()
            try:
                values: list[bytes | None] = client.mget([self._prefix + k for k in keys])
            except Exception as exc:
                raise _failure(self.url, exc) from None
        return values

    def _write(self, entries: list[tuple[str, bytes]]) -> list[None]:
        ms = None if self.ttl is None else max(1, round(self.ttl * 1000))
        with self._mutex:
            client = self._connect()
            try:
                pipe = client.pipeline(transaction=False)
                for key, value in entries:
                    pipe.set(self._prefix + key, value, px=ms)
                pipe.execute()
            except Exception as exc:
                raise _failure(self.url, exc) from None
        return [None] * len(entries)


def _failure(url: str, exc: Exception) -> ConnectionError:
    # redis-py's messages may repeat the URL it was given: say it again without the password.
    return ConnectionError(f"RedisCache {redact(url)}: {type(exc).__name__}")


def _rebuild(url: str, ttl: float | None, namespace: str | None) -> RedisCache:
    return RedisCache(url, ttl=ttl, namespace=namespace)
