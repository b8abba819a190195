"""Gemini's batch mode on the wire: ``models/{model}:batchGenerateContent``.

A part's file is always JSONL, one ``{"key", "request"}`` line per request (the input
file format). It is sent one of two ways:

- **inlined** (a part that fits Gemini's 20 MB request cap): ``POST
  /models/{model}:batchGenerateContent`` with ``{"batch": {"displayName", "inputConfig":
  {"requests": {"requests": [{"metadata": {"key"}, "request"}]}}}}``, each line rewritten
  in place (its ``"key"`` moved into ``"metadata"``; a fixed 13 bytes more per line);
- **as an uploaded file** (bigger parts, or ``input="file"``): the Files API's resumable
  upload (``POST {root}/upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable``
  and ``X-Goog-Upload-Command: start``; the answer's ``X-Goog-Upload-URL`` header, checked
  to be on base_url's origin, takes the bytes in chunks, ``upload`` then ``upload,
  finalize``; the answer's ``file.name`` is ``files/...``), then the create call with
  ``"inputConfig": {"fileName": "files/..."}``. The file's name is saved in the state
  file before the create call, so a create lost to a crash is found by it too.

The answer is a long-running operation named ``batches/{id}``; the display name carries
the run id and part number (Gemini keeps no other metadata), so that a batch created
before a crash is found again in ``GET /batches``.

- ``GET /batches/{id}`` (the operation: ``metadata`` is the batch, with ``state`` and
  ``batchStats``; ``done``; the ``response`` holds ``inlinedResponses``, or for a file
  input ``responsesFile``), ``GET /batches?pageSize=&pageToken=`` (``operations``,
  newest first), ``POST /batches/{id}:cancel``. A ``responsesFile`` is read from
  ``{root}/download/v1beta/{file}:download?alt=media``, lines ``{"key", "response" |
  "error"}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import anyio

from .._base._types import LLMMessage
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from ..providers._http import HTTPProvider
from ._api import (
    BatchAPI,
    Outcome,
    RemoteBatch,
    _count,
    _encode,
    _request_error,
    _seconds,
    _shape,
)
from ._state import is_server_id

_HEAD = b'{"batch":{'
_ENDED = {
    "BATCH_STATE_SUCCEEDED",
    "BATCH_STATE_FAILED",
    "BATCH_STATE_CANCELLED",
    "BATCH_STATE_EXPIRED",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
}
_TAG = re.compile(r"(llmfanout_[a-z]+)=([^;]*)")

# google.rpc.Code numbers, for a request's error in the results
_CODES: dict[int, type[ProviderError]] = {
    3: BadRequestError,  # INVALID_ARGUMENT
    5: BadRequestError,  # NOT_FOUND
    9: BadRequestError,  # FAILED_PRECONDITION
    7: AuthenticationError,  # PERMISSION_DENIED
    16: AuthenticationError,  # UNAUTHENTICATED
    8: RateLimitError,  # RESOURCE_EXHAUSTED
    13: ServerError,  # INTERNAL
    14: ServerError,  # UNAVAILABLE
    4: ServerError,  # DEADLINE_EXCEEDED
}


def display_name(metadata: Mapping[str, str]) -> str:
    """Our metadata, kept in the batch's display name (Gemini keeps no other)."""
    return "llmfanout " + ";".join(f"{k}={v}" for k, v in sorted(metadata.items()))


INPUTS = ("auto", "file", "inline")
"""How a part's requests are sent: ``auto`` inlines a part that fits, uploads the rest."""

INLINE_BYTES = 20 * 1024 * 1024
"""Gemini's cap on one request, so on a batch with its requests inlined."""

FILE_BYTES = 2 * 1024 * 1024 * 1024
"""The Files API's cap on one file, so on a batch read from an uploaded file."""

UPLOAD_CHUNK = 8 * 1024 * 1024
"""Bytes sent per upload command: a multiple of the protocol's 256 KiB granularity."""

INLINE_GROWTH = 14
"""Bytes a request line grows by when inlined: ``{"metadata":{"key":K},`` for ``{"key":K,``
(13) and the comma between requests (1)."""

_SLACK = 1024  # the create body's own bytes: display name, inputConfig, brackets


# Alike in shape only (OpenAIBatchAPI): each API's own values for the BatchAPI attributes.
class GeminiBatchAPI(BatchAPI):
    """Gemini's Batch Mode: requests inlined in the create call, or an uploaded JSONL file.

    ``input`` is one of :data:`INPUTS`: ``"auto"`` (the default) inlines a part that fits
    the 20 MB request cap and uploads one that does not; ``"file"`` always uploads;
    ``"inline"`` plans parts small enough to inline, never uploading.
    """

    name = "gemini"
    max_requests = 100_000
    max_bytes = FILE_BYTES
    custom_id_rule = "a string"
    list_path = "/batches"
    cursor = "pageToken"

    def __init__(self, provider: HTTPProvider, input: str = "auto") -> None:
        super().__init__(provider)
        if input not in INPUTS:
            raise ValueError(f"gemini batch input is {input!r}; give one of {', '.join(INPUTS)}")
        self.input = input
        self.line_overhead = INLINE_GROWTH if input == "inline" else 0
        self.inline_bytes = INLINE_BYTES  # the cap an inlined create body must keep under

    def part_bytes(self) -> int:
        return self.inline_bytes - _SLACK if self.input == "inline" else FILE_BYTES

    def body(
        self, messages: Sequence[LLMMessage], overrides: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        model = (overrides or {}).get("model")
        if model is not None and model != self.provider.model:
            raise BadRequestError(
                f"gemini: a batch runs one model, {self.provider.model!r} (--model), but this "
                f"row asks for {model!r}; drop the row's model or submit it separately",
                provider="gemini",
            )
        return super().body(messages, overrides)

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        return _encode({"key": custom_id, "request": body})

    def inlined(self, size: int, rows: int) -> bool:
        """Whether a part of ``rows`` lines and ``size`` bytes is sent inlined.

        Raises ``BadRequestError`` for a part that must be inlined but cannot be (a
        ``max_bytes`` above the cap with ``input="inline"``), before anything is sent.
        """
        fits = size + INLINE_GROWTH * rows + _SLACK <= self.inline_bytes
        if self.input == "inline" and not fits:
            raise BadRequestError(
                f"gemini: a batch of {size} bytes ({rows} requests) is over the "
                f"{self.inline_bytes}-byte cap on inlined requests; lower --max-bytes "
                "(max_bytes), or let it be uploaded (--gemini-input auto or file)",
                provider="gemini",
            )
        return self.input == "inline" or (self.input == "auto" and fits)

    def _path(self) -> str:
        model = self.provider.model
        name = model if "/" in model else f"models/{model}"
        return f"/{name}:batchGenerateContent"

    def _root(self, what: str) -> str:
        """``{origin}{root}/{what}/v1beta``: where uploads and downloads live, beside the API."""
        head, _, version = self.provider._prefix.rpartition("/")
        return f"{self.provider._origin.url}{head}/{what}/{version}"

    async def upload(self, path: str, name: str, size: int, rows: int) -> str | None:
        if self.inlined(size, rows):
            return None
        start = await self.http.send(
            "POST",
            self._root("upload") + "/files",
            json={"file": {"displayName": name}},
            headers={
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(size),
                "x-goog-upload-header-content-type": "application/jsonl",
            },
        )
        given = start.headers.get("x-goog-upload-url", "")
        url = self.http.resolve(given)
        if url is None:
            raise ProviderError(
                "gemini: the upload session's URL (X-Goog-Upload-URL) is "
                f"{'missing' if not given else 'not on base_url' + chr(39) + 's host'}; the API "
                "key is only sent to base_url's host, so nothing was uploaded",
                provider="gemini",
            )
        answer: Any = None
        offset = 0
        async with await anyio.open_file(path, "rb") as file:
            while True:
                chunk = await file.read(UPLOAD_CHUNK)
                last = offset + len(chunk) >= size or len(chunk) < UPLOAD_CHUNK
                sent = await self.http.send(
                    "POST",
                    url,
                    content=chunk,
                    content_type="application/octet-stream",
                    headers={
                        "x-goog-upload-command": "upload, finalize" if last else "upload",
                        "x-goog-upload-offset": str(offset),
                    },
                )
                offset += len(chunk)
                if last:
                    answer = self.provider._json(sent)
                    break
        file_info = answer.get("file") if isinstance(answer, dict) else None
        file_name = file_info.get("name") if isinstance(file_info, dict) else None
        if not _is_file(file_name):
            raise _shape(self.name, "an uploaded file named files/...", answer)
        return str(file_name)

    async def create(
        self, path: str, size: int, file_id: str | None, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        if file_id is not None:
            batch = {"displayName": display_name(metadata), "inputConfig": {"fileName": file_id}}
            content = json.dumps({"batch": batch}).encode()
        else:
            content = inline_body(display_name(metadata), await anyio.Path(path).read_bytes())
        answer = await self.http.call(
            "POST", self._path(), content=content, content_type="application/json"
        )
        return self._batch(answer)

    async def get(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self.http.call("GET", f"/{batch_id}"))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        await self.http.call("POST", f"/{batch_id}:cancel")
        return await self.get(batch_id)

    async def recent(self) -> AsyncGenerator[RemoteBatch, None]:
        token: str | None = None
        while True:
            query = "?pageSize=100" + (f"&pageToken={token}" if token else "")
            page = await self.http.call("GET", self.list_path + query)
            operations = page.get("operations", []) if isinstance(page, dict) else None
            if not isinstance(operations, list):
                raise _shape(self.name, "a list of batches", page)
            for item in operations:
                yield self._batch(item)
            token = page.get("nextPageToken")
            if not operations or not isinstance(token, str) or not token:
                return

    async def outcomes(self, batch: RemoteBatch) -> AsyncGenerator[Outcome, None]:
        where = f"gemini {batch.id}"
        answer = await self.http.call("GET", f"/{batch.id}")
        output = _output(answer)
        inlined = output.get("inlinedResponses")
        if isinstance(inlined, dict):
            for item in inlined.get("inlinedResponses") or ():
                outcome = self._outcome(item, where)
                if outcome is not None:
                    yield outcome
            return
        file = output.get("responsesFile")
        if isinstance(file, str) and file:
            if not _is_file(file):
                raise _shape(self.name, "a responsesFile named files/...", file)
            url = f"{self._root('download')}/{file}:download?alt=media"
            async with aclosing(self.http.lines(url)) as lines:
                async for raw in lines:
                    try:
                        item = json.loads(raw)
                    except ValueError:
                        continue
                    outcome = self._outcome(item, where)
                    if outcome is not None:
                        yield outcome

    def _outcome(self, item: Any, where: str) -> Outcome | None:
        if not isinstance(item, dict):
            return None
        metadata = item.get("metadata")
        key = metadata.get("key") if isinstance(metadata, dict) else item.get("key")
        if not isinstance(key, str):
            return None
        response = item.get("response")
        if isinstance(response, dict):
            try:
                return Outcome(key, self._answer(response, None), None, True)
            except ProviderError as exc:
                return Outcome(key, None, exc, True)
        error = item.get("error", item.get("status"))
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        cls = _CODES.get(code) if isinstance(code, int) else None
        if cls is None:
            return Outcome(key, None, _request_error(where, str(code or "error"), message), True)
        text = f"{where}: {message or f'error code {code}'}"
        return Outcome(key, None, cls(text, error_message=message, provider="gemini"), True)

    def _batch(self, answer: Any) -> RemoteBatch:
        if not isinstance(answer, dict) or not is_server_id(answer.get("name")):
            raise _shape(self.name, "a batch operation", answer)
        given = answer.get("metadata")
        batch: dict[str, Any] = given if isinstance(given, dict) else answer
        state = str(batch.get("state") or "")
        stats = batch.get("batchStats") or {}
        total, ok, failed = (
            _number(stats, k)
            for k in ("requestCount", "successfulRequestCount", "failedRequestCount")
        )
        ended = bool(answer.get("done")) or state in _ENDED
        output = _output(answer)
        results: tuple[str, ...] = ()
        if ended and output:
            file = output.get("responsesFile")
            results = (str(file),) if _is_file(file) else ("inlined",)
        config = batch.get("inputConfig")
        source = config.get("fileName") if isinstance(config, dict) else None
        error = answer.get("error")
        problem = error.get("message") if isinstance(error, dict) else None
        name = batch.get("displayName")
        tags = dict(_TAG.findall(name)) if isinstance(name, str) else {}
        return RemoteBatch(
            id=answer["name"],
            status=state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_").lower(),
            ended=ended,
            total=total,
            succeeded=ok,
            failed=failed,
            created_at=_seconds(batch.get("createTime")),
            metadata=tags,
            input_file_id=str(source) if _is_file(source) else None,
            results=results,
            problem=problem if isinstance(problem, str) else None,
        )


def inline_body(name: str, data: bytes) -> bytes:
    """The create call's body for a part's file ``data`` sent inlined, named ``name``.

    Built from the file's bytes as they are (no parse): at most ``len(data)`` plus
    :data:`INLINE_GROWTH` a line plus the display name and 70 bytes.
    """
    named = json.dumps({"displayName": name})[1:-1].encode()
    requests = b",".join(_inline(line) for line in data.split(b"\n") if line)
    return _HEAD + named + b',"inputConfig":{"requests":{"requests":[' + requests + b"]}}}}"


def _inline(line: bytes) -> bytes:
    """A file line ``{"key":K,"request":...}`` as an inlined request: K into ``metadata``.

    Our keys are ``<run>-<part>-<i>`` (no quote, no backslash), so K ends at the first ``",``.
    """
    end = line.index(b'",') + 1
    return b'{"metadata":{"key":' + line[7:end] + b"}," + line[end + 1 :]


def _is_file(value: Any) -> bool:
    return is_server_id(value) and value.startswith("files/")


def _output(answer: Any) -> dict[str, Any]:
    """Where an operation keeps its answers: ``response``, or the batch's ``output``."""
    if not isinstance(answer, dict):
        return {}
    response = answer.get("response")
    if isinstance(response, dict):
        return response
    batch = answer.get("metadata")
    output = batch.get("output") if isinstance(batch, dict) else None
    return output if isinstance(output, dict) else {}


def _number(counts: Any, key: str) -> int:
    """An int64 count, which Google's JSON sends as a string."""
    value = counts.get(key) if isinstance(counts, dict) else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _count(counts, key)
