"""The two batch APIs on the wire: OpenAI's Files + Batches, Anthropic's Message Batches.

Each :class:`BatchAPI` turns one task into one request line, creates a batch from a file
of such lines, reads a batch's state into a :class:`RemoteBatch`, lists recent batches
(for reconciling after a crash), cancels, and reads results into :class:`Outcome` values.
Nothing here keeps state or decides when to poll: :mod:`._batch` does.

- OpenAI: ``POST /files`` (multipart, ``purpose=batch``), ``POST /batches``
  (``input_file_id``, ``endpoint``, ``completion_window: 24h``, ``metadata``),
  ``GET /batches/{id}``, ``GET /batches?after=&limit=`` (newest first),
  ``POST /batches/{id}/cancel``, ``GET /files/{id}/content``. Result lines are
  ``{custom_id, response: {status_code, request_id, body}, error: {code, message}}``.
- Anthropic: ``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``, no
  metadata), ``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches?after_id=``
  (newest first), ``POST .../{id}/cancel``, and the JSONL at ``results_url``, lines
  ``{custom_id, result: {type: succeeded|errored|canceled|expired, ...}}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any, ClassVar

import anyio
import attrs

from .._base._types import LLMMessage, LLMResponse
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from ..providers._errors import status_error
from ..providers._http import HTTPProvider
from ..providers._transports._base import Response
from ._http import BatchHTTP
from ._state import is_server_id


class BatchRequestError(ProviderError):
    """A request in a batch that got no answer: errored without an HTTP status, or never ran.

    ``error_type`` holds the provider's code (``batch_expired``, ``canceled``...). A
    request that expired or was cancelled may succeed if sent again (``retryable``).
    """


class BatchRequestExpired(BatchRequestError):
    """The batch's 24 hours ran out before this request was processed; send it again."""

    retryable = True


class BatchRequestCancelled(BatchRequestError):
    """The batch was cancelled before this request was processed; send it again."""

    retryable = True


@attrs.frozen
class RemoteBatch:
    """A provider's batch as last seen: status, counts, and where its results are."""

    id: str
    status: str  # the provider's own word: in_progress, completed, ended...
    ended: bool  # nothing will change any more; results (if any) can be read
    total: int
    succeeded: int
    failed: int  # errored, expired and cancelled requests so far
    created_at: float  # seconds since the epoch
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    input_file_id: str | None = None
    results: tuple[str, ...] = ()  # output and error file ids, or the results URL
    problem: str | None = None  # why a batch failed as a whole

    @property
    def done(self) -> int:
        """Requests finished, one way or another."""
        return self.succeeded + self.failed


@attrs.frozen
class Outcome:
    """One request's result: a response, or the error that stands for it."""

    custom_id: str
    response: LLMResponse | None
    error: ProviderError | None
    answered: bool  # the model ran (False for expired or cancelled requests)


class BatchAPI:
    """What both batch APIs offer, over a :class:`BatchHTTP`."""

    name: ClassVar[str]
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]
    custom_id_rule: ClassVar[str]

    def __init__(self, provider: HTTPProvider) -> None:
        self.provider = provider
        self.http = BatchHTTP(provider)

    # -- building requests -------------------------------------------------------------

    def body(
        self, messages: Sequence[LLMMessage], overrides: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The request body the real-time API would get; raises ``BadRequestError``."""
        provider = self.provider
        params = provider._merge(overrides) if overrides else provider._params
        if params.get("stream") or "on_text" in params:  # real-time calls stream; batches not
            raise BadRequestError(
                f"{provider.provider_name}: a batch cannot stream its answers; remove "
                "stream=True (and on_text) from config_overrides and default_params",
                provider=provider.provider_name,
            )
        return provider._payload(messages, params)

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One request of the batch, as a line of JSON (ending in a newline)."""
        raise NotImplementedError

    separator = b""
    """What goes between two request lines in a part's file."""

    def framing(self, name: str) -> tuple[bytes, bytes]:
        """What a part's file starts and ends with, so that it is sent as it is.

        The file is the whole request body: no copy of it is made to send it.
        """
        return b"", b""

    # -- batches -----------------------------------------------------------------------

    line_overhead = 0
    """Bytes each request line grows by on the wire beyond its line in the part's file
    (Gemini's inlined requests); the plan counts them against the size limit."""

    def part_bytes(self) -> int:
        """The default size limit of a part (``max_bytes`` unless the API says otherwise)."""
        return self.max_bytes

    async def upload(self, path: str, name: str, size: int, rows: int) -> str | None:
        """Send the request file ahead of creating (OpenAI, Gemini); its id, or None."""
        return None

    async def create(
        self, path: str, size: int, file_id: str | None, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        """Create the batch. Not idempotent: callers reconcile before calling it again."""
        raise NotImplementedError

    async def get(self, batch_id: str) -> RemoteBatch:
        """The batch as it is now."""
        raise NotImplementedError

    list_path: ClassVar[str]
    cursor: ClassVar[str]  # the query parameter that pages on from an id

    async def recent(self) -> AsyncGenerator[RemoteBatch, None]:
        """Every batch the key can see, newest first, page by page as the caller reads."""
        after: str | None = None
        while True:
            query = "?limit=100" + (f"&{self.cursor}={after}" if after else "")
            page = await self.http.call("GET", self.list_path + query)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise _shape(self.name, "a list of batches", page)
            for item in data:
                yield self._batch(item)
            last = page.get("last_id") or (data[-1].get("id") if data else None)
            if not data or not page.get("has_more") or not is_server_id(last):
                return
            after = last

    async def first_custom_id(self, batch: RemoteBatch) -> str | None:
        """The custom id of an ended batch's first result (None if it has none).

        Only the start of the results is read: the download stops there, its connection
        closed rather than drained.
        """
        async with aclosing(self.outcomes(batch)) as outcomes:
            async for outcome in outcomes:
                return outcome.custom_id
        return None

    def _batch(self, answer: Any) -> RemoteBatch:
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> RemoteBatch:
        """Ask the provider to stop the batch; requests already done keep their results."""
        raise NotImplementedError

    async def outcomes(self, batch: RemoteBatch) -> AsyncGenerator[Outcome, None]:
        """The results of an ended batch, in the provider's order."""
        where = f"{self.name} batch {batch.id}"
        for path in self._result_paths(batch):
            async with aclosing(self.http.lines(path)) as lines:
                async for raw in lines:
                    outcome = self._outcome(raw, where)
                    if outcome is not None:
                        yield outcome

    def _result_paths(self, batch: RemoteBatch) -> list[str]:
        """Where an ended batch's results are read from, in order."""
        raise NotImplementedError

    def _outcome(self, raw: bytes, where: str) -> Outcome | None:
        """One result line read (None for a line that is not one)."""
        raise NotImplementedError

    def _answer(self, body: Any, request_id: str | None) -> LLMResponse:
        headers = {"x-request-id": request_id, "request-id": request_id} if request_id else {}
        response = Response(200, "OK", headers, b"")
        return self.provider._response(body, response, body.get("model", self.provider.model))


# -- OpenAI ----------------------------------------------------------------------------


# Alike in shape only (GeminiBatchAPI): each API's own values for the BatchAPI attributes.
class OpenAIBatchAPI(BatchAPI):
    """OpenAI's Batch API: upload a JSONL file, then create a batch from it."""

    name = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024
    custom_id_rule = "a unique string"
    endpoint = "/v1/chat/completions"
    list_path = "/batches"
    cursor = "after"

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        request = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return _encode(request)

    def __init__(self, provider: HTTPProvider) -> None:
        super().__init__(provider)
        self.boundary = "llmfanout-" + secrets.token_hex(16)

    def framing(self, name: str) -> tuple[bytes, bytes]:
        # The part's file is the multipart form itself: purpose, then the JSONL file.
        boundary = self.boundary
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        return head, f"\r\n--{boundary}--\r\n".encode()

    async def upload(self, path: str, name: str, size: int, rows: int) -> str | None:
        # The provider's request primitive takes a whole body: one file (at most 200 MB).
        answer = await self.http.call(
            "POST",
            "/files",
            content=await anyio.Path(path).read_bytes(),
            content_type=f"multipart/form-data; boundary={self.boundary}",
        )
        _check_ids(self.name, answer, "the file upload", ("id",), ())
        file_id: str = answer["id"]
        return file_id

    async def create(
        self, path: str, size: int, file_id: str | None, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        body = {
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return self._batch(await self.http.call("POST", "/batches", json=body))

    async def get(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self.http.call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self.http.call("POST", f"/batches/{batch_id}/cancel"))

    def _result_paths(self, batch: RemoteBatch) -> list[str]:
        return [f"/files/{file_id}/content" for file_id in batch.results]

    def _outcome(self, raw: bytes, where: str) -> Outcome | None:
        try:
            line = json.loads(raw)
            custom_id = line["custom_id"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(custom_id, str):
            return None
        response = line.get("response")
        error = line.get("error")
        if isinstance(response, dict) and isinstance(response.get("body"), dict):
            body = response["body"]
            status = response.get("status_code")
            if not isinstance(status, int):  # a compatible server that leaves it out
                status = 500 if "error" in body else 200
            request_id = response.get("request_id")
            if 200 <= status < 300:
                try:
                    return Outcome(custom_id, self._answer(body, request_id), None, True)
                except ProviderError as exc:
                    return Outcome(custom_id, None, exc, True)
            answer = Response(
                status,
                "",
                {"x-request-id": request_id} if isinstance(request_id, str) else {},
                json.dumps(body).encode(),
            )
            provider = self.provider
            problem = status_error(where, answer, provider._redactor, provider._credential())
            return Outcome(custom_id, None, problem, True)
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return Outcome(custom_id, None, _request_error(where, code, message), False)

    def _batch(self, answer: Any) -> RemoteBatch:
        _check_ids(self.name, answer, "a batch", ("id",), ("input_file_id",))
        status = str(answer.get("status") or "")
        counts = answer.get("request_counts") or {}
        total, completed, failed = (_count(counts, k) for k in ("total", "completed", "failed"))
        results = tuple(
            answer[k] for k in ("output_file_id", "error_file_id") if answer.get(k) is not None
        )
        _check_ids(self.name, answer, "a batch", (), ("output_file_id", "error_file_id"))
        errors = answer.get("errors")
        problem = None
        if isinstance(errors, dict) and isinstance(errors.get("data"), list):
            problem = "; ".join(
                str(e.get("message") or e.get("code"))
                for e in errors["data"][:5]
                if isinstance(e, dict)
            )
        metadata = answer.get("metadata")
        return RemoteBatch(
            id=answer["id"],
            status=status,
            ended=status in ("completed", "failed", "expired", "cancelled"),
            total=total,
            succeeded=completed,
            failed=failed,
            created_at=_seconds(answer.get("created_at")),
            metadata=metadata if isinstance(metadata, dict) else {},
            input_file_id=answer.get("input_file_id"),
            results=results,
            problem=problem or None,
        )

    def _shape(self, what: str, answer: Any) -> ProviderError:
        return _shape(self.name, what, answer)


# -- Anthropic ---------------------------------------------------------------------------


_ANTHROPIC_ERRORS: dict[str, type[ProviderError]] = {
    "invalid_request_error": BadRequestError,
    "not_found_error": BadRequestError,
    "request_too_large": BadRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": AuthenticationError,
    "rate_limit_error": RateLimitError,
    "api_error": ServerError,
    "overloaded_error": ServerError,
}


class AnthropicBatchAPI(BatchAPI):
    """Anthropic's Message Batches: the requests go in the create call itself."""

    name = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024
    custom_id_rule = "1 to 64 of a-z A-Z 0-9 _ -"
    path = list_path = "/v1/messages/batches"
    cursor = "after_id"

    separator = b","  # JSON allows the newline that ends each line, before it

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        return _encode({"custom_id": custom_id, "params": body})

    def framing(self, name: str) -> tuple[bytes, bytes]:
        # The part's file is the create body itself: {"requests": [line, line, ...]}.
        return b'{"requests":[', b"]}"

    async def create(
        self, path: str, size: int, file_id: str | None, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        # The provider's request primitive takes a whole body: one part (at most 256 MB).
        answer = await self.http.call(
            "POST",
            self.path,
            content=await anyio.Path(path).read_bytes(),
            content_type="application/json",
        )
        return self._batch(answer)

    async def get(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self.http.call("GET", f"{self.path}/{batch_id}"))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        return self._batch(await self.http.call("POST", f"{self.path}/{batch_id}/cancel"))

    def _result_paths(self, batch: RemoteBatch) -> list[str]:
        # Resolved by the URL standard (a proxy may give a path); the key goes only to
        # base_url's origin: a URL elsewhere is read from the documented path instead.
        return [
            self.http.resolve(url) or f"{self.path}/{batch.id}/results" for url in batch.results
        ]

    def _outcome(self, raw: bytes, where: str) -> Outcome | None:
        try:
            line = json.loads(raw)
            custom_id, result = line["custom_id"], line["result"]
            kind = result["type"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(custom_id, str):
            return None
        if kind == "errored":
            return Outcome(custom_id, None, _errored(where, result.get("error")), True)
        if kind != "succeeded":
            return Outcome(custom_id, None, _request_error(where, kind, None), False)
        message = result.get("message")
        if not isinstance(message, dict):
            return Outcome(custom_id, None, _shape(where, "a message", line), True)
        try:
            return Outcome(custom_id, self._answer(message, None), None, True)
        except ProviderError as exc:
            return Outcome(custom_id, None, exc, True)

    def _batch(self, answer: Any) -> RemoteBatch:
        _check_ids(self.name, answer, "a message batch", ("id",), ())
        status = str(answer.get("processing_status") or "")
        counts = answer.get("request_counts") or {}
        kinds = ("processing", "succeeded", "errored", "canceled", "expired")
        processing, succeeded, errored, canceled, expired = (_count(counts, k) for k in kinds)
        url = answer.get("results_url")
        ended = status == "ended"
        return RemoteBatch(
            id=answer["id"],
            status=status,
            ended=ended,
            total=processing + succeeded + errored + canceled + expired,
            succeeded=succeeded,
            failed=errored + canceled + expired,
            created_at=_seconds(answer.get("created_at")),
            results=(url,) if ended and isinstance(url, str) and url else (),
        )


# -- shared pieces ---------------------------------------------------------------------


def _encode(value: Any) -> bytes:
    # backslashreplace: a lone surrogate (from a "\ud800" escape) can only sit inside a
    # JSON string, where it becomes that same escape again.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8", "backslashreplace")


def _check_ids(
    name: str, answer: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    """Refuse an answer whose ids could not go into a URL path or header as they are.

    An id with CR/LF would inject a header, a slash another path, a non-ASCII letter fail
    to encode: a provider error (the server's fault), before the id touches anything.
    """
    if not isinstance(answer, dict):
        raise _shape(name, what, answer)
    for key in (*required, *optional):
        value = answer.get(key)
        if value is None and key in optional:
            continue
        if not is_server_id(value):
            raise ProviderError(
                f"{name}: the server sent {what} whose {key} is {_shown(value)}, not an id "
                "(letters, digits, _ . : -); it was not used in any request",
                provider=name,
            )


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True) if value is not None else "missing"
    return text if len(text) <= 80 else text[:77] + "..."


def _count(counts: Any, key: str) -> int:
    value = counts.get(key) if isinstance(counts, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _seconds(value: Any) -> float:
    """A timestamp in either API's spelling (Unix seconds, or RFC 3339) as Unix seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # seconds, sent as a string by some compatible servers
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return 0.0


def _shape(name: str, what: str, answer: Any) -> ProviderError:
    shown = json.dumps(answer)[:200] if answer is not None else "nothing"
    return ProviderError(
        f"{name}: expected {what} but the server sent {shown}; check that base_url points at "
        "the API and that the server implements batches",
        provider=name.split()[0],
    )


def _request_error(where: str, code: Any, message: Any) -> BatchRequestError:
    code = code if isinstance(code, str) and code else "error"
    cls: type[BatchRequestError] = BatchRequestError
    if code in ("expired", "batch_expired"):
        cls, what = BatchRequestExpired, "the batch expired before this request ran"
    elif code in ("canceled", "cancelled", "batch_cancelled", "batch_canceled"):
        cls, what = BatchRequestCancelled, "the batch was cancelled before this request ran"
    else:
        what = f"the request failed ({code})"
    if isinstance(message, str) and message:
        what += f": {message}"
    hint = "; send it again in real time with llmfanout run --resume --retry-failed"
    return cls(
        f"{where}: {what}{hint if cls is not BatchRequestError else ''}",
        error_type=code,
        error_message=message if isinstance(message, str) else None,
        provider=where.split()[0],
    )


def _errored(where: str, error: Any) -> ProviderError:
    inner = error.get("error") if isinstance(error, dict) else None
    if not isinstance(inner, dict):
        inner = error if isinstance(error, dict) else {}
    kind = inner.get("type")
    kind = kind if isinstance(kind, str) and kind else "error"
    message = inner.get("message")
    message = message if isinstance(message, str) else None
    cls = _ANTHROPIC_ERRORS.get(kind)
    if cls is None:
        return _request_error(where, kind, message)
    return cls(
        f"{where}: {kind}" + (f": {message}" if message else ""),
        error_type=kind,
        error_message=message,
        provider="anthropic",
    )
