"""What every transport shares: its values, its errors, the ``Transport`` protocol, and the
body stream both implementations build on.

A transport sends one request and hands back the response in one of two shapes: whole
(:meth:`Transport.send`) or as a :class:`BodyStream` read chunk by chunk
(:meth:`Transport.stream`). :class:`BaseTransport` writes both shapes once, over the one
thing an implementation supplies: ``_begin``, which sends the request and returns a
:class:`BodyStream` once the response's headers are in. :class:`BodyStream` owns reading
the body: each read under the attempt's total deadline, the ``max_response_bytes`` cap on
the bytes as sent and again after decompression (:class:`Inflow`), and what happens to the
connection at the end (returned when the body was read to its end, closed otherwise).

The two implementations: :mod:`._pool` (our HTTP/1.1 pool over anyio streams) and
:mod:`._httpx` (an ``httpx.AsyncClient``: the user's ``http_client=``, or ours behind a
proxy).
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, NamedTuple, Protocol

import anyio
import attrs

if TYPE_CHECKING:
    import httpx

# -- values ------------------------------------------------------------------------------


class Phase(enum.Enum):
    """Where an attempt was when it failed."""

    POOL = "pool"
    CONNECT = "connect"
    WRITE = "write"
    READ = "read"
    TOTAL = "total"


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
        import httpx  # only the httpx transport needs it

        def value(seconds: float) -> float | None:
            return None if math.isinf(seconds) else seconds

        return httpx.Timeout(
            connect=value(self.connect),
            read=value(self.read),
            write=value(self.write),
            pool=value(self.pool),
        )


class Request(NamedTuple):
    """One request as a transport takes it: to ``target`` (a path on the transport's
    origin), with ``headers`` added to the transport's own, under ``timeouts``, its
    response body capped at ``max_bytes``. A tuple: made once per call, on the hot path."""

    method: str
    target: str
    content: bytes
    headers: Mapping[str, str] | None
    timeouts: Timeouts
    max_bytes: int


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


# -- errors ------------------------------------------------------------------------------


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


class Unusable(TransportError):
    """A response no retry would mend: a header block past the caps, or a protocol switch
    we never asked for (``101 Switching Protocols``)."""


class HeadersTooLarge(Unusable):
    """The response's header block passed its caps (:mod:`._h1`): too many, or too long."""


class Timeout(TransportError):
    """A phase (or the whole attempt) ran out of time."""

    def __init__(self, phase: Phase, seconds: float) -> None:
        super().__init__(f"{phase.value} timeout after {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class TooLarge(TransportError):
    """The response body (as sent, or after decompression) passed the request's ``max_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is larger than {limit} bytes")
        self.limit = limit


# -- the body's bytes: decoded, counted, capped -------------------------------------------


class Inflow:
    """A body's bytes as they arrive: decompressed (gzip, deflate) chunk by chunk, and
    capped at ``limit`` both as sent and after decompression, so a gzip bomb never
    inflates past the cap. Other encodings pass through as sent."""

    __slots__ = ("_inner", "_raw_deflate", "_sent_limit", "limit", "sent", "size")

    def __init__(self, limit: int, encoding: str = "") -> None:
        self.limit = self._sent_limit = limit
        self.sent = 0  # bytes as they came off the wire (counted for an encoded body)
        self.size = 0  # bytes handed on, after decompression
        self._raw_deflate = False
        self._inner: zlib._Decompress | None = None
        encoding = encoding.strip().lower() if encoding else ""
        if encoding in ("gzip", "x-gzip"):
            self._inner = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._raw_deflate = True
            self._inner = zlib.decompressobj(zlib.MAX_WBITS)
        if self._inner is not None:
            # Compressed data that inflates to ``limit`` bytes is at most this long (deflate
            # adds 5 bytes per 16 KiB stored block, gzip 18 of framing); past it, the rest
            # is padding or trailing junk that zlib would hold, uncounted, in unused_data.
            self._sent_limit = limit + limit // 64 + 1024

    def take(self, data: bytes) -> bytes:
        """The decoded bytes ``data`` carries; raises :class:`TooLarge` past the cap and
        :class:`Dropped` for data that does not decompress."""
        limit = self.limit
        if self._inner is not None:
            self.sent += len(data)
            if self.sent > self._sent_limit:
                raise TooLarge(limit)
            try:
                data = self._decode(data, limit - self.size)
            except zlib.error as exc:
                raise Dropped(f"the response body is not valid compressed data ({exc})") from None
        self.size += len(data)
        if self.size > limit:
            raise TooLarge(limit)
        return data

    def _decode(self, data: bytes, room: int) -> bytes:
        assert self._inner is not None
        try:
            return self._inner.decompress(data, room + 1)
        except zlib.error:
            if not self._raw_deflate:
                raise
            # Some servers send raw deflate under "deflate" (httpx reads both too).
            self._raw_deflate = False
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inner.decompress(data, room + 1)


# -- the body stream ---------------------------------------------------------------------


class BodyStream:
    """A response whose body is read chunk by chunk (``async for chunk in response``).

    Each read runs under the attempt's total deadline (``end``); an implementation
    supplies ``_pull`` (the next decoded chunk, None at the end) and may narrow the
    deadline of a read (``_scope``, ``_timed_out``). ``finish`` hands the connection back
    when the body was read to its end and closes it otherwise; ``abort`` closes it.

    A class, not an async generator: one left half-read needs no finalizer.
    """

    __slots__ = ("_end", "_ended", "_total", "headers", "reason", "status")

    def __init__(
        self, status: int, reason: str, headers: Mapping[str, str], end: float, total: float
    ) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self._end, self._total = end, total
        self._ended = False  # set by an implementation once the body has no more to give

    # -- what an implementation supplies ---------------------------------------------------

    def _ready(self) -> bytes | None:
        """A chunk already in hand (no wait needed), else None (and ``_ended`` set if
        there will be none)."""
        return None

    async def _pull(self) -> bytes | None:
        """Wait for the next decoded chunk (``b""`` for none yet); None at the body's end."""
        raise NotImplementedError

    def _scope(self) -> anyio.CancelScope:
        """The scope one read runs in: by default, the attempt's total deadline."""
        return anyio.CancelScope(deadline=self._end)

    def _timed_out(self) -> Timeout:
        """The error for a read whose scope ran out."""
        return Timeout(Phase.TOTAL, self._total)

    async def settle(self) -> None:
        """Take in what of the body has already arrived, without waiting for more: called
        once the caller has all it needs (a stream's terminal event), so that ``finish``
        returns the connection if the body happens to be whole, and closes it otherwise.
        By default nothing is taken (the connection is closed)."""

    async def finish(self) -> None:
        """The body is done with: return the connection if it was read to its end, else
        close it."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Close the connection (an error, a cancellation)."""
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while (chunk := await self._next()) is not None:
            if chunk:
                return chunk
        raise StopAsyncIteration

    async def _next(self) -> bytes | None:
        """The next chunk of the body (maybe empty), or None at its end."""
        chunk = self._ready()
        if chunk is not None:
            return chunk
        if self._ended:
            return None
        with self._scope():
            return await self._pull()
        raise self._timed_out()  # reached only when the scope's deadline passed

    async def read(self) -> bytes:
        """The rest of the body (bounded by the request's ``max_bytes``)."""
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


# -- the transport -----------------------------------------------------------------------


class Transport(Protocol):
    """What a provider needs from an HTTP client: one origin, a fixed set of headers."""

    async def send(self, request: Request) -> Response:
        """Send one request to ``target`` (a path); return the whole response.

        Raises :class:`TransportError` subclasses; cancellation closes the connection.
        """
        ...

    def stream(self, request: Request) -> AbstractAsyncContextManager[BodyStream]:
        """An async context manager yielding a :class:`BodyStream` once headers arrive.

        Leaving it returns the connection to the pool when the body was read to its end,
        and closes it otherwise (a break, an error, a cancellation).
        """
        ...

    async def aclose(self) -> None:
        """Close every connection; later requests raise ``TransportError``."""
        ...


class BaseTransport:
    """``send`` and ``stream`` written once, over an implementation's ``_begin``."""

    async def _begin(self, request: Request) -> BodyStream:
        """Send the request; the response once its headers are in."""
        raise NotImplementedError

    async def send(self, request: Request) -> Response:
        """Send one request; return the whole response (see :class:`Transport`)."""
        body = await self._begin(request)
        try:
            data = await body.read()
        except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
            await body.abort()
            raise
        await body.finish()
        return Response(body.status, body.reason, body.headers, data)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[BodyStream]:
        """Send one request; yield the response once its headers are in (see
        :class:`Transport`)."""
        body = await self._begin(request)
        try:
            yield body
        except BaseException:  # cleanup, then re-raised (noqa: cancellation-ok)
            await body.abort()
            raise
        await body.finish()
