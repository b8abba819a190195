"""The embedding job: ``{"id", "text"}`` rows in, one vector per id out, crash-safe.

The engine is :func:`~llmfanout._core._embed.embed_items` (packing, pacing, retries,
splits). Here: reading and checking input rows, and the outputs, each written so that a
killed run leaves only what a resumed run can trust:

- JSONL (the default): one row per id, ``{"id", "success", "embedding", "error",
  "model"}``, the vector a list of floats or (``vectors="base64"``) the base64 of its
  little-endian float32s, appended by :class:`~._output_rows.RowWriter` exactly as
  ``llmfanout run`` writes, so :func:`~._output_rows.recover` reads it back the same way.
- A directory of shards (``npy`` or ``parquet``): vectors are buffered and written
  ``shard_rows`` at a time to a new file, renamed into place once durable; only then is
  each of its ids appended to ``index.jsonl`` (``{"id", "success", "shard", "row"}``),
  which is the output's record: a shard it does not name (the run was killed between the
  rename and the index) is deleted on resume, and its rows run again. Failures go to
  the index at once, with no shard.
"""

from __future__ import annotations

import json
import marshal
import math
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AsyncExitStack
from typing import IO, Any

import attrs

from .._base._embeddings import EmbeddingResponse
from .._base._prices import CostTally, Price
from .._core._embed import embed_items
from .._core._packing import Batch
from .._core._retry import BackoffStrategy, RetryConfig
from .._core._tasks import LLMTask
from .._flow._ratelimit import RateLimit
from ..providers._embeddings_format import encode_base64
from ._idset import DEFAULT_CAP, IdSet
from ._input_rows import key_of, load_json, numbered_lines
from ._output_rows import RowWriter, _dumps, encode

EMBED_PROVIDERS = ("echo", "openai", "gemini")
FORMATS = ("jsonl", "npy", "parquet")
VECTORS = ("float", "base64")
INDEX = "index.jsonl"


def _choice(name: str, options: Sequence[str]) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value not in options:
            raise ValueError(f"EmbedSpec: {name} is {value!r}; give one of {', '.join(options)}")

    return check


def _whole(name: str, *, none: bool = False) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None and none:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"EmbedSpec: {name} is {value!r}; give a whole number >= 1")

    return check


def _rate(name: str) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"EmbedSpec: {name} is {value!r}; give a number > 0, or None")

    return check


@attrs.frozen
class EmbedSpec:
    """An embedding job: one field per ``llmfanout embed`` flag. Holds no secret."""

    provider: str = attrs.field(default="echo", validator=_choice("provider", EMBED_PROVIDERS))
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    dimensions: int | None = attrs.field(default=None, validator=_whole("dimensions", none=True))
    concurrency: int = attrs.field(default=8, validator=_whole("concurrency"))
    max_inputs: int | None = attrs.field(default=None, validator=_whole("max_inputs", none=True))
    max_tokens: int | None = attrs.field(default=None, validator=_whole("max_tokens", none=True))
    rpm: float | None = attrs.field(default=None, validator=_rate("rpm"))
    tpm: float | None = attrs.field(default=None, validator=_rate("tpm"))
    max_attempts: int = attrs.field(default=5, validator=_whole("max_attempts"))
    timeout: float | None = attrs.field(default=None, validator=_rate("timeout"))
    vectors: str = attrs.field(default="float", validator=_choice("vectors", VECTORS))
    format: str = attrs.field(default="jsonl", validator=_choice("format", FORMATS))
    shard_rows: int = attrs.field(default=10_000, validator=_whole("shard_rows"))


def embedding_provider(spec: EmbedSpec, key: str | None) -> Any:
    """The provider the spec names (``ValueError`` for a bad base URL or model)."""
    from ..providers._echo import EchoProvider

    if spec.provider == "echo":
        return EchoProvider(model=spec.model or "echo", record_calls=False)
    from ..providers import GeminiProvider, OpenAIProvider

    options: dict[str, Any] = {"max_connections": spec.concurrency, "api_key": key}
    if spec.base_url:
        options["base_url"] = spec.base_url
    if spec.timeout:
        options["timeout"] = spec.timeout
    cls = OpenAIProvider if spec.provider == "openai" else GeminiProvider
    return cls(spec.model or "", **options)


# -- input rows --------------------------------------------------------------------------


@attrs.frozen
class BadLine:
    """An input line that cannot be embedded, and why."""

    line: int
    reason: str
    id: object = None


def parse_line(raw: bytes, line: int) -> tuple[object, str] | BadLine:
    """``(id, text)`` of one input line, or why it cannot run."""
    try:
        row = load_json(raw.decode("utf-8"))  # a str parses faster than bytes
    except ValueError:  # UnicodeDecodeError too
        return BadLine(line, "not JSON (or not UTF-8)")
    if not isinstance(row, dict):
        return BadLine(line, f"a JSON {type(row).__name__}, not an object with id and text")
    row_id = row.get("id")
    if row_id is None or isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return BadLine(line, 'no "id" (a string or a whole number)')
    text = row.get("text")
    if not isinstance(text, str) or not text:
        return BadLine(line, '"text" is missing, empty or not a string', row_id)
    return row_id, text


@attrs.define
class EmbedScan:
    """What a first pass over the input found: bad lines, repeated ids, rows to embed."""

    bad: list[BadLine] = attrs.Factory(list)
    to_run: int = 0
    duplicates: dict[int, object] = attrs.Factory(dict)  # line -> the id it repeats (the first few)
    repeats: int = 0  # lines repeating an earlier id, all of them

    def repeat_notes(self, shown: int) -> list[str]:
        """Notes for the first ``shown`` repeated ids, then one counting the rest."""
        notes = [
            f"note: line {line} repeats id {row_id!r}; it is embedded once"
            for line, row_id in list(self.duplicates.items())[:shown]
        ]
        if self.repeats > len(notes):
            notes.append(
                f"note: ... and {self.repeats - len(notes)} more lines repeat an earlier id"
            )
        return notes


SPOOL_CHUNK = 4096  # rows per spooled chunk: what the second pass holds at a time
KEPT_DUPLICATES = 100  # repeats listed in EmbedScan.duplicates (the rest only counted)
_LENGTH = struct.Struct("<Q")


def scan(
    file: IO[bytes],
    done: IdSet | AbstractSet[str],
    spool: IO[bytes],
    *,
    cap: int = DEFAULT_CAP,
) -> EmbedScan:
    """Check every line before anything is sent; spool the rows to embed.

    Each line is parsed once, here: the ``(id, text)`` of every good row not in ``done``
    (a repeated id's first row only) is appended to ``spool`` (a temporary file) in
    chunks of at most :data:`SPOOL_CHUNK` rows, which :func:`read_rows` reads back with
    no JSON parse. Repeats are found with an :class:`~._idset.IdSet` (``cap`` ids in
    memory, the rest in a temporary SQLite file removed before this returns), checked a
    chunk at a time, so memory does not grow with the input.
    """
    found = EmbedScan()
    pending: list[tuple[int, object, str, str]] = []  # line, id, text, key
    with IdSet(cap=cap) as seen:
        for number, raw in numbered_lines(file):
            parsed = parse_line(raw, number)
            if isinstance(parsed, BadLine):
                found.bad.append(parsed)
                continue
            pending.append((number, parsed[0], parsed[1], key_of(parsed[0])))
            if len(pending) == SPOOL_CHUNK:
                _sort_chunk(pending, seen, done, found, spool)
                pending = []
        _sort_chunk(pending, seen, done, found, spool)
    return found


def _sort_chunk(
    pending: list[tuple[int, object, str, str]],
    seen: IdSet,
    done: IdSet | AbstractSet[str],
    found: EmbedScan,
    spool: IO[bytes],
) -> None:
    """Note a chunk's repeats (against every earlier chunk too); spool its rows to embed."""
    if not pending:
        return
    first = seen.add_new([row[3] for row in pending])
    fresh = [row for row, new in zip(pending, first, strict=True) if new]
    for row, new in zip(pending, first, strict=True):
        if not new:
            found.repeats += 1
            if len(found.duplicates) < KEPT_DUPLICATES:
                found.duplicates[row[0]] = row[1]
    keys = [row[3] for row in fresh]
    recorded = done.contains_many(keys) if isinstance(done, IdSet) else [k in done for k in keys]
    chunk = [(row[1], row[2]) for row, old in zip(fresh, recorded, strict=True) if not old]
    found.to_run += len(chunk)
    _spool(spool, chunk)


def _spool(spool: IO[bytes], chunk: list[tuple[object, str]]) -> None:
    if chunk:
        # marshal: ids are str or int and texts str (surrogates too), which it writes
        # and reads back exactly, many times faster than JSON; the file is our own.
        blob = marshal.dumps(chunk)
        spool.write(_LENGTH.pack(len(blob)))
        spool.write(blob)


def read_rows(spool: IO[bytes]) -> Iterator[tuple[object, str]]:
    """``(id, text)`` of every row :func:`scan` spooled, lazily, a chunk at a time."""
    spool.seek(0)
    while header := spool.read(_LENGTH.size):
        (length,) = _LENGTH.unpack(header)
        yield from marshal.loads(spool.read(length))


def embedding_tasks(rows: Iterable[tuple[object, str]]) -> Iterator[LLMTask]:
    """A provider batch's tasks for ``(id, text)`` rows (``llmfanout batch --endpoint
    embeddings``): the text as the one user message, tagged with the id's key."""
    for row_id, text in rows:
        yield LLMTask(({"role": "user", "content": text},), tag=key_of(row_id))


# Alike in shape only (_output_rows.bad_row): an embed output row has its own fields.
def bad_row(bad: BadLine) -> dict[str, Any]:
    """The output row recording a bad input line (never run again: it cannot succeed)."""
    return {
        "id": bad.id,
        "success": False,
        "embedding": None,
        "error": {"type": "InvalidInput", "message": bad.reason},
        "model": None,
        "line": bad.line,
    }


# -- outputs -----------------------------------------------------------------------------


def failed_rows(
    batch: Batch[Any], error: Exception | None, scrub: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The rows of a request that failed for good: each of its ids, with the error."""
    assert error is not None
    failure = {"type": type(error).__name__, "message": scrub(str(error))}
    return [
        {"id": key, "success": False, "embedding": None, "error": failure, "model": None}
        for key in batch.keys
    ]


class JsonlSink:
    """Output rows appended to one JSONL file (or a new shard of a directory of them)."""

    def __init__(self, path: str, vectors: str, scrub: Callable[[str], str]) -> None:
        self.path = path
        self._writer = RowWriter(path)
        self._base64 = vectors == "base64"
        self._scrub = scrub
        self.written = 0
        self.failed = 0

    def add(
        self,
        batch: Batch[Any],
        response: EmbeddingResponse | None,
        error: Exception | None,
    ) -> None:
        """Write the rows of one finished request."""
        if response is None:
            rows = failed_rows(batch, error, self._scrub)
            self.failed += len(rows)
            self._writer.write(encode(rows), len(rows))
        else:
            self._writer.write(success_lines(batch, response, base64=self._base64), len(batch))
        self.written += len(batch)

    def flush(self) -> None:
        """Nothing to do: every row is written as it comes."""

    def bad(self, rows: list[dict[str, Any]]) -> None:
        """Write rows for bad input lines."""
        self._writer.write(encode(rows), len(rows))
        self.written += len(rows)
        self.failed += len(rows)

    def close(self) -> None:
        self._writer.close()


_text = json.encoder.encode_basestring  # a str as JSON, non-ASCII kept (as encode() does)


def success_lines(batch: Batch[Any], response: EmbeddingResponse, *, base64: bool = False) -> bytes:
    """The output lines of a request's vectors: what :func:`encode` writes for rows
    ``{"id", "success": true, "embedding", "error": null, "model"}``, byte for byte.

    Rendered from parts rather than through a dict per row and the JSON encoder: the
    model's text once per request, a float list as its ``repr`` (the same text as JSON
    for finite floats; a NaN or an infinity goes through the encoder, as before).
    """
    tail = f', "error": null, "model": {_text(response.model)}}}'
    lines = []
    for key, vector in zip(batch.keys, response.vectors, strict=True):
        kind = type(key)
        ident = _text(key) if kind is str else int.__repr__(key) if kind is int else _dumps(key)
        if base64:
            shown = '"' + encode_base64(vector) + '"'
        else:
            shown = repr(vector if type(vector) is list else _floats(vector))
            if "n" in shown:  # nan, inf: not JSON numbers
                shown = _dumps(_floats(vector))
        lines.append('{"id": ' + ident + ', "success": true, "embedding": ' + shown + tail)
    lines.append("")
    return "\n".join(lines).encode("utf-8", "backslashreplace")


def _floats(vector: Sequence[float]) -> list[float]:
    if isinstance(vector, list):
        return vector
    tolist = getattr(vector, "tolist", None)  # an array('f'): each float32 exactly, fast
    return list(vector) if tolist is None else tolist()


class ShardSink:
    """Vectors in ``.npy`` or Parquet shards of a directory, recorded in ``index.jsonl``."""

    def __init__(
        self, directory: str, fmt: str, shard_rows: int, scrub: Callable[[str], str]
    ) -> None:
        self.directory = directory
        self._write_shard = _npy_writer() if fmt == "npy" else _parquet_writer()
        self._suffix = ".npy" if fmt == "npy" else ".parquet"
        self._shard_rows = shard_rows
        self._scrub = scrub
        self._index = RowWriter(os.path.join(directory, INDEX))
        self._ids: list[object] = []
        self._vectors: list[Sequence[float]] = []
        self._model = ""
        self.written = 0
        self.failed = 0

    # Alike in shape only (JsonlSink.add): the sink protocol's signature.
    def add(
        self,
        batch: Batch[Any],
        response: EmbeddingResponse | None,
        error: Exception | None,
    ) -> None:
        if response is None:
            self.bad(failed_rows(batch, error, self._scrub))
            return
        self._model = response.model
        self._ids.extend(batch.keys)
        self._vectors.extend(response.vectors)
        if len(self._ids) >= self._shard_rows:
            self.flush()

    def bad(self, rows: list[dict[str, Any]]) -> None:
        self._index.write(encode(rows), len(rows))
        self.written += len(rows)
        self.failed += len(rows)

    def flush(self) -> None:
        """Write the buffered vectors as a shard, durable, then record its ids."""
        if not self._ids:
            return
        name = f"part-{uuid.uuid4().hex[:12]}{self._suffix}"
        final = os.path.join(self.directory, name)
        temporary = os.path.join(self.directory, f".{name}.tmp")
        self._write_shard(temporary, self._ids, self._vectors)
        os.replace(temporary, final)
        rows = [
            {"id": row_id, "success": True, "shard": name, "row": n, "model": self._model}
            for n, row_id in enumerate(self._ids)
        ]
        self._index.write(encode(rows), len(rows))
        self._index.sync()
        self.written += len(rows)
        self._ids, self._vectors = [], []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._index.close()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ShardWriter = Callable[[str, list[object], list[Sequence[float]]], None]


def _npy_writer() -> ShardWriter:
    try:
        import numpy as np
    except ImportError:
        raise ImportError("--format npy needs numpy: pip install 'llmfanout[embed]'") from None

    def write(path: str, ids: list[object], vectors: list[Sequence[float]]) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        with open(path, "wb") as file:
            np.save(file, matrix)
        _fsync(path)

    return write


def _parquet_writer() -> ShardWriter:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "--format parquet needs pyarrow: pip install 'llmfanout[parquet]'"
        ) from None

    def write(path: str, ids: list[object], vectors: list[Sequence[float]]) -> None:
        table = pa.table(
            {
                "id": pa.array([json.dumps(i) if not isinstance(i, str) else i for i in ids]),
                "embedding": pa.array([list(v) for v in vectors], type=pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, path)
        _fsync(path)

    return write


def clean_orphans(directory: str, recorded_shards: set[str]) -> int:
    """Delete shard files the index does not name (written, never recorded); how many."""
    removed = 0
    for name in os.listdir(directory):
        orphan = name.startswith("part-") and name not in recorded_shards
        if orphan or (name.startswith(".part-") and name.endswith(".tmp")):
            os.unlink(os.path.join(directory, name))
            removed += 1
    return removed


def recorded_shards(index: str) -> set[str]:
    """The shard files ``index.jsonl`` names (complete lines only)."""
    names: set[str] = set()
    if not os.path.exists(index):
        return names
    with open(index, "rb") as file:
        for raw in file:
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            row = load_json(raw)
            if isinstance(row, dict) and isinstance(row.get("shard"), str):
                names.add(row["shard"])
    return names


# -- the run -----------------------------------------------------------------------------


@attrs.frozen
class EmbedSummary:
    """What a run did: rows written (failed among them), requests sent and split, cost."""

    written: int
    failed: int
    requests: int
    split: int
    cost_usd: float | None = None  # with prices: what the requests cost
    unpriced: dict[str, int] = attrs.Factory(dict)  # model -> requests left out of it


Sink = JsonlSink | ShardSink


async def run_embed(
    spec: EmbedSpec,
    provider: Any,
    rows: Iterator[tuple[object, str]],
    sink: Sink,
    *,
    on_progress: Callable[[int], Any] | None = None,
    prices: Mapping[str, Price] | None = None,
) -> EmbedSummary:
    """Embed ``rows`` into ``sink``; the provider is entered and closed here.

    With ``prices``, each successful request's usage is priced by its model.
    """
    cost = None if prices is None else CostTally(prices)
    retry = RetryConfig(max_attempts=spec.max_attempts, backoff_strategy=BackoffStrategy.JITTER)
    limiter = None
    if spec.rpm is not None or spec.tpm is not None or spec.provider != "echo":
        limiter = RateLimit(spec.rpm, spec.tpm)  # a 429's Retry-After pauses every request

    def deliver(
        batch: Batch[Any], response: EmbeddingResponse | None, error: Exception | None
    ) -> None:
        sink.add(batch, response, error)
        if cost is not None and response is not None:
            cost.add(response.model, response.usage)
        if on_progress is not None:
            on_progress(len(batch))

    async with AsyncExitStack() as stack:
        if hasattr(provider, "__aenter__"):
            await stack.enter_async_context(provider)
        sent, split = await embed_items(
            provider,
            rows,
            deliver,
            model=spec.model,
            dimensions=spec.dimensions,
            max_concurrency=spec.concurrency,
            max_inputs=spec.max_inputs,
            max_tokens=spec.max_tokens,
            limiter=limiter,
            retry=retry,
            timeout=spec.timeout,
        )
    sink.flush()
    if cost is None:
        return EmbedSummary(sink.written, sink.failed, sent, split)
    return EmbedSummary(sink.written, sink.failed, sent, split, cost.total, dict(cost.unpriced))


def rate(rows: int, seconds: float) -> str:
    """Rows per second, for the summary line."""
    return f"{rows / seconds:,.0f}" if seconds > 0 and math.isfinite(seconds) else "-"
