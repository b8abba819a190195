"""A loopback fake of Gemini's API (and of OpenAI's ``/embeddings``), for the tests.

Gemini: ``POST /v1beta/models/{model}:generateContent`` answers ``"Echo: <last user
text>"`` with ``usageMetadata``; ``:streamGenerateContent?alt=sse`` sends the same answer
word by word as server-sent events (chunked), the last with ``finishReason``;
``:batchEmbedContents`` embeds each request's text (at most 100 per call, as the real
one, else a 400 ``INVALID_ARGUMENT``). OpenAI: ``POST /v1/embeddings`` answers floats or
base64, items shuffled (the ``index`` says which is which), refusing more than
``max_inputs`` inputs or ``max_tokens`` tokens with a 400.

Tests queue what a well-behaved server does not say in ``server.script``: a dict is sent
as the next answer's JSON body, a :class:`Status` as an error, a :class:`Cut` as a stream
that stops after ``events`` events. Every request is in ``server.requests``.

    async with serve_gemini() as server:
        provider = GeminiProvider("gemini-2.5-flash", base_url=server.gemini_url, api_key=KEY)
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.from_thread
import attrs

from support.raw_http_server import RawServer, response, serve_raw

GEMINI_BATCH_CAP = 100


def fake_vector(text: str, dimensions: int = 4) -> list[float]:
    """The fake's vector for ``text``: float32-exact, so base64 and JSON agree."""
    digest = hashlib.sha256(text.encode()).digest()
    return [float(len(text))] + [(b - 128) / 128 for b in digest[: dimensions - 1]]


def tokens(text: str) -> int:
    return len(text) // 4 + 1


@attrs.frozen
class Status:
    """Answer the next request with this error status and body."""

    code: int
    body: dict[str, Any] = attrs.field(factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Cut:
    """Stream the next answer's first ``events`` events, then drop the connection."""

    events: int


@attrs.define
class Request:
    """One request as the server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: Any

    @property
    def path(self) -> str:
        return unquote(self.target.split("?", 1)[0])


def google_error(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    """Google's error body."""
    return {"error": {"code": code, "message": message, "status": status, **extra}}


class FakeGemini:
    """The server's state: the script, the requests, and the options tests set."""

    def __init__(self, raw: RawServer) -> None:
        self.raw = raw
        self.gemini_url = raw.base_url + "/v1beta"
        self.openai_url = raw.base_url + "/v1"
        self.script: deque[dict[str, Any] | Status | Cut] = deque()
        self.requests: list[Request] = []
        self.max_inputs = 2048  # OpenAI's caps, as the fake enforces them
        self.max_tokens = 300_000
        self.shuffle = True  # OpenAI's data items in a random order
        self.hold_after: int | None = None  # embedding requests answered before the rest hang
        self.batches: dict[str, dict[str, Any]] = {}  # batch mode: name -> batch
        self.polls_to_finish = 1  # GETs of a batch before it has succeeded
        self.hold_creates = False  # record a created batch, then never answer (a kill)
        self.hold_polls = False  # never answer a GET of a batch (a kill while waiting)

    def embedding_requests(self) -> list[Request]:
        return [r for r in self.requests if "embed" in r.path.lower()]

    async def answer(self, stream: anyio.abc.SocketStream, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        request = Request(method, target, headers, json.loads(body) if body else None)
        self.requests.append(request)
        if self.hold_after is not None and len(self.embedding_requests()) > self.hold_after:
            await anyio.sleep_forever()  # until the client goes (a kill)
        scripted = self.script.popleft() if self.script else None
        if isinstance(scripted, Status):
            await stream.send(
                response(
                    f"{scripted.code} Error",
                    json.dumps(scripted.body).encode(),
                    (("content-type", "application/json"), *scripted.headers),
                )
            )
            return
        path = request.path
        if "/batches" in path or path.endswith(":batchGenerateContent"):
            body_out = await self._batch_route(request)
            await stream.send(
                response(
                    "200 OK", json.dumps(body_out).encode(), (("content-type", "application/json"),)
                )
            )
            return
        if path.endswith(":streamGenerateContent"):
            await self._stream(stream, request, scripted)
            return
        if isinstance(scripted, dict):
            body_out = scripted
        elif path.endswith(":generateContent"):
            body_out = self._generate(request)
        elif path.endswith(":batchEmbedContents"):
            error, body_out = self._gemini_embed(request)
            if error is not None:
                await stream.send(response("400 Bad Request", json.dumps(error).encode()))
                return
        elif path.endswith("/embeddings"):
            error, body_out = self._openai_embed(request)
            if error is not None:
                await stream.send(response("400 Bad Request", json.dumps(error).encode()))
                return
        else:
            await stream.send(response("404 Not Found", b'{"error": {"code": 404}}'))
            return
        await stream.send(
            response(
                "200 OK", json.dumps(body_out).encode(), (("content-type", "application/json"),)
            )
        )

    # -- generate -------------------------------------------------------------------------

    def _text(self, request: Request) -> str:
        contents = request.body.get("contents") or []
        for content in reversed(contents):
            if content.get("role") == "user":
                for part in content.get("parts", []):
                    if "text" in part:
                        return str(part["text"])
        return ""

    def _generate(self, request: Request) -> dict[str, Any]:
        text = "Echo: " + self._text(request)
        prompt = tokens(json.dumps(request.body.get("contents")))
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": tokens(text),
                "totalTokenCount": prompt + tokens(text),
            },
            "modelVersion": request.path.split("/")[-1].split(":")[0],
            "responseId": "resp-1",
        }

    async def _stream(
        self, stream: anyio.abc.SocketStream, request: Request, scripted: object
    ) -> None:
        whole = scripted if isinstance(scripted, dict) else self._generate(request)
        events: list[dict[str, Any]]
        if isinstance(scripted, dict) and "candidates" not in scripted:
            events = [scripted]  # an error event, or a blocked prompt
        else:
            text = whole["candidates"][0]["content"]["parts"][0].get("text", "")
            words = [w + " " for w in text.split(" ")]
            words[-1] = words[-1][:-1]
            events = [
                {"candidates": [{"content": {"role": "model", "parts": [{"text": w}]}, "index": 0}]}
                for w in words
            ]
            last = dict(whole)
            last["candidates"] = [
                {**whole["candidates"][0], "content": {"role": "model", "parts": [{"text": ""}]}}
            ]
            events.append(last)
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        cut = scripted.events if isinstance(scripted, Cut) else None
        for number, event in enumerate(events):
            if cut is not None and number == cut:
                raise anyio.EndOfStream  # drops the connection mid-answer
            data = f"data: {json.dumps(event)}\r\n\r\n".encode()
            await stream.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await stream.send(b"0\r\n\r\n")

    # -- batch mode -----------------------------------------------------------------------

    def _operation(self, batch: dict[str, Any]) -> dict[str, Any]:
        done = batch["state"] in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED")
        count = len(batch["requests"])
        finished = count if batch["state"] == "BATCH_STATE_SUCCEEDED" else 0
        metadata = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": batch["model"],
            "displayName": batch["displayName"],
            "state": batch["state"],
            "createTime": batch["createTime"],
            "batchStats": {
                "requestCount": str(count),
                "successfulRequestCount": str(finished),
                "pendingRequestCount": str(count - finished),
            },
        }
        operation: dict[str, Any] = {"name": batch["name"], "metadata": metadata, "done": done}
        if done:
            answers = []
            if batch["state"] == "BATCH_STATE_SUCCEEDED":
                for item in batch["requests"]:
                    fake = Request("POST", batch["model"] + ":generateContent", {}, item["request"])
                    answers.append({"response": self._generate(fake), "metadata": item["metadata"]})
            operation["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                "GenerateContentBatchOutput",
                "inlinedResponses": {"inlinedResponses": answers},
            }
        return operation

    async def _batch_route(self, request: Request) -> dict[str, Any]:
        path = request.path.removeprefix("/v1beta")
        if path.endswith(":batchGenerateContent"):
            batch = request.body["batch"]
            name = f"batches/b{len(self.batches) + 1}"
            self.batches[name] = {
                "name": name,
                "model": path.split(":")[0].lstrip("/"),
                "displayName": batch.get("displayName", ""),
                "requests": batch["inputConfig"]["requests"]["requests"],
                "state": "BATCH_STATE_PENDING",
                "createTime": "2026-01-01T00:00:00Z",
                "polls": 0,
            }
            if self.hold_creates:
                await anyio.sleep_forever()
            return self._operation(self.batches[name])
        if path == "/batches":
            ops = [self._operation(b) for b in reversed(self.batches.values())]
            return {"operations": ops}
        if path.endswith(":cancel"):
            self.batches[path[1:].removesuffix(":cancel")]["state"] = "BATCH_STATE_CANCELLED"
            return {}
        if self.hold_polls:
            await anyio.sleep_forever()
        batch = self.batches[path[1:]]
        batch["polls"] += 1
        if batch["polls"] >= self.polls_to_finish and batch["state"] == "BATCH_STATE_PENDING":
            batch["state"] = "BATCH_STATE_SUCCEEDED"
        return self._operation(batch)

    # -- embeddings -----------------------------------------------------------------------

    def _gemini_embed(self, request: Request) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        items = request.body["requests"]
        if len(items) > GEMINI_BATCH_CAP:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch",
            ), {}
        vectors = []
        for item in items:
            size = item.get("outputDimensionality", 4)
            vectors.append({"values": fake_vector(item["content"]["parts"][0]["text"], size)})
        return None, {"embeddings": vectors}

    def _openai_embed(self, request: Request) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        texts = request.body["input"]
        total = sum(tokens(t) for t in texts)
        if len(texts) > self.max_inputs:
            message = f"Too many inputs. The max number of inputs is {self.max_inputs}."
            return {"error": {"message": message, "type": "invalid_request_error"}}, {}
        if total > self.max_tokens:
            message = f"Requested {total} tokens, max {self.max_tokens} tokens per request"
            error = {"message": message, "type": "invalid_request_error", "code": None}
            return {"error": error}, {}
        size = request.body.get("dimensions", 4)
        b64 = request.body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(text, size)
            embedding: Any = vector
            if b64:
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if self.shuffle:
            random.shuffle(data)
        body = {
            "object": "list",
            "data": data,
            "model": request.body["model"],
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        return None, body


@asynccontextmanager
async def serve_gemini() -> AsyncIterator[FakeGemini]:
    """Serve the fake on a free loopback port for the block."""
    holder: list[FakeGemini] = []

    async def answer(stream: anyio.abc.SocketStream, raw: bytes) -> None:
        await holder[0].answer(stream, raw)

    async with serve_raw(answer) as raw:
        holder.append(FakeGemini(raw))
        yield holder[0]


@contextmanager
def gemini_server_in_thread() -> Iterator[FakeGemini]:
    """The fake in an event loop of its own thread, for tests that run subprocesses."""
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(serve_gemini()) as server,
    ):
        yield server
