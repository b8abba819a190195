"""JSONL files for the CLI: input rows read in two streaming passes, output rows written crash-safe.

Input: the first pass (:func:`scan`) validates every line and keeps only the set of ids
(for duplicates); the second (:func:`read_rows`) parses the lines again as tasks are
needed, so a file of any size runs in memory proportional to its id count.

Output: :class:`RowWriter` appends each row with one ``write()`` of the whole line, so
after a crash the file holds complete lines and at most one torn last line, which
:func:`recover` finds and :meth:`Recovered.truncate` cuts off.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import attrs

from ._tasks import LLMTask, TaskResult
from ._types import ROLES, LLMMessage

# -- input rows -------------------------------------------------------------------------

BATCH_URL = "/v1/chat/completions"
_ROLES = ", ".join(sorted(ROLES))


class BadRow(ValueError):
    """An input line that cannot run; ``key`` is its id when it has a usable one."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


@attrs.frozen
class Bad:
    """An input line that cannot run, met in the second pass: it becomes a failed row."""

    line: int
    key: str | None  # None when the line has no usable id or repeats an earlier one
    reason: str


def key_of(value: object) -> str:
    """The identity of a row id: its JSON text, so ``7`` and ``"7"`` stay distinct."""
    return json.dumps(value)


def _id_key(value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f'"{field}" is {json.dumps(value)}; give a string or an integer')
    if value == "":
        raise BadRow(f'"{field}" is empty; give a non-empty string or an integer')
    return key_of(value)


def _content(value: object, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: only text can be sent
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRow(
                    f"{where}.content has a {kind!r} part; only text parts are supported", key
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRow(f'{where}.content has a text part with no "text" string', key)
            texts.append(text)
        return "".join(texts)
    raise BadRow(f"{where}.content must be a string, not {type(value).__name__}", key)


def _messages(value: object, key: str, field: str = "messages") -> tuple[LLMMessage, ...]:
    if not isinstance(value, list) or not value:
        raise BadRow(f'"{field}" must be a non-empty list of {{"role", "content"}} objects', key)
    messages = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise BadRow(f'{where} is not an object; give {{"role": ..., "content": ...}}', key)
        role = item.get("role")
        if role not in ROLES:
            raise BadRow(f"{where}.role is {json.dumps(role)}; use one of {_ROLES}", key)
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRow(f"{where}.name must be a string", key)
        messages.append(LLMMessage(role, _content(item.get("content"), where, key), name))
    return tuple(messages)


def _params(value: object, key: str, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRow(f'"{field}" must be an object of call parameters', key)
    return value or None


def parse_row(raw: bytes) -> tuple[str, tuple[LLMMessage, ...], dict[str, Any] | None]:
    """One input line as ``(key, messages, params)``; raises :class:`BadRow` saying why not.

    Accepts ``{"id", "prompt"}``, ``{"id", "messages"}`` (both with optional ``params``)
    and OpenAI Batch API requests (``custom_id``, ``method``, ``url``, ``body``).
    """
    try:
        row = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise BadRow(f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise BadRow(f"a JSON {type(row).__name__}, not an object")
    if "custom_id" in row:
        return _parse_batch(row)
    if "id" not in row:
        raise BadRow('no "id"; give each row a unique "id" (or "custom_id" in the batch format)')
    key = _id_key(row["id"], "id")
    params = _params(row.get("params"), key, "params")
    if "messages" in row:
        if "prompt" in row:
            raise BadRow('both "prompt" and "messages"; give one of them', key)
        return key, _messages(row["messages"], key), params
    prompt = row.get("prompt")
    if prompt is None:
        raise BadRow('no "prompt" or "messages"; give one of them', key)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRow('"prompt" must be a non-empty string', key)
    return key, (LLMMessage("user", prompt),), params


def _parse_batch(row: dict[str, Any]) -> tuple[str, tuple[LLMMessage, ...], dict[str, Any] | None]:
    key = _id_key(row["custom_id"], "custom_id")
    method, url = row.get("method", "POST"), row.get("url", BATCH_URL)
    if method != "POST" or url != BATCH_URL:
        raise BadRow(
            f"batch request {method} {url} is not supported; only POST {BATCH_URL} is", key
        )
    body = row.get("body")
    if not isinstance(body, dict):
        raise BadRow('"body" must be an object holding "model" and "messages"', key)
    messages = _messages(body.get("messages"), key, "body.messages")
    params = {name: value for name, value in body.items() if name not in ("messages", "stream")}
    return key, messages, params or None


def _lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, text)`` for each non-blank line, read lazily from the start."""
    file.seek(0)
    for number, raw in enumerate(file, 1):
        if raw.strip():
            yield number, raw


@attrs.define
class Scan:
    """What the first pass found: rows to run, lines that cannot, and model needs."""

    rows: int = 0  # valid rows, recorded ones included
    recorded: int = 0  # valid rows the output already holds (resume)
    bad: dict[int, Bad] = attrs.Factory(dict)
    bad_recorded: int = 0  # bad lines the output already holds (resume)
    first_model: str | None = None  # the first row's "model" parameter
    line_without_model: int | None = None  # the first line that names no model

    @property
    def to_run(self) -> int:
        """Rows this run will send."""
        return self.rows - self.recorded

    @property
    def to_write(self) -> int:
        """Rows this run will write: those it sends and the bad lines not yet recorded."""
        return self.to_run + len(self.bad) - self.bad_recorded


def scan(file: IO[bytes], recorded: Recovered | None = None) -> Scan:
    """Validate every line, without keeping rows: the first of the two passes."""
    result = Scan()
    seen: set[str] = set()
    duplicates: dict[str, list[int]] = {}
    for number, raw in _lines(file):
        try:
            key, _, params = parse_row(raw)
        except BadRow as exc:
            if exc.key is not None:
                if exc.key in seen:
                    duplicates.setdefault(exc.key, []).append(number)
                    continue
                seen.add(exc.key)
            result.bad[number] = Bad(number, exc.key, exc.reason)
            continue
        if key in seen:
            duplicates.setdefault(key, []).append(number)
            continue
        seen.add(key)
        result.rows += 1
        if recorded is not None and key in recorded.keys:
            result.recorded += 1
        model = (params or {}).get("model")
        if isinstance(model, str) and model:
            result.first_model = result.first_model or model
        elif result.line_without_model is None:
            result.line_without_model = number
    if duplicates:
        first = _first_lines(file, duplicates.keys())
        for key, numbers in duplicates.items():
            reason = f"duplicate id {key} (first used on line {first[key]}); ids must be unique"
            for number in numbers:
                result.bad[number] = Bad(number, None, reason)
        result.bad = dict(sorted(result.bad.items()))
    if recorded is not None:
        result.bad_recorded = sum(recorded.has_bad(bad) for bad in result.bad.values())
    return result


def _first_lines(file: IO[bytes], keys: Any) -> dict[str, int]:
    wanted, found = set(keys), {}
    for number, raw in _lines(file):
        try:
            key = parse_row(raw)[0]
        except BadRow as exc:
            if exc.key is None:
                continue
            key = exc.key
        if key in wanted and key not in found:
            found[key] = number
    return found


def read_rows(
    file: IO[bytes], bad: Mapping[int, Bad], recorded: Recovered | None
) -> Iterator[LLMTask | Bad]:
    """The second pass: a task per valid row, a :class:`Bad` per bad line, skipping recorded ones.

    Tasks are tagged with their row's key.
    """
    for number, raw in _lines(file):
        failed = bad.get(number)
        if failed is not None:
            if recorded is None or not recorded.has_bad(failed):
                yield failed
            continue
        try:
            key, messages, params = parse_row(raw)
        except BadRow as exc:  # the file was changed after the first pass checked it
            yield Bad(number, None, f"{exc.reason} (the input changed during the run)")
            continue
        if recorded is None or key not in recorded.keys:
            yield LLMTask(messages, params, tag=key)


# -- output rows ------------------------------------------------------------------------


class OutputCorrupt(ValueError):
    """A complete line of the output file is not a row this tool wrote."""


@attrs.define
class Recovered:
    """What an existing output file already holds, for ``--resume``."""

    keys: set[str] = attrs.Factory(set)  # ids of recorded rows
    lines: set[int] = attrs.Factory(set)  # input lines of recorded rows with no usable id
    rows: int = 0
    failed: int = 0
    size: int = 0  # bytes of complete lines
    torn: int = 0  # bytes of a torn last line (0 when the file ends cleanly)
    rerunnable: set[str] = attrs.Factory(set)  # ids of failed rows that may run again

    def has_bad(self, bad: Bad) -> bool:
        """Whether the output already records this bad input line."""
        return bad.key in self.keys if bad.key is not None else bad.line in self.lines

    def forget_failed(self) -> None:
        """Count the rerunnable failed rows as not recorded (``--retry-failed``).

        The file still holds them until :func:`drop_failed` rewrites it.
        """
        dropped = len(self.rerunnable)
        self.keys -= self.rerunnable
        self.rows -= dropped
        self.failed -= dropped
        self.rerunnable = set()


def recover(path: str | os.PathLike[str]) -> Recovered:
    """Read an output file's rows (reading only): recorded ids, failures, a torn tail.

    Raises :class:`OutputCorrupt` naming the line when a complete line is not a row.
    """
    found = Recovered()
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                found.torn = len(raw)
                break
            found.size += len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                value, success = row["id"], row["success"]
            except (ValueError, TypeError, KeyError):
                raise OutputCorrupt(
                    f"{os.fspath(path)}:{number}: not a row written by llmfanout; "
                    "fix or delete that line, or write to a new output file"
                ) from None
            found.rows += 1
            if value is None:
                found.lines.add(row.get("line"))
            else:
                found.keys.add(key_of(value))
            if not success:
                found.failed += 1
                if _rerunnable(row):
                    found.rerunnable.add(key_of(value))
    return found


def _rerunnable(row: dict[str, Any]) -> bool:
    # Rows for bad input lines carry "line"; sending them again cannot succeed.
    return not row["success"] and row["id"] is not None and "line" not in row


def cut_torn_line(path: str | os.PathLike[str], recovered: Recovered) -> None:
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
    with open(path, "rb") as source, open(temporary, "wb") as target:
        for raw in source:
            if not raw.endswith(b"\n"):
                break
            if raw.strip() and _rerunnable(json.loads(raw)):
                continue
            target.write(raw)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)


class RowWriter:
    """Appends whole lines to a file: one ``write()`` per row, fsynced every so often.

    Each row reaches the kernel when :meth:`write` returns (no user-space buffer), so a
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
        self._sync_rows = sync_rows
        self._sync_seconds = sync_seconds
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self.rows = 0

    def write(self, line: bytes) -> None:
        """Append one row; ``line`` ends with a newline."""
        view = memoryview(line)
        while view:  # a regular file takes it all at once but for a signal or a full disk
            view = view[os.write(self._fd, view) :]
        self.rows += 1
        self._unsynced += 1
        if (
            self._unsynced >= self._sync_rows
            or time.monotonic() - self._synced_at >= self._sync_seconds
        ):
            self.sync()

    def sync(self) -> None:
        """Make every row written so far durable."""
        if self._unsynced:
            os.fsync(self._fd)
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


def result_row(result: TaskResult, model: str, scrub: Callable[[str], str]) -> bytes:
    """The output line for a task's result: ``model`` is the one asked for."""
    response = result.value if result.success else None
    error = result.error
    row = {
        "id": json.loads(result.tag),
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
    return _encode(row)


def bad_row(bad: Bad) -> bytes:
    """The output line for an input line that could not run (``--skip-invalid``)."""
    row = {
        "id": None if bad.key is None else json.loads(bad.key),
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
    return _encode(row)


def _usage(response: object) -> dict[str, Any] | None:
    usage = getattr(response, "usage", None)
    return dict(usage) if usage else None


def _encode(row: dict[str, Any]) -> bytes:
    # A lone surrogate (from a "\ud800" escape in the input) can only sit inside a JSON
    # string, where backslashreplace turns it back into that same valid escape.
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
