"""SQLiteCache: answers in one SQLite file, safe for many processes and for ``kill -9``.

Python's own ``sqlite3`` in WAL mode with a busy timeout: readers never block the
writer, several processes may fill one file at once, and a killed process loses only the
transaction it had open (WAL with ``synchronous=NORMAL`` is never corrupted by a crash of
the process; a power cut may lose the last commits, never the file). Every call runs in
a worker thread, so the event loop (asyncio or trio) never blocks; lookups and writes
made while one is in flight go to the thread together, in one query or one transaction
(:mod:`._batcher`).

``ttl`` is checked on reading, so a new ``ttl`` applies to old entries too. With
``max_bytes`` each hit records its use and each write evicts the least recently used
entries until the answers stored fit; the running total is kept by triggers, not summed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from ._batcher import BatchedStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created REAL NOT NULL,
    used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_used ON answers (used);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS answers_added AFTER INSERT ON answers BEGIN
    UPDATE totals SET bytes = bytes + length(NEW.value) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS answers_replaced AFTER UPDATE OF value ON answers BEGIN
    UPDATE totals SET bytes = bytes - length(OLD.value) + length(NEW.value) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS answers_removed AFTER DELETE ON answers BEGIN
    UPDATE totals SET bytes = bytes - length(OLD.value) WHERE id = 0;
END;
"""

_CHUNK = 500  # keys per query: under SQLite's limit of bound parameters
_BUSY_TIMEOUT = 30.0


def _check_seconds(value: object, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"SQLiteCache: {name} is {value!r}; give seconds > 0, or None")
    return float(value)


@attrs.frozen
class CacheStats:
    """What a cache file holds: ``entries`` answers of ``answer_bytes`` in all, in a file
    of ``file_bytes`` (WAL included); ``oldest``/``newest``: when entries were written
    (seconds since the epoch, None when empty)."""

    entries: int
    answer_bytes: int
    file_bytes: int
    oldest: float | None
    newest: float | None


class SQLiteCache(BatchedStore):
    """A response cache in one SQLite file (made if missing, with its folder).

    ``ttl``: seconds an answer stays valid (None: for ever). ``max_bytes``: the most the
    stored answers may take; the least recently used are evicted past it. ``namespace``
    is mixed into every key: a new one starts an empty cache in the same file (the old
    entries stay until cleared or evicted). Opening checks the file at once and raises
    ``ValueError`` naming the path if it is not a usable SQLite database.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float | None = None,
        max_bytes: int | None = None,
        namespace: str = "",
    ) -> None:
        self.path = Path(path)
        self.ttl = _check_seconds(ttl, "ttl")
        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ValueError(f"SQLiteCache: max_bytes is {max_bytes!r}; give bytes >= 1, or None")
        self.max_bytes = max_bytes
        if not isinstance(namespace, str):
            raise TypeError(f"SQLiteCache: namespace must be a str, not {type(namespace).__name__}")
        self.namespace = namespace
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        super().__init__()
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r}, ttl={self.ttl!r}, max_bytes={self.max_bytes!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A connection does not travel: a copy (in a Ray worker, say) opens its own.
        return (_rebuild, (str(self.path), self.ttl, self.max_bytes, self.namespace))

    # -- maintenance (blocking: for the CLI and scripts) --------------------------------

    def stats(self) -> CacheStats:
        """What the file holds (see :class:`CacheStats`)."""
        with self._lock:
            db = self._connect()
            entries, oldest, newest = db.execute(
                "SELECT count(*), min(created), max(created) FROM answers"
            ).fetchone()
            (stored,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )
        return CacheStats(entries, stored, size, oldest, newest)

    def clear(self) -> int:
        """Remove every answer (of every namespace); return how many there were."""
        with self._lock:
            db = self._connect()
            with db:
                removed = db.execute("DELETE FROM answers").rowcount
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")
        return removed

    def close(self) -> None:
        """Close this process's connection (a later call opens it again)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- in the worker thread -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = self._connection
        if db is not None and self._pid == os.getpid():
            return db
        # A forked child must not share its parent's connection: it opens its own.
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ValueError(
                f"SQLiteCache: cannot use {str(self.path)!r} as a cache file ({exc}); give "
                "the path of a new file or of a cache made by llmfanout"
            ) from None
        self._connection = db
        return db

    def _read(self, keys: list[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        now = time.time()
        oldest = -1.0 if self.ttl is None else now - self.ttl
        unique = list(dict.fromkeys(keys))
        with self._lock:
            db = self._connect()
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT key, value FROM answers WHERE key IN ({marks}) AND created > ?",
                    (*chunk, oldest),
                ).fetchall()
                found.update(rows)
            if self.max_bytes is not None and found:
                with db:
                    db.execute("BEGIN")
                    db.executemany(
                        "UPDATE answers SET used = ? WHERE key = ?", [(now, k) for k in found]
                    )
        return [found.get(key) for key in keys]

    def _write(self, entries: list[tuple[str, bytes]]) -> list[None]:
        now = time.time()
        with self._lock:
            db = self._connect()
            with db:  # one transaction for the batch
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO answers (key, value, created, used) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "created = excluded.created, used = excluded.used",
                    [(key, value, now, now) for key, value in entries],
                )
                if self.max_bytes is not None:
                    self._evict(db, self.max_bytes)
        return [None] * len(entries)

    @staticmethod
    def _evict(db: sqlite3.Connection, limit: int) -> None:
        while True:
            (stored,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
            excess = stored - limit
            if excess <= 0:
                return
            oldest = db.execute(
                "SELECT key, length(value) FROM answers ORDER BY used LIMIT 256"
            ).fetchall()
            if not oldest:
                return
            doomed = []
            for key, size in oldest:
                doomed.append((key,))
                excess -= size
                if excess <= 0:
                    break
            db.executemany("DELETE FROM answers WHERE key = ?", doomed)


def _rebuild(path: str, ttl: float | None, max_bytes: int | None, namespace: str) -> SQLiteCache:
    return SQLiteCache(path, ttl=ttl, max_bytes=max_bytes, namespace=namespace)
