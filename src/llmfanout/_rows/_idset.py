"""A set of row ids whose memory stays bounded: the first ``cap`` in a Python set, the
rest in a SQLite table in a temporary file.

Why: a first pass over the input must find repeated ids, and a resumed run must skip the
ids its output already records. A plain ``set[str]`` of every id costs about 90 bytes an
id (138 MB for 1M rows), so peak memory grew with the input. Past ``cap`` ids, new ids go
to ``CREATE TABLE ids(id BLOB PRIMARY KEY, round INTEGER) WITHOUT ROWID`` on disk: the
exact ids, never a hash, because a hash that collided would report a row as a repeat and
drop it. They are stored as their UTF-8 bytes with ``surrogatepass`` (a JSON id may hold a
lone surrogate, which SQLite's TEXT cannot take), a one-to-one encoding.

Ids are checked and added a batch at a time (:meth:`IdSet.add_new`,
:meth:`IdSet.contains_many`), so the per-id cost stays small once it spills: one
``executemany`` of ``INSERT OR IGNORE`` per batch, each row tagged with the batch's
round; only when fewer rows went in than were offered (a batch with an id seen before)
does one ``SELECT ... WHERE id IN (...) AND round < ?`` say which. Below ``cap`` SQLite
is never opened. :meth:`IdSet.close` (or leaving the ``with`` block, also on an error or
cancellation) closes the database and removes its directory; a process killed with
``kill -9`` leaves a ``llmfanout-ids-*`` directory in the temporary folder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

DEFAULT_CAP = 200_000
"""Ids held in memory (about 18 MB) before the rest go to disk."""


class IdSet:
    """Exact set of string ids; memory bounded by ``cap`` ids plus one batch."""

    def __init__(self, *, cap: int = DEFAULT_CAP) -> None:
        if cap < 0:
            raise ValueError(f"IdSet: cap is {cap!r}; give a whole number >= 0")
        self.cap = cap
        self._memory: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self._dir: str | None = None
        self._on_disk = 0
        self._round = 0  # batches inserted into the table so far
        self._batch = 998  # keys per query: SQLite's smallest limit on ? parameters, less one

    @property
    def path(self) -> str | None:
        """The directory holding the SQLite file, once it spilled (None before, and after
        :meth:`close`)."""
        return self._dir

    @property
    def in_memory(self) -> int:
        """How many of the ids are held in memory (at most ``cap``); the rest are on disk."""
        return len(self._memory)

    def __len__(self) -> int:
        return len(self._memory) + self._on_disk

    def __contains__(self, key: object) -> bool:
        if key in self._memory:
            return True
        if self._db is None or not isinstance(key, str):
            return False
        row = self._db.execute("SELECT 1 FROM ids WHERE id = ?", (_blob(key),)).fetchone()
        return row is not None

    def __iter__(self) -> Iterator[str]:
        """Every id, those in memory first, then those on disk (do not add while iterating)."""
        yield from self._memory
        if self._db is not None:
            for (blob,) in self._db.execute("SELECT id FROM ids"):
                yield blob.decode("utf-8", "surrogatepass")

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each of ``keys`` is in the set, in order (one query per batch on disk)."""
        memory = self._memory
        if self._db is None:
            return [key in memory for key in keys]
        on_disk = self._on_disk_of([key for key in keys if key not in memory], self._round + 1)
        return [key in memory or key in on_disk for key in keys]

    def add_new(self, keys: Sequence[str]) -> list[bool]:
        """Add ``keys``; for each, in order, True if it was not in the set before it.

        A key repeated within ``keys`` is new at its first place only, exactly as adding
        them one by one to a ``set`` would say.
        """
        memory = self._memory
        fresh: dict[str, None] = {}  # first places of keys not in memory, in order
        answer = []
        for key in keys:
            new = key not in memory and key not in fresh
            if new:
                fresh[key] = None
            answer.append(new)
        if not fresh:
            return answer
        if self._db is None and len(memory) + len(fresh) <= self.cap:
            memory.update(fresh)
            return answer
        old = self._insert(list(fresh))
        if old:
            answer = [new and key not in old for key, new in zip(keys, answer, strict=True)]
        return answer

    def update(self, keys: Iterable[str], *, batch: int = 4096) -> None:
        """Add every one of ``keys``, ``batch`` at a time."""
        chunk: list[str] = []
        for key in keys:
            chunk.append(key)
            if len(chunk) == batch:
                self.add_new(chunk)
                chunk = []
        self.add_new(chunk)

    def _insert(self, keys: list[str]) -> frozenset[str]:
        """Add ``keys`` (distinct) to the table; those of them it held already.

        ``INSERT OR IGNORE`` tags each new row with this batch's round: when every key
        was added (the usual case) that one statement is all; otherwise one query finds
        the keys held from an earlier round.
        """
        db = self._db or self._open()
        self._round += 1
        before = db.total_changes
        with db:  # one transaction per batch
            db.executemany(
                "INSERT OR IGNORE INTO ids VALUES (?, ?)",
                [(_blob(key), self._round) for key in sorted(keys)],  # sorted: fewer page hops
            )
        added = db.total_changes - before
        self._on_disk += added
        if added == len(keys):
            return frozenset()
        return self._on_disk_of(keys, self._round)

    def _on_disk_of(self, keys: list[str], before_round: int) -> frozenset[str]:
        """Those of ``keys`` that the table held before round ``before_round``."""
        assert self._db is not None
        found: set[str] = set()
        for start in range(0, len(keys), self._batch):
            part: list[object] = [_blob(key) for key in keys[start : start + self._batch]]
            query = f"SELECT id FROM ids WHERE id IN ({','.join('?' * len(part))}) AND round < ?"
            found.update(
                row[0].decode("utf-8", "surrogatepass")
                for row in self._db.execute(query, [*part, before_round])
            )
        return frozenset(found)

    def _open(self) -> sqlite3.Connection:
        self._dir = tempfile.mkdtemp(prefix="llmfanout-ids-")
        try:
            db = sqlite3.connect(os.path.join(self._dir, "ids.sqlite"), isolation_level="DEFERRED")
            # Scratch data, thrown away at the end: no journal, no fsync.
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute(
                "CREATE TABLE ids (id BLOB PRIMARY KEY, round INTEGER NOT NULL) WITHOUT ROWID"
            )
        except Exception:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        limit = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
        if limit is not None:
            self._batch = max(1, min(db.getlimit(limit), 32_766) - 1)
        self._db = db
        return db

    def close(self) -> None:
        """Forget every id; close and delete the SQLite file, if any. Safe to call twice."""
        self._memory = set()
        self._on_disk = 0
        db, self._db = self._db, None
        directory, self._dir = self._dir, None
        try:
            if db is not None:
                db.close()
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> IdSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _blob(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")
