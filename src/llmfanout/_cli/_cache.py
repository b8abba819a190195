"""``llmfanout cache stats|clear PATH``: look into a SQLite cache file, or empty it."""

from __future__ import annotations

import argparse
import datetime
import os
from typing import Any

from .._cache._open import is_redis, open_cache
from .._cache._sqlite import SQLiteCache
from ._args import UsageError


def add_parser(commands: Any) -> None:
    """Add ``cache`` to the subcommands."""
    cache = commands.add_parser(
        "cache",
        help="show what a cache file holds, or empty it",
        description="Show what a response cache holds (stats), or remove every answer "
        "in it (clear). PATH is a SQLite cache file, as given to run --cache.",
    )
    # Alike in shape only: each subcommand declares its own flags (argparse).
    cache.add_argument("action", choices=("stats", "clear"), help="what to do")
    cache.add_argument(
        "path", metavar="PATH", help="the cache file (or a redis:// URL, clear only)"
    )
    cache.add_argument(
        "--cache-namespace",
        metavar="NAME",
        help="with a redis:// URL: the namespace to clear",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``llmfanout cache``; return the exit status."""
    place: str = args.path
    if is_redis(place):
        if args.action == "stats":
            raise UsageError("cache stats reads a SQLite cache file; give its path")
        try:
            cache = open_cache(place, args.cache_namespace)
        except (ValueError, ImportError) as exc:
            raise UsageError(str(exc)) from None
        removed = cache.clear()  # type: ignore[attr-defined]
        print(f"removed {removed:,} cached answers")
        return 0
    if not os.path.isfile(place):
        raise UsageError(f"no cache file at {place!r}; give the PATH given to run --cache")
    try:
        sqlite = SQLiteCache(place)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.action == "clear":
            print(f"removed {sqlite.clear():,} cached answers from {place}")
            return 0
        stats = sqlite.stats()
    finally:
        sqlite.close()
    print(f"{place}: {stats.entries:,} cached answers")
    print(f"answers: {stats.answer_bytes:,} bytes; file: {stats.file_bytes:,} bytes")
    if stats.oldest is not None and stats.newest is not None:
        print(f"written from {_when(stats.oldest)} to {_when(stats.newest)}")
    return 0


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")
