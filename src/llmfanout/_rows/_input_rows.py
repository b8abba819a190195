"""Input rows: what a batch job reads, checked and turned into what to send.

A row is a mapping in one of three shapes: ``{"id", "prompt"}``, ``{"id", "messages"}``
(both with optional ``params``), or an OpenAI Batch API request (``custom_id``,
``method``, ``url``, ``body``). :func:`row_parts` checks one and returns a
:class:`ParsedRow`; a row that cannot run raises :class:`BadRow` saying why.

Files are read in two streaming passes: the first (:func:`scan`) validates every line and
keeps only the set of ids (for duplicates); the second (:func:`read_rows`) parses the
lines again as they are needed, so a file of any size runs in memory proportional to its
id count. :func:`parse_rows` does the same for rows given as mappings, in one pass.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import IO, Any, NamedTuple, Protocol

import attrs

from .._base._messages import LLMMessage, to_message

BATCH_URL = "/v1/chat/completions"


class BadRow(ValueError):
    """An input row that cannot run; ``key`` is its id when it has a usable one."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


@attrs.frozen
class Bad:
    """An input row that cannot run, met on the way to sending: it becomes a failed row.

    ``line`` is its line number in a file, or its position (from 1) among rows given as
    mappings.
    """

    line: int
    key: str | None  # None when the row has no usable id or repeats an earlier one
    reason: str

    @property
    def id(self) -> object:
        """The row's id as given, or None."""
        return None if self.key is None else json.loads(self.key)


class ParsedRow(NamedTuple):
    """A row that can run: its id (as given and as a key), messages and parameters."""

    key: str
    id: str | int
    messages: tuple[LLMMessage, ...]
    params: dict[str, Any] | None


class Recorded(Protocol):
    """What an output already holds: the ids of its rows, and the lines of id-less ones."""

    keys: set[str]
    lines: set[int]


_quoted: Callable[[str], str] = json.encoder.encode_basestring_ascii
# The byte order marks json.loads recognises on bytes (UTF-8, UTF-16 and UTF-32 ones).
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def key_of(value: object) -> str:
    """The identity of a row id: its JSON text, so ``7`` and ``"7"`` stay distinct."""
    kind = type(value)
    if kind is str:  # what json.dumps does for a str, without its Python layers
        return _quoted(value)  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value)


def is_recorded(recorded: Recorded, bad: Bad) -> bool:
    """Whether ``recorded`` already holds the failed row for ``bad``."""
    return bad.key in recorded.keys if bad.key is not None else bad.line in recorded.lines


def _id_key(value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f'"{field}" is {_shown(value)}; give a string or an integer')
    if value == "":
        raise BadRow(f'"{field}" is empty; give a non-empty string or an integer')
    return key_of(value)


def _shown(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 60 else _shown(value)


def _messages(value: object, key: str, field: str = "messages") -> tuple[LLMMessage, ...]:
    if not isinstance(value, list) or not value:
        raise BadRow(f'"{field}" must be a non-empty list of {{"role", "content"}} objects', key)
    try:
        return tuple(to_message(item, f"{field}[{i}]") for i, item in enumerate(value))
    except (TypeError, ValueError) as exc:  # the library's own reading of a message
        raise BadRow(str(exc), key) from None


def _params(value: object, key: str, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not dict and not isinstance(value, Mapping):
        raise BadRow(f'"{field}" must be an object of call parameters', key)
    model = value.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise BadRow(f'"{field}.model" is {_shown(model)}; give a model name', key)
    return dict(value) or None


def row_parts(row: object, *, check_only: bool = False) -> ParsedRow:
    """Check one input row (a mapping); raises :class:`BadRow` saying why it cannot run.

    ``check_only``: a prompt row's message is not made (the first pass only checks).
    """
    if type(row) is not dict and not isinstance(row, Mapping):
        raise BadRow(f"a JSON {_json_kind(row)}, not an object")
    if "custom_id" in row:
        return _batch_parts(row)
    if "id" not in row:
        raise BadRow('no "id"; give each row a unique "id" (or "custom_id" in the batch format)')
    value = row["id"]
    key = _id_key(value, "id")
    params = _params(row.get("params"), key, "params")
    if "messages" in row:
        if "prompt" in row:
            raise BadRow('both "prompt" and "messages"; give one of them', key)
        return ParsedRow(key, value, _messages(row["messages"], key), params)
    prompt = row.get("prompt")
    if prompt is None:
        raise BadRow('no "prompt" or "messages"; give one of them', key)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRow('"prompt" must be a non-empty string', key)
    return ParsedRow(key, value, () if check_only else (LLMMessage("user", prompt),), params)


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _batch_parts(row: Mapping[str, Any]) -> ParsedRow:
    value = row["custom_id"]
    key = _id_key(value, "custom_id")
    method, url = row.get("method", "POST"), row.get("url", BATCH_URL)
    if method != "POST" or url != BATCH_URL:
        raise BadRow(
            f"batch request {_plain(method)} {_plain(url)} is not supported; only POST "
            f"{BATCH_URL} is",
            key,
        )
    body = row.get("body")
    if not isinstance(body, Mapping):
        raise BadRow('"body" must be an object holding "model" and "messages"', key)
    messages = _messages(body.get("messages"), key, "body.messages")
    params = {name: value for name, value in body.items() if name not in ("messages", "stream")}
    return ParsedRow(key, value, messages, _params(params, key, "body"))


def load_json(raw: bytes | str) -> Any:
    """``json.loads``, raising ``ValueError`` (never ``RecursionError``) for any bad text."""
    try:
        if type(raw) is bytes and not raw.startswith(_BOMS):
            # UTF-8 (as JSON Lines is): decoded here, json.loads skips its guess of the
            # encoding, a few Python calls per line. A BOM still goes to that guess.
            raw = raw.decode("utf-8", "surrogatepass")  # as json.loads decodes bytes
        return json.loads(raw)
    except RecursionError:
        # Thousands of nested brackets: json's recursive parser gives up. No row we could
        # send looks like that, so it is bad input like any other.
        raise ValueError("nested too deeply (thousands of brackets)") from None


def parse_row(raw: bytes, *, check_only: bool = False) -> ParsedRow:
    """One input line, parsed and checked; raises :class:`BadRow` saying why it cannot run."""
    try:
        row = load_json(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and nesting alike
        raise BadRow(f"not valid JSON ({exc})") from None
    return row_parts(row, check_only=check_only)


def numbered_lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
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


def scan(file: IO[bytes], recorded: Recorded | None = None) -> Scan:
    """Validate every line, without keeping rows: the first of the two passes."""
    result = Scan()
    seen: set[str] = set()
    duplicates: dict[str, list[int]] = {}
    for number, raw in numbered_lines(file):
        try:
            key, _, _, params = parse_row(raw, check_only=True)
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
        result.bad_recorded = sum(is_recorded(recorded, bad) for bad in result.bad.values())
    return result


def _first_lines(file: IO[bytes], keys: Iterable[str]) -> dict[str, int]:
    wanted, found = set(keys), {}
    for number, raw in numbered_lines(file):
        try:
            key = parse_row(raw, check_only=True).key
        except BadRow as exc:
            if exc.key is None:
                continue
            key = exc.key
        if key in wanted and key not in found:
            found[key] = number
    return found


def read_rows(
    file: IO[bytes], bad: Mapping[int, Bad], recorded: Recorded | None
) -> Iterator[ParsedRow | Bad]:
    """The second pass: each valid row, a :class:`Bad` per bad line, skipping recorded ones."""
    for number, raw in numbered_lines(file):
        failed = bad.get(number)
        if failed is not None:
            if recorded is None or not is_recorded(recorded, failed):
                yield failed
            continue
        try:
            row = parse_row(raw)
        except BadRow as exc:  # the file was changed after the first pass checked it
            yield Bad(number, None, f"{exc.reason} (the input changed during the run)")
            continue
        if recorded is None or row.key not in recorded.keys:
            yield row


def parse_rows(rows: Iterable[object]) -> Iterator[ParsedRow | Bad]:
    """Rows given as mappings, each checked as it is taken: one pass, nothing kept."""
    for position, row in enumerate(rows, 1):
        yield _parsed(position, row)


async def aparse_rows(rows: AsyncIterable[object]) -> AsyncIterator[ParsedRow | Bad]:
    """:func:`parse_rows` for an async iterable."""
    position = 0
    async for row in rows:
        position += 1
        yield _parsed(position, row)


def _parsed(position: int, row: object) -> ParsedRow | Bad:
    try:
        return row_parts(row)
    except BadRow as exc:
        return Bad(position, exc.key, exc.reason)
