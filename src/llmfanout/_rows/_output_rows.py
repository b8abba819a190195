"""Output rows: building them, writing them crash-safe, and reading back what a file holds.

:class:`RowWriter` appends whole lines with one ``write()`` per batch of rows, so after a
crash the file holds complete lines and at most one torn last line, which :func:`recover`
finds and :func:`cut_torn_line` cuts off. An output may also be a directory of shard files
(one per worker, as a distributed job writes them): :func:`recover` reads every shard,
and :func:`merge` compacts them into one file with each id once. :func:`recover_into`
reads a file's ids into an :class:`~._idset.IdSet` as it goes (``llmfanout embed
--resume``), so memory stays bounded however many rows the output holds.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, TypeVar

import attrs

from .._base._json import encoder
from .._core._tasks import TaskResult
from ._idset import IdSet
from ._input_rows import Bad, key_of, load_json

_T = TypeVar("_T")

SHARD_SUFFIX = ".jsonl"
MAX_LINE_BYTES = 256 * 1024 * 1024
"""The longest output line read back: far above any row we write, far below a memory
error (a file that never ends a line is not an output of ours)."""


class OutputCorrupt(ValueError):
    """A complete line of an output file is not a row this tool wrote."""


@attrs.define
class Recovered:
    """What an existing output (a file, or a directory of shards) already holds."""

    keys: set[str] = attrs.Factory(set)  # ids of recorded rows
    lines: set[int] = attrs.Factory(set)  # input lines of recorded rows with no usable id
    rows: int = 0
    failed: int = 0
    size: int = 0  # bytes of complete lines (of a single file)
    torn: int = 0  # bytes of a torn last line (0 when the file ends cleanly)
    rerunnable: set[str] = attrs.Factory(set)  # ids of failed rows that may run again
    succeeded: set[str] = attrs.Factory(set)  # with shards: ids some shard records as ok

    def forget_failed(self) -> None:
        """Count the rerunnable failed rows as not recorded (``--retry-failed``).

        A file still holds them until :func:`drop_failed` rewrites it; a directory keeps
        them, and :func:`merge` prefers the success a later run adds.
        """
        dropped = self.rerunnable - self.succeeded
        self.keys -= dropped
        self.rows -= len(dropped)
        self.failed -= len(dropped)
        self.rerunnable = set()


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file to read back, refusing what is not a regular file (:class:`OutputCorrupt`).

    A FIFO would block, a device (``/dev/zero``) never end: neither is an output we wrote.
    Links are followed to what they name, and that is checked on the open file itself.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OutputCorrupt(
                f"{path} is {_kind(mode)}, not a regular file; llmfanout reads back and "
                "resumes only regular files: give a file (or a directory of shard files)"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:  # close the descriptor, then re-raise (noqa: cancellation-ok)
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_lines(file: BinaryIO, path: str) -> Iterator[bytes]:
    """The lines of ``file``, each at most :data:`MAX_LINE_BYTES` (else :class:`OutputCorrupt`)."""
    number = 0
    while raw := file.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise OutputCorrupt(
                f"{path}:{number}: a line longer than {MAX_LINE_BYTES} bytes; not a row written "
                "by llmfanout. Write to a new output file"
            )
        yield raw


def shard_files(directory: str | os.PathLike[str]) -> list[str]:
    """The shard files of an output directory (``*.jsonl``, hidden ones aside), sorted."""
    names = sorted(
        name
        for name in os.listdir(directory)
        if name.endswith(SHARD_SUFFIX) and not name.startswith(".")
    )
    return [os.path.join(directory, name) for name in names]


def _rows(path: str) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """``(line number, bytes, row)`` for each complete line; ``row`` None for a blank one.

    A torn last line (no newline: a crash mid-write) ends the iteration with ``row``
    None and its size negated. Raises :class:`OutputCorrupt` naming a bad complete line.
    """
    with open_regular(path) as file:
        for number, raw in enumerate(read_lines(file, path), 1):
            if not raw.endswith(b"\n"):
                yield number, -len(raw), None
                return
            if not raw.strip():
                yield number, len(raw), None
                continue
            try:
                row = load_json(raw)
                if not isinstance(row, dict) or "id" not in row or "success" not in row:
                    raise ValueError("not a row")
            except ValueError:
                raise OutputCorrupt(
                    f"{path}:{number}: not a row written by llmfanout; fix or delete that "
                    "line, or write to a new output file"
                ) from None
            yield number, len(raw), row


def recover(path: str | os.PathLike[str]) -> Recovered:
    """Read an output's rows (reading only): recorded ids, failures, a torn tail.

    ``path`` is a file, or a directory whose shard files are all read. Raises
    :class:`OutputCorrupt` naming the line when a complete line is not a row.
    """
    found = Recovered()
    path = os.fspath(path)
    if os.path.isdir(path):
        for shard in shard_files(path):
            _recover_file(shard, found, shards=True)
        found.size = found.torn = 0  # shards are only read, never cut
    else:
        _recover_file(path, found, shards=False)
    outranked = found.rerunnable & found.succeeded
    found.failed -= len(outranked)
    found.rerunnable -= outranked
    return found


def _recover_file(path: str, found: Recovered, *, shards: bool) -> None:
    for _, size, row in _rows(path):
        if size < 0:
            found.torn = -size
            return
        found.size += size
        if row is None:
            continue
        value = row["id"]
        key = None if value is None else key_of(value)
        if shards and key is not None and key in found.keys:
            if row["success"]:  # a later shard's success outranks an earlier failure
                found.succeeded.add(key)
            continue
        found.rows += 1
        if key is None:
            found.lines.add(row.get("line"))  # type: ignore[arg-type]
        else:
            found.keys.add(key)
            if row["success"]:
                found.succeeded.add(key)
        if not row["success"]:
            found.failed += 1
            if key is not None and _rerunnable(row):
                found.rerunnable.add(key)


@attrs.define
class Tail:
    """Where a file's complete lines end: what :func:`cut_torn_line` needs."""

    size: int = 0  # bytes of complete lines
    torn: int = 0  # bytes of a torn last line (0 when the file ends cleanly)


def recover_into(path: str | os.PathLike[str], done: IdSet, *, retry_failed: bool = False) -> Tail:
    """Add the ids an output file records to ``done``, as it reads; where its lines end.

    ``done`` receives exactly ``recover(path).keys`` (after :meth:`Recovered.forget_failed`
    when ``retry_failed``): every recorded id, or with ``retry_failed`` every id but those
    whose rows are all failures and one of them may run again (a success among them
    outranks them). Unlike :func:`recover`, no set of every id is built: ids go to
    ``done`` a chunk at a time in one pass, and with ``retry_failed`` the ids of failed
    rows wait in two more :class:`~._idset.IdSet` (cap ``done.cap``), so peak memory does
    not grow with the file. Only a single file (not a shard directory); rows for bad input
    lines without an id are not read back (``Recovered.lines``). Raises
    :class:`OutputCorrupt` naming the line when a complete line is not a row; ``done`` may
    then hold some of the ids.
    """
    path = os.fspath(path)
    tail = Tail()
    if not retry_failed:
        done.update(key for key, _, _ in _recorded(path, tail))
        return tail
    with IdSet(cap=done.cap) as rerun, IdSet(cap=done.cap) as futile:
        # rerun: ids with a failed row that may run again; futile: ids with a failed row
        # for a bad input line (never run again).
        for part in _chunks(_recorded(path, tail)):
            done.add_new([key for key, ok, _ in part if ok])
            rerun.add_new([key for key, ok, again in part if again])
            futile.add_new([key for key, ok, again in part if not ok and not again])
        # An id with no success is done if none of its failures may run again.
        for keys in _chunks(futile):
            again = rerun.contains_many(keys)
            done.add_new([key for key, a in zip(keys, again, strict=True) if not a])
    return tail


_CHUNK = 4096  # ids checked against and added to the IdSets at a time


def _chunks(items: Iterable[_T]) -> Iterator[list[_T]]:
    part: list[_T] = []
    for item in items:
        part.append(item)
        if len(part) == _CHUNK:
            yield part
            part = []
    if part:
        yield part


def _recorded(path: str, tail: Tail) -> Iterator[tuple[str, bool, bool]]:
    """``(id's key, success, rerunnable)`` of each row with an id; fills ``tail``."""
    for _, size, row in _rows(path):
        if size < 0:
            tail.torn = -size
            return
        tail.size += size
        if row is None or row["id"] is None:
            continue
        yield key_of(row["id"]), bool(row["success"]), _rerunnable(row)


def _rerunnable(row: dict[str, Any]) -> bool:
    # Rows for bad input lines carry "line"; sending them again cannot succeed.
    return not row["success"] and row["id"] is not None and "line" not in row


def cut_torn_line(path: str | os.PathLike[str], recovered: Recovered | Tail) -> None:
    """Truncate the file to the end of its last complete line."""
    if recovered.torn:
        with open(path, "r+b") as file:
            file.truncate(recovered.size)
            os.fsync(file.fileno())


def drop_failed(path: str | os.PathLike[str]) -> None:
    """Rewrite the output without its failed rows (atomically), so they can run again.

    Rows for bad input lines stay: rerunning them cannot succeed. A torn last line is
    dropped too.
    """
    path = os.fspath(path)
    temporary = path + ".llmfanout-tmp"
    with open_regular(path) as source, open(temporary, "wb") as target:
        for raw in read_lines(source, path):
            if not raw.endswith(b"\n"):
                break
            if raw.strip() and _rerunnable(json.loads(raw)):
                continue
            target.write(raw)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)


@attrs.frozen
class Merged:
    """What :func:`merge` wrote: rows in, rows out (one per id), and failures among them."""

    read: int
    written: int
    failed: int


def merge(directory: str | os.PathLike[str], output: str | os.PathLike[str]) -> Merged:
    """Compact a directory's shards into ``output``: each id once, a success over a failure.

    Among several rows for one id, the first success wins, else the first row; rows for
    bad input lines (no id) are kept once per line. Torn last lines are skipped. The
    output is written beside its final name and renamed into place, so it is either
    whole or absent; a pipe or a device (``-o FIFO``, ``-o /dev/stdout``) is written
    into as it is, never replaced. Raises :class:`OutputCorrupt` naming a bad line.
    """
    shards = shard_files(directory)
    chosen: dict[object, tuple[int, int, bool]] = {}  # key -> (shard, line, success)
    read = 0
    for index, shard in enumerate(shards):
        for number, size, row in _rows(shard):
            if size < 0 or row is None:
                continue
            read += 1
            value = row["id"]
            key: object = ("line", row.get("line")) if value is None else key_of(value)
            ok = bool(row["success"])
            held = chosen.get(key)
            if held is None or (ok and not held[2]):
                chosen[key] = (index, number, ok)
    wanted: dict[int, set[int]] = {}
    for index, number, _ in chosen.values():
        wanted.setdefault(index, set()).add(number)
    output = os.fspath(output)
    if is_stream(output):
        # Renaming over a pipe would replace it with a file its reader never sees, and
        # there is nothing to make durable: the rows go straight in, as run -o does.
        with open(output, "ab") as target:
            _copy_lines(shards, wanted, target)
    else:
        temporary = output + ".llmfanout-tmp"
        with open(temporary, "wb") as target:
            _copy_lines(shards, wanted, target)
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, output)
    failed = sum(not ok for _, _, ok in chosen.values())
    return Merged(read=read, written=len(chosen), failed=failed)


def is_stream(path: str) -> bool:
    """Whether ``path`` is a pipe, a terminal or another device: written to, never read back."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _copy_lines(shards: list[str], wanted: dict[int, set[int]], target: BinaryIO) -> None:
    """Write the ``wanted`` lines (by number) of each shard (by index) to ``target``."""
    for index, shard in enumerate(shards):
        lines = wanted.get(index)
        if not lines:
            continue
        with open_regular(shard) as source:
            for number, raw in enumerate(read_lines(source, shard), 1):
                if number in lines:
                    target.write(raw)


class RowWriter:
    """Appends whole lines to a file: one ``write()`` per batch, fsynced every so often.

    Each batch reaches the kernel when :meth:`write` returns (no user-space buffer), so a
    killed process loses nothing it wrote; ``fsync`` every ``sync_rows`` rows or
    ``sync_seconds`` seconds, and on :meth:`close`, bounds what a power cut can lose.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_rows: int = 1000,
        sync_seconds: float = 1.0,
    ) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A pipe or a terminal (-o FIFO, -o /dev/stdout) has nothing to make durable, and
        # fsync fails there (EINVAL): rows go straight through, unsynced.
        self._durable = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._sync_rows = sync_rows
        self._sync_seconds = sync_seconds
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self.rows = 0

    def write(self, lines: bytes, rows: int = 1) -> None:
        """Append ``rows`` rows given as whole lines, each ending with a newline."""
        view = memoryview(lines)
        while view:  # a regular file takes it all at once but for a signal or a full disk
            view = view[os.write(self._fd, view) :]
        self.rows += rows
        self._unsynced += rows
        if (
            self._unsynced >= self._sync_rows
            or time.monotonic() - self._synced_at >= self._sync_seconds
        ):
            self.sync()

    def sync(self) -> None:
        """Make every row written so far durable."""
        if self._unsynced and self._durable:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                    raise
                self._durable = False  # a file system that cannot sync this file
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """Sync and close; idempotent."""
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1


def result_row(
    result: TaskResult, row_id: object, model: str, scrub: Callable[[str], str]
) -> dict[str, Any]:
    """The output row for a task's result: ``model`` is the one asked for."""
    response = result.value if result.success else None
    error = result.error
    return {
        "id": row_id,
        "success": result.success,
        "content": getattr(response, "content", None),
        "error": None
        if error is None
        else {"type": type(error).__name__, "message": scrub(str(error))},
        "usage": _usage(response),
        "attempts": result.attempts,
        "duration_ms": round(result.duration_ms, 3),
        "model": getattr(response, "model", None) or model,
        "finish_reason": getattr(response, "finish_reason", None),
    }


def bad_row(bad: Bad) -> dict[str, Any]:
    """The output row for an input row that could not run."""
    return {
        "id": bad.id,
        "success": False,
        "content": None,
        "error": {"type": "InvalidInput", "message": bad.reason},
        "usage": None,
        "attempts": 0,
        "duration_ms": 0.0,
        "model": None,
        "finish_reason": None,
        "line": bad.line,
    }


def _usage(response: object) -> dict[str, Any] | None:
    usage = getattr(response, "usage", None)
    return dict(usage) if usage else None


_dumps = encoder(ensure_ascii=False)  # json.dumps(ensure_ascii=False), its encoder made once


def encode(rows: Iterable[dict[str, Any]]) -> bytes:
    """Rows as JSON lines, ready for one write."""
    # A lone surrogate (from a "\ud800" escape in the input) can only sit inside a JSON
    # string, where backslashreplace turns it back into that same valid escape.
    text = "\n".join(map(_dumps, rows))
    return (text + "\n").encode("utf-8", "backslashreplace") if text else b""
