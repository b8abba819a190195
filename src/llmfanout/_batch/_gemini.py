"""Gemini's batch mode on the wire: ``models/{model}:batchGenerateContent``, inlined requests.

- Create: ``POST /models/{model}:batchGenerateContent`` with ``{"batch": {"displayName",
  "inputConfig": {"requests": {"requests": [{"request", "metadata": {"key"}}]}}}}``; the
  answer is a long-running operation named ``batches/{id}``. The requests are inlined (a
  part is at most 20 MB, Gemini's cap on a request); the part's file is that body, but for
  the display name, which carries the run id and part number (Gemini keeps no other
  metadata) so that a batch created before a crash is found again.
- ``GET /batches/{id}`` (the operation: ``metadata`` is the batch, with ``state`` and
  ``batchStats``; ``done``; the ``response`` holds ``inlinedResponses``),
  ``GET /batches?pageSize=&pageToken=`` (``operations``, newest first),
  ``POST /batches/{id}:cancel``. A batch that wrote its answers to a file
  (``responsesFile``) is read from ``/download/v1beta/{file}:download?alt=media``, lines
  ``{"key", "response" | "error"}``.
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
from ._api import BatchAPI, Outcome, RemoteBatch, _count, _encode, _request_error, _seconds, _shape
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


class GeminiBatchAPI(BatchAPI):
    """Gemini's Batch Mode: the requests inlined in the create call."""

    name = "gemini"
    max_requests = 100_000
    max_bytes = 20 * 1024 * 1024
    custom_id_rule = "a string"
    list_path = "/batches"
    cursor = "pageToken"
    separator = b","

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
        return _encode({"request": body, "metadata": {"key": custom_id}})

    def framing(self, name: str) -> tuple[bytes, bytes]:
        return _HEAD + b'"inputConfig":{"requests":{"requests":[', b"]}}}}"

    def _path(self) -> str:
        model = self.provider.model
        name = model if "/" in model else f"models/{model}"
        return f"/{name}:batchGenerateContent"

    async def create(
        self, path: str, size: int, file_id: str | None, metadata: Mapping[str, str]
    ) -> RemoteBatch:
        data = await anyio.Path(path).read_bytes()
        named = json.dumps({"displayName": display_name(metadata)})[1:-1].encode()
        content = _HEAD + named + b"," + data[len(_HEAD) :]
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
            prefix = self.provider._prefix  # ".../v1beta": downloads live beside it
            head, _, version = prefix.rpartition("/")
            url = f"{self.provider._origin.url}{head}/download/{version}/{file}:download?alt=media"
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
        error = item.get("error")
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
            results = (file,) if isinstance(file, str) and file else ("inlined",)
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
            results=results,
            problem=problem if isinstance(problem, str) else None,
        )


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
