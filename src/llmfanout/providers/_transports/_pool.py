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

The pool is one of the two implementations of :class:`~._base.BaseTransport`: it opens
the exchange (``_begin``) and reads the socket for a :class:`~._base.BodyStream`
(``_PoolBody``), which owns the rest (the body, its cap, the total deadline).
:class:`~._httpx.HTTPXTransport` serves the same calls over an ``httpx.AsyncClient``: the
one a user passes as ``http_client=``, or ours when an environment proxy applies to the
address (httpx speaks HTTP and SOCKS proxies; this module does not). The response parser
is :mod:`._h1`; origins, TLS contexts and proxies are :mod:`._origin`.
"""

from __future__ import annotations

import select
import ssl
from collections import deque
from collections.abc import Mapping

import anyio
import anyio.abc
import httptools
from anyio.abc import SocketAttribute

from ._base import (
    BaseTransport,
    BodyStream,
    ConnectFailed,
    Dropped,
    HeadersTooLarge,
    Phase,
    Refused,
    Request,
    Timeout,
    Timeouts,
    TransportError,
    Unusable,
)
from ._h1 import MAX_HEAD_BYTES, Exchange, encode_headers
from ._origin import Origin

_READ_SIZE = 65536
_HEADERS, _CHUNK = range(2)  # how far Pool._read reads
_SMALL_WRITE = 65536  # a request this small goes into the socket buffer without waiting
_KEEPALIVE_EXPIRY = 5.0  # httpx's default: servers commonly drop idle connections at 5 s+
_STREAM_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


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


class Pool(BaseTransport):
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
        self._head = encode_headers({"host": origin.host_header, **headers})
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

    def _encode(self, request: Request) -> bytes:
        method, target, content, headers, _, _ = request
        if headers:
            merged = {**self._headers, **headers}
            head = encode_headers({"host": self.origin.host_header, **merged})
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

    async def _begin(self, request: Request) -> BodyStream:
        """Send one request; the response once its headers are in (see
        :class:`~._base.Transport`)."""
        data = self._encode(request)
        timeouts, max_bytes = request.timeouts, request.max_bytes
        now = anyio.current_time()
        connection = self._idle_connection(now)
        # On an idle connection a small request starts with the read deadline set.
        reading = connection is not None and len(data) <= _SMALL_WRITE
        attempt = _Attempt(timeouts, now, reading=reading)
        with attempt.scope:
            connection, exchange = await self._exchange(attempt, data, max_bytes, connection)
            return _PoolBody(self, attempt, connection, exchange)
        raise attempt.timeout()

    async def _exchange(
        self, attempt: _Attempt, data: bytes, max_bytes: int, connection: _Connection | None
    ) -> tuple[_Connection, Exchange]:
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
            exchange = Exchange(max_bytes)
            exchange.parser = httptools.HttpResponseParser(exchange)
            try:
                await self._read(attempt, connection, exchange, _HEADERS)
            except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
                await self._discard(connection)
                raise
            return connection, exchange

    async def _read(
        self, attempt: _Attempt, connection: _Connection, exchange: Exchange, until: int
    ) -> None:
        """Read until the headers are in (``_HEADERS``), or a body chunk is (``_CHUNK``),
        or the whole response is."""
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
            self._feed(exchange, data)

    def _feed(self, exchange: Exchange, data: bytes) -> None:
        """Parse ``data`` (``b""``: the server closed the connection)."""
        if not data:
            if exchange.headers_done and not exchange.length_known:
                exchange.complete = True  # the body ends when the connection does
                return
            raise Dropped("the server closed the connection before a complete response")
        assert exchange.parser is not None
        heading = not exchange.headers_done
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise Unusable(
                "the server switched protocols (101 Switching Protocols), which was not asked "
                "for; check base_url points at the HTTP API"
            ) from None
        except httptools.HttpParserError as exc:
            if exchange.error is None and not exchange.complete:
                raise Dropped(f"the response is not valid HTTP/1.1 ({exc})") from None
            # Bytes past the end of our response (a second response in the same read, or
            # junk): the response stands, the connection is not reused (``_finish``).
            exchange.keep_alive = False
        if exchange.error is not None:
            raise exchange.error
        if heading and not exchange.headers_done:
            exchange.head_bytes += len(data)
            if exchange.head_bytes > MAX_HEAD_BYTES:
                raise HeadersTooLarge(f"its headers are longer than {MAX_HEAD_BYTES} bytes")

    async def _finish(self, connection: _Connection, exchange: Exchange) -> None:
        """Return the connection if its exchange ended cleanly, else close it."""
        exchange.parser = None  # the parser and the exchange refer to each other
        if (
            exchange.complete
            and exchange.error is None
            and exchange.length_known
            and exchange.messages == 1
            and exchange.keep_alive
        ):
            await self.release(connection)
        else:
            await self._discard(connection)
        if self._stale:  # idle connections found dead on the way
            await self._close_stale()


class _PoolBody(BodyStream):
    """A response from :class:`Pool`: the body read off its connection."""

    __slots__ = ("_attempt", "_connection", "_exchange", "_pool")

    def __init__(
        self, pool: Pool, attempt: _Attempt, connection: _Connection, exchange: Exchange
    ) -> None:
        # BodyStream's fields set here, not through super().__init__: once per request.
        self.status, self.reason, self.headers = exchange.status, exchange.reason, exchange.headers
        self._end, self._total, self._ended = attempt.end, attempt.timeouts.total, False
        self._pool = pool
        self._attempt = attempt
        self._connection = connection
        self._exchange = exchange

    def _ready(self) -> bytes | None:
        exchange = self._exchange
        if exchange.chunks:
            return exchange.body()
        self._ended = exchange.complete
        return None

    def _scope(self) -> anyio.CancelScope:
        # A scope per read (a scope must not span the caller's code between chunks); its
        # deadline is the read timeout's, never past the attempt's total.
        attempt = self._attempt
        attempt.scope = scope = anyio.CancelScope()
        attempt.armed = False
        return scope

    def _timed_out(self) -> Timeout:
        return self._attempt.timeout()

    async def _pull(self) -> bytes | None:
        exchange = self._exchange
        await self._pool._read(self._attempt, self._connection, exchange, _CHUNK)
        return exchange.body() if exchange.chunks else None

    async def settle(self) -> None:
        # Only what the socket already holds (a zero-time poll), each read under the read
        # timeout: a server that leaves the body open costs nothing, one that ends it in the
        # same breath keeps its connection. (Bytes anyio has already taken off the socket
        # are not seen: the connection is then closed, which is always safe.)
        exchange, connection = self._exchange, self._connection
        try:
            while not exchange.complete and _readable(connection.fd):
                with self._scope() as scope:
                    self._attempt.reading()
                    try:
                        data = await connection.stream.receive(_READ_SIZE)
                    except _STREAM_GONE:
                        data = b""
                    self._pool._feed(exchange, data)
                exchange.chunks.clear()  # past the terminal event: nothing the caller wants
                if scope.cancelled_caught:
                    return
        except TransportError:
            exchange.keep_alive = False  # the answer stands; the connection is closed

    async def finish(self) -> None:
        await self._pool._finish(self._connection, self._exchange)

    async def abort(self) -> None:
        self._exchange.parser = None
        await self._pool._discard(self._connection)
