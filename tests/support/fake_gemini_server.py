"""A loopback fake of Gemini's API (and of OpenAI's ``/embeddings``), for the tests.

Gemini: ``POST /v1beta/models/{model}:generateContent`` answers ``"Echo: <last user
text>"`` with ``usageMetadata``; ``:streamGenerateContent?alt=sse`` sends the same answer
word by word as server-sent events (chunked), the last with ``finishReason``;
``:batchEmbedContents`` embeds each request's text (at most 100 per call, as the real
one, else a 400 ``INVALID_ARGUMENT``). OpenAI: ``POST /v1/embeddings`` answers floats or
base64, items shuffled (the ``index`` says which is which), refusing more than
``max_inputs`` inputs or ``max_tokens`` tokens with a 400.

Batch mode (``:batchGenerateContent``, ``GET /batches``...) takes inlined requests or an
uploaded file: the Files API's resumable upload (``POST /upload/v1beta/files`` with
``X-Goog-Upload-Protocol: resumable`` and ``X-Goog-Upload-Command: start``, then the bytes
to the ``X-Goog-Upload-URL`` it answers with, ``upload`` and ``upload, finalize`` at the
right ``X-Goog-Upload-Offset``), and a batch made from it writes a ``responsesFile`` read at
``/download/v1beta/{file}:download?alt=media``. Each step is checked as strictly as the
real API does (wrong headers, offsets, shapes or keys are a 400).

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
from urllib.parse import parse_qsl, unquote

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
    raw: bytes = b""

    @property
    def path(self) -> str:
        return unquote(self.target.split("?", 1)[0])

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.target.partition("?")[2]))


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
        self.files: dict[str, bytes] = {}  # the Files API: name -> content
        self.uploads: dict[str, dict[str, Any]] = {}  # open upload sessions, by upload_id
        self.hold_uploads = False  # take an upload's bytes, then never answer (a kill)
        self.upload_origin: str | None = None  # the origin the upload URL names (default ours)
        self.foreign_results = False  # responses files also answer keys we never sent
        self.signed: dict[str, str] = {}  # function call name -> the thoughtSignature sent

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
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None  # an upload's bytes
        request = Request(method, target, headers, parsed, body)
        self.requests.append(request)
        if self.hold_after is not None and len(self.embedding_requests()) > self.hold_after:
            await anyio.sleep_forever()  # until the client goes (a kill)
        path = request.path
        if path.endswith(("generateContent", "GenerateContent")) and "batch" not in path:
            problem = self._unsigned(request.body)
            if problem is not None:  # as Gemini 3 does, before any scripted answer
                await stream.send(_error(400, "INVALID_ARGUMENT", problem))
                return
        scripted = self.script.popleft() if self.script else None
        if isinstance(scripted, dict):
            self._sign(scripted)
        if isinstance(scripted, Status):
            await stream.send(
                response(
                    f"{scripted.code} Error",
                    json.dumps(scripted.body).encode(),
                    (("content-type", "application/json"), *scripted.headers),
                )
            )
            return
        if path.startswith(("/upload/", "/download/")):
            await stream.send(await self._files_route(request))
            return
        if "/batches" in path or path.endswith(":batchGenerateContent"):
            try:
                body_out = await self._batch_route(request)
            except Refused as exc:
                await stream.send(_error(400, "INVALID_ARGUMENT", str(exc)))
                return
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

    def _sign(self, answer: dict[str, Any]) -> None:
        """Remember the thoughtSignatures a scripted answer gives its function calls."""
        for candidate in answer.get("candidates") or ():
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part and "thoughtSignature" in part:
                    self.signed[part["functionCall"]["name"]] = part["thoughtSignature"]

    def _unsigned(self, body: Any) -> str | None:
        """Gemini 3's check: a signed function call must come back with its signature."""
        for content in (body or {}).get("contents") or ():
            if content.get("role") != "model":
                continue
            for part in content.get("parts") or ():
                call = part.get("functionCall")
                if call is None or call.get("name") not in self.signed:
                    continue
                if part.get("thoughtSignature") != self.signed[call["name"]]:
                    return (
                        f"Function call is missing a thought_signature in functionCall parts. "
                        f"This is required for tools to work correctly, and missing "
                        f"thought_signature may lead to degraded model performance. "
                        f"Additional data, function call `{call['name']}`"
                    )
        return None

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
        if batch["fileName"] is not None:
            metadata["inputConfig"] = {"fileName": batch["fileName"]}
        operation: dict[str, Any] = {"name": batch["name"], "metadata": metadata, "done": done}
        if done and batch["fileName"] is not None:
            output = f"files/batch-{batch['name'].split('/')[1]}-responses"
            if output not in self.files:
                self.files[output] = self._responses_file(batch)
            operation["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                "GenerateContentBatchOutput",
                "responsesFile": output,
            }
        elif done:
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
            config = _field(batch, "inputConfig")
            file_name = _field(config, "fileName")
            inlined = config.get("requests")
            if (file_name is None) == (inlined is None):
                raise Refused("inputConfig: give exactly one of fileName and requests")
            if file_name is not None:
                requests = self._file_requests(file_name)
            else:
                requests = inlined["requests"]
                for item in requests:
                    if not set(item) <= {"request", "metadata"} or "request" not in item:
                        raise Refused(f"InlinedRequest: unknown or missing fields {sorted(item)}")
            self.batches[name] = {
                "name": name,
                "model": path.split(":")[0].lstrip("/"),
                "displayName": batch.get("displayName", ""),
                "requests": requests,
                "fileName": file_name,
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

    # -- the Files API --------------------------------------------------------------------

    async def _files_route(self, request: Request) -> bytes:
        try:
            if request.path == "/upload/v1beta/files" and "upload_id" not in request.query:
                return self._upload_start(request)
            if request.path == "/upload/v1beta/files":
                return await self._upload_bytes(request)
            if request.path.startswith("/download/v1beta/files/"):
                return self._download(request)
            return _error(404, "NOT_FOUND", f"no such path {request.path}")
        except Refused as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))

    def _upload_start(self, request: Request) -> bytes:
        headers = request.headers
        if request.method != "POST" or "x-goog-api-key" not in headers:
            raise Refused("start an upload with POST and x-goog-api-key")
        if headers.get("x-goog-upload-protocol") != "resumable":
            raise Refused("X-Goog-Upload-Protocol must be resumable")
        if headers.get("x-goog-upload-command") != "start":
            raise Refused("X-Goog-Upload-Command must be start")
        length = headers.get("x-goog-upload-header-content-length")
        if length is not None and not length.isdigit():
            raise Refused("X-Goog-Upload-Header-Content-Length must be a number")
        body = request.body
        if not isinstance(body, dict) or set(body) - {"file"}:
            raise Refused("the start body is {'file': {...}}")
        upload_id = f"u{len(self.uploads) + 1}"
        self.uploads[upload_id] = {
            "data": bytearray(),
            "length": None if length is None else int(length),
            "display": (body.get("file") or {}).get("displayName", ""),
        }
        origin = self.upload_origin or self.raw.base_url
        url = f"{origin}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return response(
            "200 OK",
            b"",
            (
                ("x-goog-upload-url", url),
                ("x-goog-upload-status", "active"),
                ("x-goog-upload-chunk-granularity", "262144"),
            ),
        )

    async def _upload_bytes(self, request: Request) -> bytes:
        headers = request.headers
        session = self.uploads.get(request.query["upload_id"])
        if session is None or request.query.get("upload_protocol") != "resumable":
            return _error(404, "NOT_FOUND", "no such upload session")
        if "x-goog-api-key" not in headers:
            raise Refused("x-goog-api-key is missing")
        command = headers.get("x-goog-upload-command")
        if command not in ("upload", "upload, finalize"):
            raise Refused(f"X-Goog-Upload-Command {command!r} is not upload or upload, finalize")
        if headers.get("x-goog-upload-offset") != str(len(session["data"])):
            raise Refused(
                f"X-Goog-Upload-Offset {headers.get('x-goog-upload-offset')!r} is not "
                f"{len(session['data'])}"
            )
        if self.hold_uploads:
            await anyio.sleep_forever()
        session["data"] += request.raw
        if command == "upload":
            return response("200 OK", b"", (("x-goog-upload-status", "active"),))
        data = bytes(session["data"])
        if session["length"] is not None and session["length"] != len(data):
            raise Refused(f"{len(data)} bytes uploaded, {session['length']} announced")
        name = f"files/f{len(self.files) + 1}"
        self.files[name] = data
        del self.uploads[request.query["upload_id"]]
        info = {
            "name": name,
            "displayName": session["display"],
            "mimeType": "application/jsonl",
            "sizeBytes": str(len(data)),
            "state": "ACTIVE",
            "uri": f"{self.gemini_url}/{name}",
        }
        return response(
            "200 OK",
            json.dumps({"file": info}).encode(),
            (("content-type", "application/json"), ("x-goog-upload-status", "final")),
        )

    def _download(self, request: Request) -> bytes:
        name = request.path.removeprefix("/download/v1beta/")
        if not name.endswith(":download") or request.query.get("alt") != "media":
            raise Refused("download with {file}:download?alt=media")
        if "x-goog-api-key" not in request.headers:
            raise Refused("x-goog-api-key is missing")
        data = self.files.get(name.removesuffix(":download"))
        if data is None:
            return _error(404, "NOT_FOUND", f"no file {name}")
        return response("200 OK", data, (("content-type", "application/octet-stream"),))

    def _file_requests(self, name: str) -> list[dict[str, Any]]:
        """An input file's lines as inlined requests; refused unless each is {key, request}."""
        data = self.files.get(name)
        if data is None:
            raise Refused(f"inputConfig.fileName: no file {name!r}")
        requests = []
        for number, line in enumerate(data.splitlines(), 1):
            item = json.loads(line)
            if set(item) != {"key", "request"} or not isinstance(item["key"], str):
                raise Refused(f"{name} line {number}: not {{'key', 'request'}}: {sorted(item)}")
            requests.append({"request": item["request"], "metadata": {"key": item["key"]}})
        return requests

    def _responses_file(self, batch: dict[str, Any]) -> bytes:
        lines = []
        for item in batch["requests"]:
            key = item["metadata"]["key"]
            if batch["state"] != "BATCH_STATE_SUCCEEDED":
                continue
            fake = Request("POST", batch["model"] + ":generateContent", {}, item["request"])
            lines.append({"key": key, "response": self._generate(fake)})
        if self.foreign_results and lines:
            lines.append({"key": "someone-else-0-0", "response": lines[0]["response"]})
            lines.append({"key": lines[0]["key"] + "0", "response": lines[0]["response"]})
            lines.append(dict(lines[0]))
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)

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


class Refused(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT."""


def _field(value: Any, name: str) -> Any:
    """A field by its JSON name or its proto name (``fileName`` or ``file_name``), as Google
    reads request bodies."""
    if not isinstance(value, dict):
        raise Refused(f"expected an object holding {name}")
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name)
    return value.get(name, value.get(snake))


def _error(code: int, status: str, message: str) -> bytes:
    return response(
        f"{code} Error",
        json.dumps(google_error(code, status, message)).encode(),
        (("content-type", "application/json"),),
    )


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
