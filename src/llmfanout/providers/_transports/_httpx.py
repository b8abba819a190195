"""The providers' calls over an ``httpx.AsyncClient``: a user's ``http_client=``, or ours
when an environment proxy applies (httpx speaks HTTP and SOCKS proxies).

The second implementation of :class:`~._base.BaseTransport`: it opens the exchange with
httpx and reads the body as sent (the response's raw stream), so the
:class:`~._base.BodyStream` decompresses and caps it exactly as for the pool, under the
same total deadline. httpx's
own exceptions (which hold the request, and so the key) are turned into ours outside
their ``except`` blocks, so none is chained.

Bytes past the end of a response. httpcore reads the socket 64 KiB at a time into h11,
which parses one message and keeps the rest in its buffer; httpcore then pools the
connection, and h11 answers the next request on it (another task's) with those bytes. No
public API shows them, so, as curl and undici do, we look ourselves: once a body has
ended, and before httpx hands its connection back, :func:`_parser_of` follows httpx's and
httpcore's private attributes to the ``h11.Connection`` that read it; bytes in its buffer
(``trailing_data``, public h11) make us mark it failed (``send_failed``, public h11), and
httpcore then closes the connection instead of pooling it. The path is proved once per
process on httpcore's mock network (:func:`_probe`). Where it does not hold, we cannot
see the bytes, so our requests ask for ``Connection: close`` (a warning says so): all of
them under a later httpx or httpcore the probe fails on; on a client whose own transport
hides its connections, all after the first HTTP/1.1 response that shows us so.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Protocol, cast

import anyio
import httpx

from . import _base as failures  # the errors, by their module: what httpx's map to
from ._base import BaseTransport, BodyStream, Inflow, Phase, Request, Timeout, Timeouts

logger = logging.getLogger("llmfanout")


def _httpx_failure(exc: httpx.HTTPError, timeouts: Timeouts) -> failures.TransportError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: Phase.CONNECT,
            httpx.WriteTimeout: Phase.WRITE,
            httpx.PoolTimeout: Phase.POOL,
        }.get(type(exc), Phase.READ)
        return Timeout(phase, timeouts.of(phase))
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return failures.Refused(detail)
    if isinstance(exc, httpx.RemoteProtocolError) and "_SWITCH_UPGRADE" in detail:
        return failures.Unusable(
            "the server switched protocols (101 Switching Protocols), which was not asked for"
        )
    if isinstance(exc, httpx.ConnectError):
        return failures.ConnectFailed(detail, tls="CERTIFICATE_VERIFY_FAILED" in detail)
    return failures.Dropped(detail)


# -- bytes past a response --------------------------------------------------------------


class _Parser(Protocol):
    """What we use of ``h11.Connection`` (public h11 API)."""

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received past the current message, and whether the peer closed."""
        ...

    def send_failed(self) -> None:
        """Put the connection in h11's ERROR state: httpcore closes it, never pools it."""
        ...


# From a response's stream to the h11.Connection that parsed it (httpx 0.27-0.29, httpcore
# 1.0): BoundAsyncStream._stream -> AsyncResponseStream._httpcore_stream ->
# PoolByteStream._stream -> HTTP11ConnectionByteStream._connection ->
# AsyncHTTP11Connection._h11_state. Private: proved by _probe before we rely on it.
_TO_PARSER = ("_stream", "_httpcore_stream", "_stream", "_connection", "_h11_state")


def _parser_of(response: httpx.Response) -> _Parser | None:
    """The h11 parser that read ``response``, or None where the path above does not lead
    to one (HTTP/2, a transport other than httpx's own, another httpx or httpcore)."""
    node: object = response.stream
    for name in _TO_PARSER:
        node = getattr(node, name, None)
    kind = type(node)
    if hasattr(kind, "trailing_data") and hasattr(kind, "send_failed"):
        return cast(_Parser, node)
    return None


class _Sight:
    """Whether this process's httpx and httpcore let us see bytes past a response:
    unknown until the first request over httpx, then proved once (:func:`_probe`)."""

    proved: bool | None = None


async def _probe() -> bool:
    """One exchange through httpx's own transport over httpcore's mock network (no
    socket): a response followed by one stray byte. True when :func:`_parser_of` finds the
    byte and marking the parser failed makes httpcore drop the connection."""
    try:
        import httpcore

        stray = [b"HTTP/1.1 204 No Content\r\n\r\nX"]
        transport = httpx.AsyncHTTPTransport(verify=False)
        await transport._pool.aclose()
        transport._pool = pool = httpcore.AsyncConnectionPool(
            network_backend=httpcore.AsyncMockBackend(stray)
        )
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("GET", "http://probe.invalid/") as response,
        ):
            async for _ in cast(httpx.AsyncByteStream, response.stream):
                pass
            parser = _parser_of(response)
            if parser is None or parser.trailing_data[0] != b"X":
                return False
            parser.send_failed()
        return not pool.connections
    except Exception:  # any surprise means we cannot see: the safe fallback
        return False


async def _sight() -> bool:
    """Whether we can see bytes past a response (probed on first use, then cached)."""
    if _Sight.proved is None:
        proved = await _probe()
        if _Sight.proved is None:  # the first of concurrent first requests to finish
            _Sight.proved = proved
            if not proved:
                logger.warning(
                    "httpx %s with httpcore does not let llmfanout see bytes sent past a response,"
                    " so its requests over httpx ask for 'Connection: close' (a new connection"
                    " each); please report it with your httpx and httpcore versions",
                    httpx.__version__,
                )
    return _Sight.proved


# -- the transport -----------------------------------------------------------------------


class HTTPXTransport(BaseTransport):
    """Requests over an ``httpx.AsyncClient`` (yours, or ours when a proxy applies)."""

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, headers: Mapping[str, str], *, owned: bool
    ) -> None:
        self.client = client
        self._base_url = base_url
        self._headers = dict(headers)
        self._owned = owned
        # Our headers and Connection: close, once we know we cannot see bytes past this
        # client's responses (the probe failed, or a response hid its connection).
        self._closing: dict[str, str] | None = None
        self._sighted = False

    def __repr__(self) -> str:
        return f"HTTPXTransport({self._base_url!r}, owned={self._owned})"

    async def aclose(self) -> None:
        """Close the client if it is ours; leave a client you passed in open."""
        if self._owned:
            await self.client.aclose()

    async def _begin(self, request: Request) -> BodyStream:
        """Send one request; the response once its headers are in."""
        client = self.client
        if client.is_closed:
            raise failures.Refused("the http_client is closed")
        if not self._sighted:
            if not await _sight():
                self.blind()
            self._sighted = True
        method, target, content, headers, timeouts, max_bytes = request
        own = self._closing or self._headers
        outgoing = client.build_request(
            method,
            self._base_url + target,
            content=content or None,
            headers={**own, **headers} if headers else own,
            timeout=timeouts.as_httpx(),
        )
        end = anyio.current_time() + timeouts.total
        failure: failures.TransportError | None = None
        with anyio.CancelScope(deadline=end):
            try:
                response = await client.send(outgoing, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                failure = _httpx_failure(exc, timeouts)
            else:
                return _HTTPXBody(self, response, max_bytes, timeouts, end)
        # Raised outside the except: an httpx error holds the request, and so the key.
        raise failure or Timeout(Phase.TOTAL, timeouts.total)

    def blind(self) -> None:
        """We cannot see past this client's responses: from now on every request asks
        for ``Connection: close``, so no connection outlives the response it carried."""
        if self._closing is None:
            self._closing = {**self._headers, "connection": "close"}
            if _Sight.proved:  # else _sight warned already
                logger.warning(
                    "the http_client's transport hides the HTTP/1.1 connection under its"
                    " responses from llmfanout, so its requests to %s ask for"
                    " 'Connection: close' (a new connection each)",
                    self._base_url,
                )


class _HTTPXBody(BodyStream):
    """A response from :class:`HTTPXTransport`: the body as sent, decoded here."""

    __slots__ = ("_chunks", "_inflow", "_response", "_timeouts", "_transport")

    def __init__(
        self,
        transport: HTTPXTransport,
        response: httpx.Response,
        max_bytes: int,
        timeouts: Timeouts,
        end: float,
    ) -> None:
        headers = {k.lower(): v for k, v in response.headers.items()}
        super().__init__(response.status_code, response.reason_phrase, headers, end, timeouts.total)
        self._transport = transport
        self._response = response
        self._chunks: AsyncIterator[bytes]
        if response.is_stream_consumed:  # a body given whole (httpx.MockTransport): decoded
            self._chunks, encoding = response.aiter_bytes(), ""
        else:
            # The body as sent, read from the stream itself rather than aiter_raw, which
            # hands the connection back the moment the body ends: _pull must look first.
            stream = cast(httpx.AsyncByteStream, response.stream)
            self._chunks, encoding = aiter(stream), headers.get("content-encoding", "")
        self._inflow = Inflow(max_bytes, encoding)
        self._timeouts = timeouts

    async def _pull(self) -> bytes | None:
        failure: failures.TransportError | None = None
        try:
            raw = await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            self._retire_if_desynced()
            return None
        except httpx.HTTPError as exc:
            failure = _httpx_failure(exc, self._timeouts)
        if failure is not None:  # raised outside the except: an httpx error holds the request
            raise failure
        return self._inflow.take(raw)

    def _retire_if_desynced(self) -> None:
        """The body has ended and the connection is not yet back in httpx's pool: if
        bytes came past the response (or the server closed), make httpcore close it."""
        response = self._response
        if response.is_stream_consumed:
            return  # not read from a connection of httpx's own
        parser = _parser_of(response)
        if parser is not None:
            extra, closed = parser.trailing_data
            if extra or closed:
                parser.send_failed()
        elif "network_stream" in response.extensions and response.http_version != "HTTP/2":
            self._transport.blind()  # an HTTP/1 connection we cannot see into

    async def finish(self) -> None:
        await self.abort()  # httpx keeps the connection if the body was read to its end

    async def abort(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]
        await self._response.aclose()
