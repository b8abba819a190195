"""HTTP/1.1 over anyio streams: the connection pool the HTTP providers use by default.

Why not httpx's own pool: httpcore rescans every connection on each request and each
release, so a request's cost grows with the number in flight (48 ms of client CPU per
request at 500 in flight, against aiohttp's 0.36 ms; see docs/benchmarks.md). Here a pool
is a free list: reusing a connection pops one, releasing pushes it back, both O(1).
Responses are parsed by httptools (llhttp, the C parser uvicorn uses): 1.5 us per
response against h11's 46 us on this machine, and h11 still cost 0.31 ms per request
end to end where httptools cost 0.15 ms (docs/benchmarks.md, "Why this transport").

What a request gets, in order: a connection (an idle one, checked with a zero-time poll
for a server that closed it while idle, else a new one up to ``max_connections``, else
a wait for one to be released), the request written, the response read. One cancel
scope spans it all; its deadline moves per phase (pool, connect, write, each read) and
never passes the attempt's total deadline (on an idle connection a small request starts
with the read deadline set: one timer per request). A request that failed to be written on a
reused connection never reached the server and is sent again on a new one; once it has
been written, a failure is reported (the server may have acted on it).

Cancellation closes the request's connection at once (``aclose_forcefully``): a pool
never holds a connection in an unknown state.

:class:`~._httpx.HTTPXTransport` serves the same calls over an ``httpx.AsyncClient``: the
one a user passes as ``http_client=``, or ours when an environment proxy applies to the
address (httpx speaks HTTP and SOCKS proxies; this module does not).
"""

from __future__ import annotations

import enum
import functools
import math
import os
import select
import ssl
import urllib.request
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import anyio
import anyio.abc
import attrs
import httptools
import httpx
from anyio.abc import SocketAttribute

_READ_SIZE = 65536
_HEADERS, _CHUNK, _END = range(3)  # how far Pool._read reads
_SMALL_WRITE = 65536  # a request this small goes into the socket buffer without waiting
_KEEPALIVE_EXPIRY = 5.0  # httpx's default: servers commonly drop idle connections at 5 s+
_STREAM_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


# -- values ------------------------------------------------------------------------------


@attrs.frozen
class Timeouts:
    """Seconds each phase of an attempt may take; ``math.inf`` for no limit.

    ``read`` bounds each wait for bytes from the server, ``total`` the whole attempt,
    from asking for a connection to the last byte of the response.
    """

    connect: float
    read: float
    write: float
    pool: float
    total: float

    @classmethod
    def from_httpx(cls, timeout: httpx.Timeout, total: float | None) -> Timeouts:
        """Our timeouts from an ``httpx.Timeout`` (None meaning no limit) and a total."""

        def seconds(value: float | None) -> float:
            return math.inf if value is None else float(value)

        return cls(
            connect=seconds(timeout.connect),
            read=seconds(timeout.read),
            write=seconds(timeout.write),
            pool=seconds(timeout.pool),
            total=seconds(total),
        )

    def of(self, phase: Phase) -> float:
        """The limit for ``phase``."""
        return {
            Phase.POOL: self.pool,
            Phase.CONNECT: self.connect,
            Phase.WRITE: self.write,
            Phase.READ: self.read,
        }.get(phase, self.total)

    def as_httpx(self) -> httpx.Timeout:
        """The same per-phase limits as an ``httpx.Timeout``."""

        def value(seconds: float) -> float | None:
            return None if math.isinf(seconds) else seconds

        return httpx.Timeout(
            connect=value(self.connect),
            read=value(self.read),
            write=value(self.write),
            pool=value(self.pool),
        )


@attrs.frozen
class Response:
    """A whole response: status, reason phrase, headers (names in lower case) and body.

    The body is decoded (gzip, deflate) and at most the ``max_bytes`` the request allowed.
    """

    status: int
    reason: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def status_code(self) -> int:
        """The status, under httpx's name."""
        return self.status

    @property
    def reason_phrase(self) -> str:
        """The reason phrase, under httpx's name."""
        return self.reason


class Phase(enum.Enum):
    """Where an attempt was when it failed."""

    POOL = "pool"
    CONNECT = "connect"
    WRITE = "write"
    READ = "read"
    TOTAL = "total"


class TransportError(Exception):
    """A request got no usable response. ``detail`` is the underlying cause, as text."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConnectFailed(TransportError):
    """The connection could not be opened (refused, no such host, TLS refused)."""

    def __init__(self, detail: str, *, tls: bool = False) -> None:
        super().__init__(detail)
        self.tls = tls


class Dropped(TransportError):
    """The connection broke, or the response was not HTTP, after the request may have left."""


class Refused(TransportError):
    """Our side cannot form the request (a bad header, an unsupported URL)."""


class Timeout(TransportError):
    """A phase (or the whole attempt) ran out of time."""

    def __init__(self, phase: Phase, seconds: float) -> None:
        super().__init__(f"{phase.value} timeout after {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class TooLarge(TransportError):
    """The response body (after decompression) passed the request's ``max_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is larger than {limit} bytes")
        self.limit = limit


class StreamResponse(Protocol):
    """A response whose body is read chunk by chunk (``async for chunk in response``)."""

    status: int
    reason: str
    headers: Mapping[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def read(self) -> bytes:
        """The rest of the body (bounded by the request's ``max_bytes``)."""
        ...


class Transport(Protocol):
    """What a provider needs from an HTTP client: one origin, a fixed set of headers."""

    async def send(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts,
        max_bytes: int,
    ) -> Response:
        """Send one request to ``target`` (a path); return the whole response.

        Raises :class:`TransportError` subclasses; cancellation closes the connection.
        """
        ...

    def stream(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts,
        max_bytes: int,
    ) -> AbstractAsyncContextManager[StreamResponse]:
        """An async context manager yielding a :class:`StreamResponse` once headers arrive.

        Leaving it returns the connection to the pool when the body was read to its end,
        and closes it otherwise (a break, an error, a cancellation).
        """
        ...

    async def aclose(self) -> None:
        """Close every connection; later requests raise ``TransportError``."""
        ...


# -- TLS, proxies, origins ---------------------------------------------------------------


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once.

    Loading the CA bundle costs ~20 ms, so every provider shares one context.
    """
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def ssl_context(verify: bool | str | ssl.SSLContext) -> ssl.SSLContext:
    """The TLS context for ``verify``: True (the default CAs), a CA file or directory, a
    context of your own, or False (no verification: for a throwaway local server only)."""
    if verify is True:
        return default_ssl_context()
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``...) sets for
    ``url``, as httpx with ``trust_env`` would use it; None for a direct connection."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


@attrs.frozen
class Origin:
    """Where requests go: scheme, host and port, and the ``host`` header for them."""

    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        """The origin of an http(s) URL."""
        default = 443 if url.scheme == "https" else 80
        port = url.port or default
        host = url.host
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(scheme=url.scheme, host=host, port=port, host_header=header)

    @property
    def tls(self) -> bool:
        """Whether connections speak TLS."""
        return self.scheme == "https"

    @property
    def url(self) -> str:
        """``scheme://host[:port]``."""
        return f"{self.scheme}://{self.host_header}"


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


# -- one exchange's parser state ---------------------------------------------------------


class _Decoder:
    """A gzip or deflate body, decompressed chunk by chunk, never past ``max_bytes``."""

    __slots__ = ("_inner", "_raw_deflate")

    def __init__(self, encoding: str) -> None:
        self._raw_deflate = encoding == "deflate"
        wbits = zlib.MAX_WBITS | 16 if encoding != "deflate" else zlib.MAX_WBITS
        self._inner = zlib.decompressobj(wbits)

    def decode(self, data: bytes, room: int) -> bytes:
        try:
            return self._inner.decompress(data, room + 1)
        except zlib.error:
            if not self._raw_deflate:
                raise
            # Some servers send raw deflate under "deflate" (httpx reads both too).
            self._raw_deflate = False
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inner.decompress(data, room + 1)


class _Exchange:
    """httptools callbacks for one response: status, headers, body chunks, completion."""

    __slots__ = (
        "chunks",
        "complete",
        "decoder",
        "error",
        "headers",
        "headers_done",
        "keep_alive",
        "length_known",
        "max_bytes",
        "messages",
        "parser",
        "reason",
        "size",
        "status",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.decoder: _Decoder | None = None
        self.error: TransportError | None = None
        self.length_known = False
        self.messages = 0
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        if self.parser is not None:
            self.status = self.parser.get_status_code()
        headers = self.headers
        self.length_known = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.decoder = _Decoder(encoding)
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        room = self.max_bytes - self.size
        if self.decoder is not None:
            try:
                body = self.decoder.decode(body, room)
            except zlib.error as exc:
                self.error = Dropped(f"the response body is not valid compressed data ({exc})")
                return
        self.size += len(body)
        if self.size > self.max_bytes:
            self.error = TooLarge(self.max_bytes)
            self.chunks.clear()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an informational answer (103): the real one follows
            self.reason, self.headers, self.headers_done, self.messages = "", {}, False, 0
            return
        # Asked here: llhttp forgets the connection's fate once the message is done.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()
        self.complete = True

    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks.pop()
        data = b"".join(chunks)
        chunks.clear()
        return data


def _readable(fd: int) -> bool:
    """Whether an idle connection has something to read: for HTTP/1.1, a close (or junk)."""
    try:
        poller = select.poll()
    except AttributeError:  # Windows
        return bool(select.select([fd], [], [], 0)[0])
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Connection:
    __slots__ = ("fd", "idle_since", "stream")

    def __init__(self, stream: anyio.abc.ByteStream, fd: int) -> None:
        self.stream = stream
        self.fd = fd
        self.idle_since = 0.0


class _Waiter:
    """A request waiting for a connection: handed an idle one, or leave to open one."""

    __slots__ = ("connection", "event", "gone", "slot")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.connection: _Connection | None = None
        self.slot = False
        self.gone = False


class _Attempt:
    """The state of one request while it runs: its scope, deadlines and phase.

    Moving a deadline costs a timer (re)schedule, so a request on an idle connection
    starts with the read deadline already set (``armed``): writing a small request never
    waits, and the first read uses it as is.
    """

    __slots__ = ("armed", "end", "phase", "scope", "timeouts")

    def __init__(self, timeouts: Timeouts, now: float, *, reading: bool = False) -> None:
        self.timeouts = timeouts
        self.end = now + timeouts.total
        self.armed = reading
        self.phase = Phase.READ if reading else Phase.POOL
        first = timeouts.read if reading else timeouts.pool
        self.scope = anyio.CancelScope(deadline=min(self.end, now + first))

    def enter(self, phase: Phase, seconds: float) -> None:
        self.phase = phase
        self.scope.deadline = min(self.end, anyio.current_time() + seconds)

    def reading(self) -> None:
        """Before a read: the read deadline, from now (unless just set)."""
        if self.armed:
            self.armed = False
        else:
            self.enter(Phase.READ, self.timeouts.read)

    def timeout(self) -> Timeout:
        if anyio.current_time() >= self.end:
            return Timeout(Phase.TOTAL, self.timeouts.total)
        return Timeout(self.phase, self.timeouts.of(self.phase))


# -- the pool ----------------------------------------------------------------------------


class Pool:
    """Connections to one origin, for one event loop: a free list and a count.

    ``headers`` are sent with every request (host, auth, user agent...); give them
    already checked (names in lower case, values a header can carry).
    """

    def __init__(
        self,
        origin: Origin,
        headers: Mapping[str, str],
        *,
        context: ssl.SSLContext | None,
        max_connections: int,
        keepalive_expiry: float = _KEEPALIVE_EXPIRY,
    ) -> None:
        self.origin = origin
        self._headers = dict(headers)
        self._head = _encode_headers({"host": origin.host_header, **headers})
        self._context = context
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: deque[_Connection] = deque()
        self._open = 0  # connections open or opening, idle ones included
        self._waiters: deque[_Waiter] = deque()
        self._stale: list[anyio.abc.ByteStream] = []  # to close at the next await
        self._closed = False

    def __repr__(self) -> str:
        return f"Pool({self.origin.url!r}, open={self._open}, idle={len(self._idle)})"

    @property
    def open_connections(self) -> int:
        """Connections open or being opened."""
        return self._open

    def _encode(
        self, method: str, target: str, content: bytes, headers: Mapping[str, str] | None
    ) -> bytes:
        if headers:
            merged = {**self._headers, **headers}
            head = _encode_headers({"host": self.origin.host_header, **merged})
        else:
            head = self._head
        line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
        if content or method not in ("GET", "HEAD", "DELETE"):
            return b"%s%scontent-length: %d\r\n\r\n%s" % (line, head, len(content), content)
        return line + head + b"\r\n"

    # -- acquire and release -------------------------------------------------------------

    def _idle_connection(self, now: float) -> _Connection | None:
        """A healthy idle connection, or None; expired and closed ones are set aside."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if now - connection.idle_since > self._expiry:
                # The newest idle connection expired, so every older one has too.
                self._drop(connection)
                while idle:
                    self._drop(idle.popleft())
                return None
            if _readable(connection.fd):  # the server closed it while it sat idle
                self._drop(connection)
                continue
            return connection
        return None

    def _drop(self, connection: _Connection) -> None:
        self._give_back_slot()
        self._stale.append(connection.stream)

    async def _close_stale(self) -> None:
        while self._stale:
            await anyio.aclose_forcefully(self._stale.pop())

    async def _acquire(self, attempt: _Attempt) -> tuple[_Connection, bool]:
        """A connection for one request, and whether it is new (never used before)."""
        if self._stale:  # before taking a connection: a cancel here must not lose one
            await self._close_stale()
        connection = self._idle_connection(anyio.current_time())
        if connection is not None:
            return connection, False
        if self._stale:
            await self._close_stale()
        if self._closed:
            raise Refused("the provider is closed")
        if self._open >= self._max:
            waited = await self._wait()
            if waited is not None:
                return waited, False
        else:
            self._open += 1
        try:
            return await self._connect(attempt), True
        except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
            self._give_back_slot()
            raise

    async def _wait(self) -> _Connection | None:
        """Wait for a released connection (returned) or a free slot (None, already counted)."""
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
            waiter.gone = True
            if waiter.connection is not None:
                await self.release(waiter.connection)
            elif waiter.slot:
                self._give_back_slot()
            raise
        if waiter.connection is None and self._closed:
            self._give_back_slot()
            raise Refused("the provider is closed")
        return waiter.connection

    def _next_waiter(self) -> _Waiter | None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.gone:
                return waiter
        return None

    def _give_back_slot(self) -> None:
        """A connection closed (or was never opened): hand its slot to a waiter, if any."""
        waiter = self._next_waiter()
        if waiter is None:
            self._open -= 1
        else:
            waiter.slot = True
            waiter.event.set()

    async def release(self, connection: _Connection) -> None:
        """Return a connection whose exchange completed cleanly."""
        if self._closed:
            await self._discard(connection)
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.connection = connection
            waiter.event.set()
            return
        connection.idle_since = anyio.current_time()
        self._idle.append(connection)

    async def _discard(self, connection: _Connection) -> None:
        # Count first: under cancellation the await below is the last thing that runs.
        self._give_back_slot()
        await anyio.aclose_forcefully(connection.stream)

    async def _close_idle(self) -> None:
        idle = self._idle
        while idle:
            await self._discard(idle.popleft())

    async def _connect(self, attempt: _Attempt) -> _Connection:
        attempt.enter(Phase.CONNECT, attempt.timeouts.connect)
        origin = self.origin
        failure: ConnectFailed
        try:
            stream: anyio.abc.ByteStream
            if self._context is not None:
                stream = await anyio.connect_tcp(
                    origin.host,
                    origin.port,
                    ssl_context=self._context,
                    tls_hostname=origin.host,
                    tls_standard_compatible=False,  # HTTP frames its own messages
                )
            else:
                stream = await anyio.connect_tcp(origin.host, origin.port)
        except ssl.SSLCertVerificationError as exc:
            failure = ConnectFailed(f"TLS certificate verification failed: {exc}", tls=True)
        except ssl.SSLError as exc:
            failure = ConnectFailed(f"TLS handshake failed: {exc}", tls=True)
        except OSError as exc:  # refused, unreachable, no such host
            reason: BaseException = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            failure = ConnectFailed(f"{type(reason).__name__}: {reason}")
        except anyio.BrokenResourceError as exc:  # the TLS handshake broke off
            cause = exc.__cause__ or exc
            failure = ConnectFailed(f"TLS handshake failed: {cause}", tls=True)
        else:
            fd = stream.extra(SocketAttribute.raw_socket).fileno()
            return _Connection(stream, fd)
        raise failure

    async def aclose(self) -> None:
        """Close the idle connections now, and each busy one when its request ends."""
        self._closed = True
        await self._close_stale()
        await self._close_idle()
        while (waiter := self._next_waiter()) is not None:
            waiter.slot = True  # let it fail on the closed pool
            self._open += 1
            waiter.event.set()

    # -- one request ---------------------------------------------------------------------

    def _start(self, timeouts: Timeouts, data: bytes) -> tuple[_Attempt, _Connection | None]:
        """The attempt's state, and an idle connection to use if there is one at hand."""
        now = anyio.current_time()
        connection = self._idle_connection(now)
        reading = connection is not None and len(data) <= _SMALL_WRITE
        return _Attempt(timeouts, now, reading=reading), connection

    async def _exchange(
        self, attempt: _Attempt, data: bytes, max_bytes: int, connection: _Connection | None
    ) -> tuple[_Connection, _Exchange, httptools.HttpResponseParser]:
        """Send ``data`` and read up to the end of the response headers."""
        new = False
        while True:
            if connection is None:
                connection, new = await self._acquire(attempt)
                attempt.armed = False
            if not attempt.armed:
                attempt.enter(Phase.WRITE, attempt.timeouts.write)
            try:
                await connection.stream.send(data)
            except _STREAM_GONE as exc:
                await self._discard(connection)
                if not new:
                    connection = None
                    continue  # closed while idle: the request never reached the server
                raise Dropped(
                    f"the connection closed while sending ({type(exc).__name__})"
                ) from None
            except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
                await self._discard(connection)
                raise
            exchange = _Exchange(max_bytes)
            parser = httptools.HttpResponseParser(exchange)
            exchange.parser = parser
            try:
                await self._read(attempt, connection, exchange, parser, _HEADERS)
            except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
                await self._discard(connection)
                raise
            return connection, exchange, parser

    async def _read(
        self,
        attempt: _Attempt,
        connection: _Connection,
        exchange: _Exchange,
        parser: httptools.HttpResponseParser,
        until: int,
    ) -> None:
        """Read until the headers are in (``_HEADERS``), a body chunk is (``_CHUNK``), or
        the whole response is (``_END``)."""
        receive = connection.stream.receive
        while not exchange.complete:
            if until == _HEADERS and exchange.headers_done:
                return
            if until == _CHUNK and exchange.chunks:
                return
            attempt.reading()
            try:
                data = await receive(_READ_SIZE)
            except _STREAM_GONE:
                data = b""
            if not data:
                if exchange.headers_done and not exchange.length_known:
                    exchange.complete = True  # the body ends when the connection does
                    return
                raise Dropped("the server closed the connection before a complete response")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise Dropped(f"the response is not valid HTTP/1.1 ({exc})") from None
            if exchange.error is not None:
                raise exchange.error

    def _reusable(self, exchange: _Exchange, parser: httptools.HttpResponseParser) -> bool:
        return (
            exchange.complete
            and exchange.error is None
            and exchange.length_known
            and exchange.messages == 1
            and exchange.keep_alive
        )

    async def _finish(
        self,
        connection: _Connection,
        exchange: _Exchange,
        parser: httptools.HttpResponseParser,
    ) -> None:
        if self._reusable(exchange, parser):
            await self.release(connection)
        else:
            await self._discard(connection)
        if self._stale:  # idle connections found dead on the way
            await self._close_stale()

    async def send(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts,
        max_bytes: int,
    ) -> Response:
        """Send one request; return the whole response (see :class:`Transport`)."""
        data = self._encode(method, target, content, headers)
        attempt, idle = self._start(timeouts, data)
        with attempt.scope:
            connection, exchange, parser = await self._exchange(attempt, data, max_bytes, idle)
            try:
                await self._read(attempt, connection, exchange, parser, _END)
            except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
                await self._discard(connection)
                raise
            exchange.parser = None
            await self._finish(connection, exchange, parser)
            return Response(exchange.status, exchange.reason, exchange.headers, exchange.body())
        raise attempt.timeout()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts,
        max_bytes: int,
    ) -> AsyncIterator[StreamResponse]:
        """Send one request; yield the response once its headers are in (see
        :class:`Transport`). Leaving the block returns the connection to the pool when the
        body was read to its end, and closes it otherwise."""
        data = self._encode(method, target, content, headers)
        attempt, idle = self._start(timeouts, data)
        opened = None
        with attempt.scope:
            opened = await self._exchange(attempt, data, max_bytes, idle)
        if opened is None:
            raise attempt.timeout()
        connection, exchange, parser = opened
        response = _PoolStream(self, attempt, connection, exchange, parser)
        try:
            yield response
        except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
            await self._discard(connection)
            raise
        await response.finish()


class _PoolStream:
    """A response from :class:`Pool` read chunk by chunk."""

    def __init__(
        self,
        pool: Pool,
        attempt: _Attempt,
        connection: _Connection,
        exchange: _Exchange,
        parser: httptools.HttpResponseParser,
    ) -> None:
        self._pool = pool
        self._attempt = attempt
        self._connection = connection
        self._exchange = exchange
        self._parser = parser
        self.status = exchange.status
        self.reason = exchange.reason
        self.headers: Mapping[str, str] = exchange.headers

    def __aiter__(self) -> _PoolStream:
        return self

    async def __anext__(self) -> bytes:
        # A class, not an async generator: one left half-read must need no finalizer.
        while (chunk := await self._next()) is not None:
            if chunk:
                return chunk
        raise StopAsyncIteration

    async def _next(self) -> bytes | None:
        """The next chunk of the body, or None at its end."""
        exchange = self._exchange
        if not exchange.chunks and not exchange.complete:
            attempt = self._attempt
            # A scope per read: a scope must not span the caller's code between chunks.
            attempt.scope = scope = anyio.CancelScope()
            attempt.armed = False
            with scope:
                await self._pool._read(attempt, self._connection, exchange, self._parser, _CHUNK)
            if scope.cancelled_caught:
                raise attempt.timeout()
        if exchange.chunks:
            return exchange.body()
        return None

    async def read(self) -> bytes:
        """The rest of the body (bounded by the request's ``max_bytes``)."""
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def finish(self) -> None:
        """Return the connection when the body was read to its end, else close it."""
        self._exchange.parser = None
        await self._pool._finish(self._connection, self._exchange, self._parser)
