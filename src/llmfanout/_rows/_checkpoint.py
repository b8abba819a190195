"""A checkpoint directory: every worker appends its finished rows to a shard of its own.

A shard is an output file in the CLI's format (``llmfanout merge DIR -o OUT`` compacts
a directory of them, each id once), written crash-safe by :class:`RowWriter`: a killed
worker leaves complete lines and at most one torn last line. Workers never write to
another's shard, so no locking is needed, and each learns what the others have done by
reading the new lines of every shard before it starts a batch of rows (a torn or
half-written last line is read on a later look, once it is whole).

A row counts as done when some shard records its id: as a success, or as a failure
that cannot succeed on a re-run, or as any failure unless ``retry_failed`` (the CLI's
``--resume`` and ``--retry-failed``). Rows without a usable id are never skipped.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ._input_rows import key_of, load_json
from ._output_rows import SHARD_SUFFIX, RowWriter, _rerunnable, encode, shard_files

R = TypeVar("R", bound=Mapping[str, Any])


def row_key(row: Mapping[str, Any]) -> str | None:
    """The key of an input or output row's id (``custom_id`` in the batch format)."""
    value = row.get("custom_id", row.get("id")) if isinstance(row, Mapping) else None
    if value is None:
        return None
    try:
        return key_of(value)
    except (TypeError, ValueError):  # not JSON: the row is bad, and its output says so
        return None


class Checkpoint:
    """One worker's view of a checkpoint directory: its own shard, and what all record."""

    def __init__(self, directory: str | os.PathLike[str], *, retry_failed: bool = False) -> None:
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        name = f"shard-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = os.path.join(self.directory, name + SHARD_SUFFIX)
        self.retry_failed = retry_failed
        self.done: set[str] = set()
        self._read: dict[str, int] = {}  # shard -> bytes read (up to a complete line)
        self._writer: RowWriter | None = None

    def refresh(self) -> None:
        """Read the lines added to every other shard since the last look."""
        for shard in shard_files(self.directory):
            if shard == self.path:
                continue
            start = self._read.get(shard, 0)
            with open(shard, "rb") as file:
                file.seek(start)
                data = file.read()
            end = data.rfind(b"\n") + 1
            if not end:
                continue
            self._read[shard] = start + end
            for raw in data[:end].splitlines():
                self._note(raw)

    def _note(self, raw: bytes) -> None:
        try:
            row = load_json(raw)
        except ValueError:  # not a row: merge will name it; here it only means "not done"
            return
        if not isinstance(row, dict) or "success" not in row:
            return
        key = row_key(row)
        if key is not None and self._counts(row):
            self.done.add(key)

    def _counts(self, row: Mapping[str, Any]) -> bool:
        return bool(row["success"]) or not (self.retry_failed and _rerunnable(dict(row)))

    def pending(self, rows: Iterable[R]) -> list[R]:
        """The rows no shard records as done."""
        done = self.done
        return [row for row in rows if (key := row_key(row)) is None or key not in done]

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append finished output rows to this worker's shard (one write for them all)."""
        if not rows:
            return
        if self._writer is None:
            self._writer = RowWriter(self.path)
        self._writer.write(encode(rows), len(rows))
        for row in rows:
            key = row_key(row)
            if key is not None and self._counts(row):
                self.done.add(key)

    def close(self) -> None:
        """Make every row written durable and close the shard; idempotent."""
        if self._writer is not None:
            self._writer.close()
