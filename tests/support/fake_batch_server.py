"""A fake of both providers' batch endpoints on 127.0.0.1, over fake_llm_server's h11 machinery.

OpenAI: ``POST /v1/files`` (multipart, purpose ``batch``), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first,
``after`` and ``limit``), ``POST /v1/batches/{id}/cancel``. Anthropic: ``POST
/v1/messages/batches``, ``GET .../{id}``, ``GET /v1/messages/batches`` (``after_id``),
``POST .../{id}/cancel``, ``GET .../{id}/results``.

Batches move only when the test says so (:meth:`FakeBatchServer.advance`,
:meth:`~FakeBatchServer.finish`, :meth:`~FakeBatchServer.expire`), or, with
``advance_on_poll``, one step each time a client polls them: never on a timer. A step::

    step 0: nothing done     openai validating    anthropic in_progress
    step 1: half done        openai in_progress   anthropic in_progress
    step 2: all done         openai finalizing    anthropic in_progress
    step 3: ended            openai completed     anthropic ended

A request whose last message holds ``FAIL`` gets an error result (OpenAI: a 400 in the
error file; Anthropic: an ``errored`` result); every other one ``"echo: <prompt>"``.
``faults`` maps an operation (``upload``, ``create``, ``get``, ``list``, ``results``,
``cancel``) to a queue of :class:`Fault` for its next requests; ``hold`` names operations
whose effect happens but whose answer never comes (the client must be killed or give up);
``stall_results_after`` sends that many result lines, then nothing more; ``lean_list``
lists batches without counts or metadata; ``results_base`` moves Anthropic's results_url.
From a shell, ``python tests/support/fake_batch_server.py [--port N] [--advance-on-poll]`` prints
the base URL and serves until killed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import anyio.from_thread
import attrs
import h11

from support.fake_llm_server import (
    _STREAM_GONE,
    Fault,
    RecordedRequest,
    _answer,
    _error_body,
    _read_request,
    _wait_for_close,
)

__all__ = ["FakeBatch", "FakeBatchServer", "fake_batch_server_in_thread", "serve_fake_batches"]

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ENDED = 3


@attrs.define
class FakeBatch:
    """One batch on the server."""

    id: str
    wire: str  # "openai" or "anthropic"
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body)
    created_at: float
    metadata: dict[str, str] = attrs.Factory(dict)
    input_file_id: str | None = None
    step: int = 0
    end: str | None = None  # None (still going), "completed", "expired", "cancelled", "failed"
    cancelling: bool = False
    processed: int = 0  # requests done when it ended early
    output_file_id: str | None = None
    error_file_id: str | None = None
    problem: str | None = None

    @property
    def done(self) -> int:
        total = len(self.requests)
        if self.end is not None and self.end != "completed":
            return total
        return min(total, total * self.step // 2)

    def status(self) -> str:
        if self.wire == "anthropic":
            if self.end is not None:
                return "ended"
            return "canceling" if self.cancelling else "in_progress"
        if self.end is not None:
            return self.end
        if self.cancelling:
            return "cancelling"
        return ("validating", "in_progress", "finalizing")[self.step]


def _fails(body: dict[str, Any]) -> bool:
    try:
        return "FAIL" in str(body["messages"][-1]["content"])
    except (KeyError, IndexError, TypeError):
        return False


class FakeBatchServer:
    """The running server: its batches, files and requests, and the levers a test pulls."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.openai_base_url = self.base_url + "/v1"
        self.anthropic_base_url = self.base_url
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.faults: dict[str, deque[Fault]] = {}
        self.hold: set[str] = set()
        self.advance_on_poll = False
        self.stall_results_after: int | None = None
        self.lean_list = False
        """List batches without request counts and metadata, as some compatible servers do."""
        self.results_base: str | None = None
        """Where Anthropic ``results_url`` points (default: this server)."""
        self.prefix = ""
        """A path the API is mounted under, as behind a proxy (``/anthropic``): requests
        outside it get a 404. Give the providers ``base_url + prefix``."""
        self.results_form = "absolute"
        """How Anthropic's ``results_url`` is spelled: ``absolute``; ``path`` (from the
        origin's root, prefix included); ``relative`` (to the base URL's path); ``upper``
        (an absolute URL with an upper-case scheme)."""
        self.batch_ids: deque[str] = deque()
        """Ids the next batches get instead of our own (a hostile server's)."""
        self.result_ids: dict[int, str] = {}
        """custom_id replacements in result lines, by position (foreign ids)."""
        self.extra_results: list[str] = []
        """custom_ids of extra result lines appended (copies of the first line's result)."""
        self.reopen_after: int | None = None
        """After this many more answers about an ended batch, it says it is in progress
        again (a provider's inconsistency); None: never."""
        self.fail_validation: str | None = None
        """When set, the next OpenAI batch fails validation (at its first step) with it."""
        self.polls = 0
        self.created = anyio.Event()
        """Set when a batch is created (replace it to wait for the next one)."""
        self._counter = 0

    def __repr__(self) -> str:
        return f"FakeBatchServer({self.base_url!r}, batches={len(self.batches)})"

    # -- levers ------------------------------------------------------------------------

    def add_fault(self, operation: str, *faults: Fault) -> None:
        """Queue faults for the next requests of one operation (``get``, ``create``...)."""
        self.faults.setdefault(operation, deque()).extend(faults)

    def _chosen(self, batch_id: str | None) -> list[FakeBatch]:
        if batch_id is None:
            return [b for b in self.batches.values() if b.end is None]
        return [self.batches[batch_id]]

    def advance(self, batch_id: str | None = None, steps: int = 1) -> None:
        """Move one batch (or every unfinished one) ``steps`` steps on."""
        for batch in self._chosen(batch_id):
            for _ in range(steps):
                if batch.end is not None:
                    break
                if batch.cancelling:
                    self._end(batch, "cancelled", batch.done)
                    break
                if batch.problem is not None:
                    self._end(batch, "failed", 0)
                    break
                batch.step += 1
                if batch.step >= ENDED:
                    self._end(batch, "completed", len(batch.requests))

    def finish(self, batch_id: str | None = None) -> None:
        """End one batch (or every unfinished one) with every request processed."""
        self.advance(batch_id, steps=ENDED)

    def expire(self, batch_id: str | None = None) -> None:
        """End one batch (or every unfinished one) as expired: what was done stays done."""
        for batch in self._chosen(batch_id):
            self._end(batch, "expired", batch.done)

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:04d}"

    def _end(self, batch: FakeBatch, how: str, processed: int) -> None:
        batch.end, batch.processed = how, processed
        if batch.wire == "anthropic" or how == "failed":  # a failed batch has no files
            return
        ok, errors = [], []
        lines = [
            self._openai_line(batch, position, custom_id, body, position < processed, how)
            for position, (custom_id, body) in enumerate(batch.requests)
        ]
        for line in self._result_lines(lines):
            (errors if line["error"] or line["response"]["status_code"] != 200 else ok).append(line)
        if ok:
            batch.output_file_id = self._store(ok)
        if errors:
            batch.error_file_id = self._store(errors)

    def _store(self, lines: list[dict[str, Any]]) -> str:
        file_id = self._new_id("file-")
        self.files[file_id] = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        return file_id

    def _openai_line(
        self,
        batch: FakeBatch,
        position: int,
        custom_id: str,
        body: dict[str, Any],
        processed: bool,
        how: str,
    ) -> dict[str, Any]:
        line: dict[str, Any] = {"id": f"batch_req_{position}", "custom_id": custom_id}
        if not processed:
            code = "batch_expired" if how == "expired" else "batch_cancelled"
            line.update(response=None, error={"code": code, "message": f"This request {how}."})
        elif _fails(body):
            error = json.loads(_error_body("openai", 400, "the prompt asked to fail", None))
            line.update(
                response={"status_code": 400, "request_id": f"req_{position}", "body": error},
                error=None,
            )
        elif "input" in body:  # a /v1/embeddings line: one base64 vector from its text
            vector = struct.pack("<3f", float(len(body["input"])), 0.5, -0.5)
            item = {
                "object": "embedding",
                "index": 0,
                "embedding": base64.b64encode(vector).decode(),
            }
            tokens = len(body["input"]) // 4 + 1
            answer = {
                "object": "list",
                "data": [item],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            line.update(
                response={"status_code": 200, "request_id": f"req_{position}", "body": answer},
                error=None,
            )
        else:
            answer = json.loads(_answer("openai", _synthetic(position, body), _scripted(body)))
            line.update(
                response={"status_code": 200, "request_id": f"req_{position}", "body": answer},
                error=None,
            )
        return line

    def _anthropic_results(self, batch: FakeBatch) -> bytes:
        out: list[dict[str, Any]] = []
        for position, (custom_id, body) in enumerate(batch.requests):
            if position >= batch.processed:
                result: dict[str, Any] = {
                    "type": "expired" if batch.end == "expired" else "canceled"
                }
            elif _fails(body):
                error = json.loads(_error_body("anthropic", 400, "the prompt asked to fail", None))
                result = {"type": "errored", "error": error}
            else:
                message = json.loads(
                    _answer("anthropic", _synthetic(position, body), _scripted(body))
                )
                result = {"type": "succeeded", "message": message}
            out.append({"custom_id": custom_id, "result": result})
        return b"".join(json.dumps(line).encode() + b"\n" for line in self._result_lines(out))

    # -- wire --------------------------------------------------------------------------

    def _openai_json(self, batch: FakeBatch) -> dict[str, Any]:
        total, done = len(batch.requests), batch.done
        failed = 0
        for position, (_, body) in enumerate(batch.requests[:done]):
            never_ran = batch.end not in (None, "completed") and position >= batch.processed
            failed += never_ran or _fails(body)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": {"object": "list", "data": [{"code": "invalid", "message": batch.problem}]}
            if batch.problem
            else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status(),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": batch.metadata,
        }

    def _anthropic_json(self, batch: FakeBatch) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for position, (_, body) in enumerate(batch.requests):
            if batch.end is None:
                kind = "processing" if position >= batch.done else "succeeded"
            elif position >= batch.processed:
                kind = "expired" if batch.end == "expired" else "canceled"
            else:
                kind = "succeeded"
            if kind == "succeeded" and _fails(body):
                kind = "errored"
            counts[kind] += 1
        ended = batch.end is not None
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status(),
            "request_counts": counts,
            "created_at": datetime.fromtimestamp(batch.created_at, UTC).isoformat(),
            "ended_at": None,
            "results_url": self._results_url(batch) if ended else None,
        }

    def _results_url(self, batch: FakeBatch) -> str:
        path = f"v1/messages/batches/{batch.id}/results"
        if self.results_form == "relative":
            return path
        if self.results_form == "path":
            return f"{self.prefix}/{path}"
        base = self.results_base or self.base_url
        if self.results_form == "upper":
            base = base.replace("http://", "HTTP://", 1)
        return f"{base}{self.prefix}/{path}"

    def _json(self, batch: FakeBatch) -> dict[str, Any]:
        data = self._openai_json(batch) if batch.wire == "openai" else self._anthropic_json(batch)
        if self.reopen_after is not None and batch.end is not None:
            self.reopen_after -= 1
        if self.reopen_after is not None and self.reopen_after < 0 and batch.end is not None:
            data["status" if batch.wire == "openai" else "processing_status"] = "in_progress"
            data["results_url"] = data["output_file_id"] = data["error_file_id"] = None
        return data

    def _result_lines(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The result lines as a hostile server sends them: foreign or extra custom ids."""
        lines = [
            {**line, "custom_id": self.result_ids.get(position, line["custom_id"])}
            for position, line in enumerate(lines)
        ]
        return lines + [{**lines[0], "custom_id": extra} for extra in self.extra_results]

    def _route(self, request: RecordedRequest) -> tuple[str, int, bytes]:
        """``(operation, status, body)`` for one request; the operation names its faults."""
        url = urlsplit(request.path)
        path, query = url.path, parse_qs(url.query)
        method = request.method
        if path == "/v1/files" and method == "POST":
            return "upload", *self._upload(request)
        if m := re.fullmatch(r"/v1/files/([^/]+)/content", path):
            data = self.files.get(m[1])
            return ("results", 200, data) if data is not None else ("results", *_missing())
        for wire, root in (("anthropic", "/v1/messages/batches"), ("openai", "/v1/batches")):
            if path == root and method == "POST":
                return "create", *self._create(wire, request)
            if path == root and method == "GET":
                return "list", 200, self._list(wire, query)
            m = re.fullmatch(re.escape(root) + r"/([^/]+)(/cancel|/results)?", path)
            if m is None or m[1] not in self.batches:
                continue
            batch = self.batches[m[1]]
            if m[2] == "/cancel" and method == "POST":
                if batch.end is None:
                    batch.cancelling = True
                return "cancel", 200, json.dumps(self._json(batch)).encode()
            if m[2] == "/results" and batch.end is not None:
                return "results", 200, self._anthropic_results(batch)
            if m[2] is None and method == "GET":
                self.polls += 1
                if self.advance_on_poll:
                    self.advance(batch.id)
                return "get", 200, json.dumps(self._json(batch)).encode()
        return "other", *_missing()

    def _lean(self, item: dict[str, Any]) -> dict[str, Any]:
        if self.lean_list:
            item = {k: v for k, v in item.items() if k not in ("request_counts", "metadata")}
        return item

    def _upload(self, request: RecordedRequest) -> tuple[int, bytes]:
        match = re.search(r"boundary=([^;]+)", request.headers.get("content-type", ""))
        if match is None:
            return 400, _error_body("openai", 400, "expected multipart/form-data", None)
        fields: dict[str, bytes] = {}
        for chunk in request.body.split(b"--" + match[1].encode()):
            head, _, data = chunk.partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]+)"', head)
            if name is not None:
                fields[name[1].decode()] = data.removesuffix(b"\r\n")
        if fields.get("purpose") != b"batch" or "file" not in fields:
            return 400, _error_body("openai", 400, "give purpose=batch and a file", None)
        file_id = self._new_id("file-")
        self.files[file_id] = fields["file"]
        answer = {"id": file_id, "object": "file", "bytes": len(fields["file"]), "purpose": "batch"}
        return 200, json.dumps(answer).encode()

    def _create(self, wire: str, request: RecordedRequest) -> tuple[int, bytes]:
        body = request.json if isinstance(request.json, dict) else {}
        requests: list[tuple[str, dict[str, Any]]] = []
        if wire == "openai":
            data = self.files.get(str(body.get("input_file_id")))
            if data is None or body.get("completion_window") != "24h":
                return 400, _error_body(wire, 400, "unknown input_file_id or window", None)
            for raw in data.splitlines():
                line = json.loads(raw)
                requests.append((line["custom_id"], line["body"]))
        else:
            for item in body.get("requests") or []:
                if not _CUSTOM_ID.match(str(item.get("custom_id"))):
                    return 400, _error_body(wire, 400, "custom_id breaks the rule", None)
                requests.append((item["custom_id"], item["params"]))
        if not requests or len({c for c, _ in requests}) != len(requests):
            return 400, _error_body(wire, 400, "no requests, or a custom_id twice", None)
        batch = FakeBatch(
            id=self.batch_ids.popleft()
            if self.batch_ids
            else self._new_id("batch_" if wire == "openai" else "msgbatch_"),
            wire=wire,
            requests=requests,
            created_at=time.time(),
            metadata=dict(body.get("metadata") or {}),
            input_file_id=body.get("input_file_id"),
            problem=self.fail_validation if wire == "openai" else None,
        )
        self.fail_validation = None
        self.batches[batch.id] = batch
        self.created.set()
        return 200, json.dumps(self._json(batch)).encode()

    def _list(self, wire: str, query: dict[str, list[str]]) -> bytes:
        newest_first = [b for b in reversed(self.batches.values()) if b.wire == wire]
        after = (query.get("after_id") or query.get("after") or [None])[0]
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int((query.get("limit") or ["20"])[0])
        page = newest_first[:limit]
        return json.dumps(
            {
                "object": "list",
                "data": [self._lean(self._json(b)) for b in page],
                "has_more": len(newest_first) > limit,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        ).encode()

    # -- connections -------------------------------------------------------------------

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    received = await _read_request(conn, stream)
                    if received is None:
                        return
                    if not await self._respond(conn, stream, self._record(*received)):
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except (*_STREAM_GONE, h11.ProtocolError):
            return

    def _record(self, request: h11.Request, body: bytes) -> RecordedRequest:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        target = request.target.decode()
        if self.prefix:  # outside the mount: a path no route matches
            inside = target.startswith(self.prefix + "/")
            target = target[len(self.prefix) :] if inside else "/outside-the-prefix" + target
        recorded = RecordedRequest(
            index=len(self.requests),
            time=anyio.current_time(),
            method=request.method.decode(),
            path=target,
            headers={k.decode().lower(): v.decode() for k, v in request.headers},
            body=body,
            json=parsed,
            connection=0,
        )
        self.requests.append(recorded)
        return recorded

    def _operation(self, request: RecordedRequest) -> str:
        path = urlsplit(request.path).path
        if path == "/v1/files":
            return "upload"
        if path.endswith("/content") or path.endswith("/results"):
            return "results"
        if path.endswith("/cancel"):
            return "cancel"
        if path in ("/v1/batches", "/v1/messages/batches"):
            return "create" if request.method == "POST" else "list"
        return "get"

    async def _respond(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: RecordedRequest
    ) -> bool:
        queue = self.faults.get(self._operation(request))
        fault = queue.popleft() if queue else None
        if fault is not None and fault.kind == "status":
            wire = "anthropic" if "/messages/" in request.path else "openai"
            body = _error_body(wire, fault.code, fault.message, fault.error_type)
            return await _send(conn, stream, fault.code, body, list(fault.headers))
        if fault is not None and fault.kind == "disconnect":
            return False
        operation, code, body = self._route(request)
        if fault is not None and fault.kind == "drop":  # done, but the answer is lost
            return False
        if operation in self.hold:
            await _wait_for_close(stream)
            return False
        if operation == "results" and self.stall_results_after is not None:
            lines = body.splitlines(keepends=True)
            head = b"".join(lines[: self.stall_results_after])
            headers = [("content-type", "application/jsonl"), ("content-length", str(len(body)))]
            await stream.send(conn.send(h11.Response(status_code=200, headers=headers)))
            await stream.send(conn.send(h11.Data(data=head)))
            await _wait_for_close(stream)
            return False
        return await _send(conn, stream, code, body, [])


def _missing() -> tuple[int, bytes]:
    return 404, _error_body("openai", 404, "no such endpoint or object", None)


def _scripted(body: dict[str, Any]) -> Fault:
    """A prompt ``JSON {...}`` is answered with that JSON: as the input of the forced tool
    when the request forces one (Anthropic's structured output), else as the text."""
    prompt = str(body["messages"][-1]["content"])
    if not prompt.startswith("JSON "):
        return Fault.ok()
    text = prompt.removeprefix("JSON ")
    forced = body.get("tool_choice")
    if isinstance(forced, dict) and forced.get("type") == "tool":
        return Fault.tool_calls_answer((forced["name"], json.loads(text)))
    return Fault.ok(text)


def _synthetic(position: int, body: dict[str, Any]) -> RecordedRequest:
    return RecordedRequest(position, 0.0, "POST", "", {}, b"", body, 0)


async def _send(
    conn: h11.Connection,
    stream: anyio.abc.SocketStream,
    code: int,
    body: bytes,
    extra: list[tuple[str, str]],
) -> bool:
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), *extra]
    await stream.send(conn.send(h11.Response(status_code=code, headers=headers)))
    await stream.send(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    return True


@asynccontextmanager
async def serve_fake_batches(port: int = 0) -> AsyncIterator[FakeBatchServer]:
    """Serve on ``127.0.0.1:port`` (0: any free port) for the life of the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    async with listener, anyio.create_task_group() as tg:
        server = FakeBatchServer(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, server.handle, tg)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@contextmanager
def fake_batch_server_in_thread(backend: str = "asyncio") -> Iterator[FakeBatchServer]:
    """The server in a thread with its own event loop, for tests that run the CLI."""
    with (
        anyio.from_thread.start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(serve_fake_batches()) as server,
    ):
        yield server


async def _serve_forever(port: int, advance_on_poll: bool) -> None:
    async with serve_fake_batches(port) as server:
        server.advance_on_poll = advance_on_poll
        print(server.base_url, flush=True)
        await anyio.sleep_forever()


def main() -> None:
    """``python tests/support/fake_batch_server.py [--port N] [--advance-on-poll]``: serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--advance-on-poll", action="store_true", help="move a batch one step per poll"
    )
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        anyio.run(_serve_forever, args.port, args.advance_on_poll, backend=args.backend)


if __name__ == "__main__":
    main()
