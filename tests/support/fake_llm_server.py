"""A fake LLM server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats.

A real HTTP/1.1 server (anyio sockets and h11), so the providers' whole stack runs:
connection pool, keep-alive, timeouts, dropped connections. It runs in the caller's event
loop, on asyncio and trio alike::

    async with serve_fake_llm() as server:
        server.add_faults(Fault.status(429, retry_after_ms="200"))
        async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as p:
            ...
        server.requests  # every request: time received, headers, JSON body

``POST .../chat/completions`` answers as OpenAI, ``POST .../messages`` as Anthropic, with
``"echo: <last message>"``. Each request takes the next queued :class:`Fault`, else asks
``server.fault_for(request)``, else succeeds.

``server.limit = ServerLimit(requests_per_minute=600)`` makes it enforce a per-key rate
limit as OpenAI and Anthropic do (token buckets refilled evenly, whole in a minute): each
answer carries the limit headers in the wire's format, and a request over the limit gets
a real 429 with the real wait. ``server.overload_after = 20`` instead answers 429, with
no headers and no ``Retry-After``, to any request that finds 20 already in flight (a
vLLM-like server). ``server.refuse_at_random(share_429=0.3, share_503=0.15)`` refuses
that share of requests whatever the load (seeded, with ``Retry-After: 1``): a proxy in
front of a pool, a chaos layer. From sync code (a CLI test running a
subprocess) use :func:`fake_llm_server_in_thread`; from a shell, ``python
tests/support/fake_llm_server.py [--port N] [--latency S [--spread F]]`` prints the base URL and
serves until killed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import attrs
import h11
from anyio.streams.tls import TLSListener

__all__ = [
    "FakeLLMServer",
    "Fault",
    "RecordedRequest",
    "ServerLimit",
    "fake_llm_server_in_thread",
    "serve_fake_llm",
]

_STREAM_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)

WAIT_LIMIT = 30.0
"""Seconds the ``wait_for_*`` helpers wait before they fail the test: a bug must fail
one test with a message, never hang the suite."""

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@attrs.frozen
class Fault:
    """What the server does with one request. Build one with the class methods."""

    kind: str = "ok"
    code: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    message: str = ""
    error_type: str | None = None
    content: str | None = None
    gate: anyio.Event | None = attrs.field(default=None, eq=False)
    """When set, the server waits for this event before answering."""
    tool_calls: tuple[tuple[str, str], ...] = ()
    """``(name, arguments JSON)`` of the tool calls a normal answer makes."""
    cached_tokens: int = 0
    """Prompt tokens a normal answer reports as read from the provider's cache."""
    events: int = 0
    """For the stream faults: how many events are sent before the fault."""

    @classmethod
    def ok(
        cls,
        content: str | None = None,
        *,
        gate: anyio.Event | None = None,
        cached_tokens: int = 0,
    ) -> Fault:
        """A normal answer (``content``, or the echo of the last message)."""
        return cls("ok", content=content, gate=gate, cached_tokens=cached_tokens)

    @classmethod
    def tool_calls_answer(cls, *calls: tuple[str, Mapping[str, Any]], content: str = "") -> Fault:
        """An answer that calls tools: ``("get_weather", {"city": "Paris"})`` each.

        OpenAI's shape (``message.tool_calls``, ``finish_reason: tool_calls``) or
        Anthropic's (``tool_use`` blocks, ``stop_reason: tool_use``), by the endpoint.
        """
        wire = tuple((name, json.dumps(arguments)) for name, arguments in calls)
        return cls("ok", content=content, tool_calls=wire)

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
        error_type: str | None = None,
        gate: anyio.Event | None = None,
    ) -> Fault:
        """An error status with the provider's error body.

        ``{api_key}`` in ``message`` is replaced by the key the request carried (to test
        that clients redact a server that echoes it).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = retry_after
        if retry_after_ms is not None:
            extra["retry-after-ms"] = retry_after_ms
        return cls(
            "status",
            code=code,
            headers=tuple(extra.items()),
            message=message if message is not None else f"injected error {code}",
            error_type=error_type,
            gate=gate,
        )

    @classmethod
    def stream_cut(cls, events: int, content: str | None = None) -> Fault:
        """A streamed answer whose body ends cleanly after ``events`` events, before the
        terminal one (OpenAI's ``[DONE]``, Anthropic's ``message_stop``)."""
        return cls("stream_cut", content=content, events=events)

    @classmethod
    def stream_drop(cls, events: int, content: str | None = None) -> Fault:
        """A streamed answer whose connection closes after ``events`` events, mid-body."""
        return cls("stream_drop", content=content, events=events)

    @classmethod
    def stream_error(cls, events: int, error_type: str = "overloaded_error") -> Fault:
        """A streamed answer that sends an error event after ``events`` events."""
        return cls("stream_error", events=events, error_type=error_type)

    @classmethod
    def stream_stall(cls, events: int) -> Fault:
        """A streamed answer that sends ``events`` events, then nothing until the client
        gives up."""
        return cls("stream_stall", events=events)

    @classmethod
    def drop(cls) -> Fault:
        """Send the status line, headers and half the body, then close the connection."""
        return cls("drop")

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without answering."""
        return cls("disconnect")

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; the connection closes when the client gives up."""
        return cls("hang")

    @classmethod
    def stall(cls) -> Fault:
        """Send the headers and half the body, then nothing more until the client gives up."""
        return cls("stall")

    @classmethod
    def malformed_json(cls) -> Fault:
        """A 200 whose body is not JSON."""
        return cls("malformed")

    @classmethod
    def missing_fields(cls) -> Fault:
        """A 200 with well-formed JSON that lacks the answer (no choices / no content)."""
        return cls("missing_fields")


@attrs.frozen
class ServerLimit:
    """A per-key rate limit the server enforces, with token buckets refilled evenly.

    Each bucket holds ``burst`` seconds of its rate (60: a whole minute, as the APIs
    document; 1: a limit "enforced over shorter spans") and starts ``initial`` full. A
    request costs one request and, for tokens, its prompt's tokens plus ``max_tokens``
    (as OpenAI counts at admission; the answer's length without it). ``headers``:
    ``"auto"`` sends the wire's own format (OpenAI or Anthropic), ``"openai"`` or
    ``"anthropic"`` forces one, None sends none. A refused request gets 429 with
    ``retry-after`` (and ``retry-after-ms``) saying when the bucket allows it, unless
    ``retry_after`` is False.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst: float = 60.0
    initial: float = 1.0
    headers: str | None = "auto"
    retry_after: bool = True


class _ServerBucket:
    __slots__ = ("at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at


@attrs.frozen
class RecordedRequest:
    """One request as the server received it."""

    index: int
    time: float
    """``anyio.current_time()`` when the whole request had arrived."""
    method: str
    path: str
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes
    json: Any
    """The parsed body, or None if it was not JSON."""
    connection: int
    """Which connection it came on (0, 1, ... in order of opening)."""

    @property
    def prompt(self) -> str:
        """The content of the last message sent (how tests tell tasks apart)."""
        try:
            return str(self.json["messages"][-1]["content"])
        except (KeyError, IndexError, TypeError):
            return ""

    @property
    def api_key(self) -> str:
        """The key the request carried (``x-api-key`` or ``Authorization: Bearer``)."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or bearer.removeprefix("Bearer ")


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _cost_in_tokens(request: RecordedRequest) -> int:
    """What a request counts against a tokens-per-minute limit when it arrives."""
    payload = request.json if isinstance(request.json, dict) else {}
    messages = payload.get("messages") or []
    prompt = sum(_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    limit = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if isinstance(limit, int):
        return prompt + limit
    return prompt + _tokens("echo: " + request.prompt)


def go_duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes a reset: ``8ms``, ``1.5s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def rfc3339_after(seconds: float) -> str:
    """The wall-clock time ``seconds`` from now, as Anthropic writes a reset (RFC 3339)."""
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeLLMServer:
    """The running server: its addresses, its fault plan, and what it has received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.set_base_url(f"http://127.0.0.1:{port}")
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self.fault_for: Callable[[RecordedRequest], Fault | None] | None = None
        self.latency = 0.0
        """Seconds every normal answer waits before it is sent (a model thinking)."""
        self.latency_spread = 0.0
        """Each wait is ``latency`` times a random factor in ``1 +/- latency_spread``."""
        self._random = random.Random(0)
        self.limit: ServerLimit | None = None
        """A per-key rate limit to enforce (see :class:`ServerLimit`); change it any time."""
        self.overload_after: int | None = None
        """Answer 429 (no headers, no Retry-After) to a request finding this many in flight."""
        self._refusals: tuple[float, float, str, random.Random] | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.in_flight_seen: list[int] = []
        """For each request, in arrival order, how many were in flight with it (itself
        included): the concurrency the server saw."""
        self.limited: list[RecordedRequest] = []
        """Requests the limit or ``overload_after`` refused with a 429 (and those
        :meth:`refuse_at_random` refused)."""
        self._buckets: dict[tuple[str, str], _ServerBucket] = {}
        self.connections_opened = 0
        self.open_connections = 0
        self.peak_connections = 0
        self._arrived = anyio.Event()
        self._idle: set[anyio.abc.ByteStream] = set()
        self._live: set[anyio.abc.ByteStream] = set()
        """Connections whose handler still runs (``open_connections`` of them)."""

    def set_base_url(self, base_url: str) -> None:
        """Where clients reach the server (and the OpenAI and Anthropic URLs under it)."""
        self.base_url = base_url
        self.openai_base_url = base_url + "/v1"
        self.anthropic_base_url = base_url

    async def close_idle_connections(self) -> None:
        """Once every open connection waits for its next request, close them all, as a
        server whose keep-alive timeout ran out does; return once each has closed."""
        await self._until(
            lambda: len(self._idle) >= self.open_connections, "every open connection to be idle"
        )
        closing = list(self._idle)
        for stream in closing:
            await anyio.aclose_forcefully(stream)
        await self._until(
            lambda: self._live.isdisjoint(closing), "the idle connections it closed to end"
        )

    def __repr__(self) -> str:
        return f"FakeLLMServer({self.base_url!r}, requests={len(self.requests)})"

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults: the next requests, in arrival order, get one each."""
        self.faults.extend(faults)

    def refuse_at_random(
        self,
        *,
        share_429: float = 0.3,
        share_503: float = 0.15,
        retry_after: str = "1",
        seed: int = 0,
    ) -> None:
        """Refuse about ``share_429`` of requests with 429 and ``share_503`` with 503,
        each with ``Retry-After: retry_after``, at random (seeded) whatever the load.

        Faults queued and ``fault_for`` come first; ``overload_after`` and ``limit`` still
        apply to the requests not refused.
        """
        if not (share_429 >= 0 and share_503 >= 0 and share_429 + share_503 <= 1):
            raise ValueError(f"shares {share_429!r} + {share_503!r} must lie in [0, 1]")
        self._refusals = (share_429, share_503, retry_after, random.Random(seed))

    def requests_for(self, prompt: str) -> list[RecordedRequest]:
        """The requests whose last message was ``prompt`` (the attempts of one task)."""
        return [r for r in self.requests if r.prompt == prompt]

    def gaps(self, prompt: str) -> list[float]:
        """Seconds between consecutive attempts of one task, as the server saw them."""
        times = [r.time for r in self.requests_for(prompt)]
        return [b - a for a, b in itertools.pairwise(times)]

    async def wait_for_requests(self, count: int) -> None:
        """Return once at least ``count`` requests have arrived."""
        await self._until(lambda: len(self.requests) >= count, f"{count} requests")

    async def wait_for_no_connections(self) -> None:
        """Return once every client connection has closed."""
        await self._until(lambda: not self.open_connections, "every connection to close")

    async def _until(self, ready: Callable[[], bool], what: str) -> None:
        """Wait until ``ready()``; fail (never hang) after :data:`WAIT_LIMIT` seconds."""
        try:
            with anyio.fail_after(WAIT_LIMIT):
                while not ready():
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"the fake LLM server waited {WAIT_LIMIT:g} s for {what}: "
                f"{len(self.requests)} requests, {self.in_flight} in flight, "
                f"{self.open_connections} connections open ({len(self._idle)} idle), "
                f"{self.connections_opened} opened"
            ) from None

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    # -- connections -------------------------------------------------------------------

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        connection = self.connections_opened
        self.connections_opened += 1
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        self._live.add(stream)
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    self._idle.add(stream)
                    self._notify()
                    try:
                        received = await _read_request(conn, stream)
                    finally:
                        self._idle.discard(stream)
                    if received is None:
                        return
                    request = self._record(*received, connection)
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    self.in_flight_seen.append(self.in_flight)
                    try:
                        fault = self._choose(request)
                        keep = await self._respond(conn, stream, request, fault)
                    finally:
                        self.in_flight -= 1
                    if not keep:
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except (*_STREAM_GONE, h11.ProtocolError, ssl.SSLError, OSError):
            return  # the client went away mid-exchange
        finally:
            self.open_connections -= 1
            self._live.discard(stream)
            self._notify()

    def _record(self, request: h11.Request, body: bytes, connection: int) -> RecordedRequest:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            index=len(self.requests),
            time=anyio.current_time(),
            method=request.method.decode(),
            path=request.target.decode(),
            headers={k.decode().lower(): v.decode() for k, v in request.headers},
            body=body,
            json=parsed,
            connection=connection,
        )
        self.requests.append(recorded)
        self._notify()
        return recorded

    def _choose(self, request: RecordedRequest) -> Fault:
        if self.faults:
            return self.faults.popleft()
        if self.fault_for is not None:
            fault = self.fault_for(request)
            if fault is not None:
                return fault
        if self._refusals is not None:
            share_429, share_503, retry_after, chance = self._refusals
            draw = chance.random()
            if draw < share_429 + share_503:
                code = 429 if draw < share_429 else 503
                self.limited.append(request)
                return Fault.status(code, retry_after=retry_after, message="try again later")
        if self.overload_after is not None and self.in_flight > self.overload_after:
            self.limited.append(request)
            return Fault.status(429, message="server overloaded, try again later")
        if self.limit is not None:
            return self._limited(request, self.limit)
        return Fault.ok()

    # -- the per-key rate limit ----------------------------------------------------------

    def _limited(self, request: RecordedRequest, limit: ServerLimit) -> Fault:
        """Admit ``request`` against its key's buckets: an answer, or a 429 with the wait."""
        now = anyio.current_time()
        wire = _wire_format(request.path) or "openai"
        costs = [("requests", limit.requests_per_minute, 1.0)]
        if limit.tokens_per_minute is not None:
            costs.append(("tokens", limit.tokens_per_minute, float(_cost_in_tokens(request))))
        wait = 0.0
        states = []
        for kind, per_minute, cost in costs:
            if per_minute is None:
                continue
            rate, capacity = per_minute / 60, per_minute / 60 * limit.burst
            bucket = self._buckets.get((request.api_key, kind))
            if bucket is None:
                bucket = _ServerBucket(capacity * limit.initial, now)
                self._buckets[request.api_key, kind] = bucket
            bucket.level = min(capacity, bucket.level + rate * (now - bucket.at))
            bucket.at = now
            need = min(cost, capacity)
            if bucket.level < need:
                wait = max(wait, (need - bucket.level) / rate)
            states.append((kind, per_minute, rate, capacity, cost, bucket))
        if wait <= 0:
            for _, _, _, _, cost, bucket in states:
                bucket.level -= cost
        headers: dict[str, str] = {}
        style = wire if limit.headers == "auto" else limit.headers
        for kind, per_minute, rate, capacity, _, bucket in states:
            remaining = max(0, math.floor(bucket.level))
            reset = max(0.0, (capacity - bucket.level) / rate)
            if style == "openai":
                headers[f"x-ratelimit-limit-{kind}"] = str(round(per_minute))
                headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
            elif style == "anthropic":
                prefix = f"anthropic-ratelimit-{kind}-"
                headers[prefix + "limit"] = str(round(per_minute))
                headers[prefix + "remaining"] = str(remaining)
                headers[prefix + "reset"] = rfc3339_after(reset)
        if wait <= 0:
            return Fault("ok", headers=tuple(headers.items()))
        self.limited.append(request)
        if limit.retry_after:
            headers["retry-after"] = str(math.ceil(wait))  # whole seconds, as RFC 9110 has it
            headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return Fault.status(429, headers=headers, message="rate limit reached for requests")

    async def _respond(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        request: RecordedRequest,
        fault: Fault,
    ) -> bool:
        """Answer ``request`` as ``fault`` says; False when the connection must close."""
        if fault.gate is not None:
            await fault.gate.wait()
        wire = _wire_format(request.path)
        request_id_header = "request-id" if wire == "anthropic" else "x-request-id"
        headers = [
            ("content-type", "application/json"),
            (request_id_header, f"req_{request.index}"),
        ]
        kind = fault.kind
        if kind == "disconnect":
            return False
        if kind == "hang":
            await _wait_for_close(stream)
            return False
        code = 200
        if wire is None:
            code, body = 404, _error_body(None, 404, "no such endpoint", None)
        elif kind == "status":
            code = fault.code
            message = fault.message.replace("{api_key}", request.api_key)
            body = _error_body(wire, code, message, fault.error_type)
            headers.extend(fault.headers)
        elif kind == "malformed":
            body = b'{"choices": [{"message": '
        elif kind == "missing_fields":
            shell = {"id": f"x_{request.index}", "model": "fake"}
            body = json.dumps(shell).encode()
        elif request.json is None:
            code, body = 400, _error_body(wire, 400, "the body is not JSON", None)
        elif (problem := _tool_flow_problem(wire, request.json)) is not None:
            code, body = 400, _error_body(wire, 400, problem, None)
        elif request.json.get("stream") is True:
            return await self._stream(conn, stream, wire, request, fault, headers)
        else:
            headers.extend(fault.headers)
            if self.latency:
                spread = self.latency_spread
                await anyio.sleep(self.latency * self._random.uniform(1 - spread, 1 + spread))
            body = _answer(wire, request, fault)
        headers.append(("content-length", str(len(body))))
        await stream.send(conn.send(h11.Response(status_code=code, headers=headers)))
        if kind in ("drop", "stall"):
            await stream.send(conn.send(h11.Data(data=body[: len(body) // 2])))
            if kind == "stall":
                await _wait_for_close(stream)
            return False
        await stream.send(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        return True

    async def _stream(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        wire: str,
        request: RecordedRequest,
        fault: Fault,
        headers: list[tuple[str, str]],
    ) -> bool:
        """Answer as server-sent events (chunked), each event sent in two writes so a
        client meets events split across reads. False when the connection must close."""
        headers[0] = ("content-type", "text/event-stream; charset=utf-8")
        await stream.send(conn.send(h11.Response(status_code=200, headers=headers)))
        events = _stream_events(wire, request, fault)
        kind = fault.kind
        if kind != "ok":
            events = events[: fault.events]
        for event in events:
            if self.latency:
                await anyio.sleep(self.latency / max(len(events), 1))
            half = len(event) // 2
            await stream.send(conn.send(h11.Data(data=event[:half])))
            await stream.send(conn.send(h11.Data(data=event[half:])))
        if kind == "stream_error":
            error = json.loads(_error_body(wire, 529, "Overloaded", fault.error_type))
            await stream.send(conn.send(h11.Data(data=_sse(error, "error", wire))))
        if kind == "stream_drop":
            return False
        if kind == "stream_stall":
            await _wait_for_close(stream)
            return False
        await stream.send(conn.send(h11.EndOfMessage()))
        return True


async def _wait_for_close(stream: anyio.abc.ByteStream) -> None:
    """Read and ignore until the client closes the connection."""
    try:
        while await stream.receive():
            pass
    except _STREAM_GONE:
        pass


async def _next_event(conn: h11.Connection, stream: anyio.abc.ByteStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive()
        except _STREAM_GONE:
            data = b""
        conn.receive_data(data)


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.ByteStream
) -> tuple[h11.Request, bytes] | None:
    event = await _next_event(conn, stream)
    if not isinstance(event, h11.Request):
        return None
    chunks = []
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            chunks.append(bytes(part.data))
        elif isinstance(part, h11.EndOfMessage):
            return event, b"".join(chunks)
        else:
            return None


def _wire_format(path: str) -> str | None:
    path = path.split("?", 1)[0]
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/messages"):
        return "anthropic"
    return None


def _error_body(wire: str | None, code: int, message: str, error_type: str | None) -> bytes:
    if wire == "anthropic":
        kind = error_type or _ANTHROPIC_ERROR_TYPES.get(code, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    kind = error_type or _OPENAI_ERROR_TYPES.get(code, "server_error")
    error = {"message": message, "type": kind, "param": None, "code": None}
    return json.dumps({"error": error}).encode()


def _tool_flow_problem(wire: str, payload: Any) -> str | None:
    """Why the API would refuse this conversation's tool calls and results, or None.

    As the real APIs do: every tool result answers a tool call made earlier (Anthropic:
    in the assistant turn just before it), and Anthropic's tool_use input is an object.
    """
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list):
        return None
    called: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{index}: not an object"
        role, content = message.get("role"), message.get("content")
        if wire == "openai":
            for call in message.get("tool_calls") or []:
                called.add(call["id"])
                if not isinstance(call["function"]["arguments"], str):
                    return f"messages.{index}.tool_calls: arguments must be a string"
            if role == "tool" and message.get("tool_call_id") not in called:
                return (
                    f"messages.{index}: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'"
                )
            continue
        blocks = content if isinstance(content, list) else []
        if role == "assistant":
            called = set()
            for block in blocks:
                if block.get("type") == "tool_use":
                    if not isinstance(block.get("input"), dict):
                        return f"messages.{index}: tool_use.input: Input should be an object"
                    called.add(block["id"])
        elif role == "user":
            for block in blocks:
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in called:
                    return (
                        f"messages.{index}: unexpected tool_use_id found in tool_result "
                        "blocks; each tool_result must have a tool_use block before it"
                    )
            called = set()
    return None


def _answer(wire: str, request: RecordedRequest, fault: Fault) -> bytes:
    text = fault.content if fault.content is not None else "echo: " + request.prompt
    payload = request.json
    model = payload.get("model", "fake-model") if isinstance(payload, dict) else "fake-model"
    prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in payload.get("messages", []))
    cached = min(fault.cached_tokens, prompt_tokens)
    calls = [
        (f"call_{request.index}_{i}", name, arguments)
        for i, (name, arguments) in enumerate(fault.tool_calls)
    ]
    if wire == "anthropic":
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
        blocks += [
            {"type": "tool_use", "id": "tool" + call_id, "name": name, "input": json.loads(args)}
            for call_id, name, args in calls
        ]
        usage = {"input_tokens": prompt_tokens - cached, "output_tokens": _tokens(text)}
        if cached:
            usage["cache_read_input_tokens"] = cached
        answer: dict[str, Any] = {
            "id": f"msg_{request.index}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": "tool_use" if calls else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    else:
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                for call_id, name, args in calls
            ]
        answer = {
            "id": f"chatcmpl-{request.index}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": _tokens(text),
                "total_tokens": prompt_tokens + _tokens(text),
            },
        }
        if cached:
            answer["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
    return json.dumps(answer).encode()


def _sse(data: Any, event: str, wire: str) -> bytes:
    """One server-sent event: Anthropic names each event, OpenAI sends data only."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if wire == "anthropic" else ""
    return f"{head}data: {text}\n\n".encode()


def _pieces(text: str) -> list[str]:
    """``text`` cut into word-sized deltas (spaces kept), as a model streams it."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if text else []


def _stream_events(wire: str, request: RecordedRequest, fault: Fault) -> list[bytes]:
    """The events of a streamed answer, the terminal one last, from the whole answer."""
    whole = json.loads(_answer(wire, request, fault))
    if wire == "anthropic":
        start = {k: v for k, v in whole.items() if k not in ("content", "usage")}
        start |= {"content": [], "stop_reason": None}
        start["usage"] = {**whole["usage"], "output_tokens": 1}
        events = [_sse({"type": "message_start", "message": start}, "message_start", wire)]
        events.append(_sse({"type": "ping"}, "ping", wire))
        for index, block in enumerate(whole["content"]):
            if block["type"] == "text":
                opened = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": t} for t in _pieces(block["text"])]
            else:
                opened = {**block, "input": {}}
                arguments = json.dumps(block["input"])
                half = len(arguments) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": part}
                    for part in (arguments[:half], arguments[half:])
                ]
            events.append(
                _sse(
                    {"type": "content_block_start", "index": index, "content_block": opened},
                    "content_block_start",
                    wire,
                )
            )
            events += [
                _sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    "content_block_delta",
                    wire,
                )
                for delta in deltas
            ]
            events.append(
                _sse({"type": "content_block_stop", "index": index}, "content_block_stop", wire)
            )
        stop = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
        usage = {"output_tokens": whole["usage"]["output_tokens"]}
        events.append(
            _sse({"type": "message_delta", "delta": stop, "usage": usage}, "message_delta", wire)
        )
        events.append(_sse({"type": "message_stop"}, "message_stop", wire))
        return events
    head = {k: whole[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    message = whole["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**head, "choices": [choice]}, "message", wire)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": t}) for t in _pieces(message["content"] or "")]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        opened = {"index": index, "id": call["id"], "type": "function"}
        events.append(chunk({"tool_calls": [opened | {"function": {"name": function["name"]}}]}))
        half = len(function["arguments"]) // 2
        for part in (function["arguments"][:half], function["arguments"][half:]):
            events.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            )
    events.append(chunk({}, whole["choices"][0]["finish_reason"]))
    options = request.json.get("stream_options") or {}
    if options.get("include_usage"):
        events.append(_sse({**head, "choices": [], "usage": whole["usage"]}, "message", wire))
    events.append(_sse("[DONE]", "message", wire))
    return events


@asynccontextmanager
async def serve_fake_llm(
    port: int = 0, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FakeLLMServer]:
    """Serve on ``127.0.0.1:port`` (0: any free port) for the life of the block.

    With ``ssl_context`` it speaks HTTPS (its URLs say ``https://localhost``). Leaving the
    block closes the listener and every connection still open.
    """
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    listener: anyio.abc.Listener[Any] = tcp
    if ssl_context is not None:
        listener = TLSListener(tcp, ssl_context, standard_compatible=False)
    async with listener, anyio.create_task_group() as tg:
        server = FakeLLMServer(tcp.extra(anyio.abc.SocketAttribute.local_port))
        if ssl_context is not None:
            server.set_base_url(f"https://localhost:{server.port}")
        tg.start_soon(listener.serve, server.handle, tg)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@contextmanager
def fake_llm_server_in_thread(backend: str = "asyncio") -> Iterator[FakeLLMServer]:
    """Run the server in a thread with its own event loop, for sync tests and subprocesses.

    Set faults before the requests that should meet them; ``gate`` events do not work
    across threads.
    """
    with (
        anyio.from_thread.start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(serve_fake_llm()) as server,
    ):
        yield server


async def _serve_forever(port: int, latency: float, spread: float) -> None:
    async with serve_fake_llm(port) as server:
        server.latency, server.latency_spread = latency, spread
        print(server.base_url, flush=True)
        await anyio.sleep_forever()


def main() -> None:
    """``python tests/support/fake_llm_server.py [--port N] [--latency S]``: serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("--spread", type=float, default=0.0, help="latency * (1 +/- spread)")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        anyio.run(_serve_forever, args.port, args.latency, args.spread, backend=args.backend)


if __name__ == "__main__":
    main()
