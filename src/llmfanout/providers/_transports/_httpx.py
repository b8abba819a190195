"""The providers' calls over an ``httpx.AsyncClient``: a user's ``http_client=``, or ours
when an environment proxy applies (httpx speaks HTTP and SOCKS proxies).

It serves the same :class:`~._transport.Transport` interface as the pool, with the same
total deadline, size cap and errors; httpx's own exceptions (which hold the request, and
so the key) are turned into ours outside their ``except`` blocks, so none is chained.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import httpx

from ._pool import (
    ConnectFailed,
    Dropped,
    Phase,
    Refused,
    Response,
    StreamResponse,
    Timeout,
    Timeouts,
    TooLarge,
    TransportError,
)


def _httpx_failure(exc: httpx.HTTPError) -> TransportError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: Phase.CONNECT,
            httpx.WriteTimeout: Phase.WRITE,
            httpx.PoolTimeout: Phase.POOL,
        }.get(type(exc), Phase.READ)
        return Timeout(phase, math.nan)
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return Refused(detail)
    if isinstance(exc, httpx.ConnectError):
        return ConnectFailed(detail, tls="CERTIFICATE_VERIFY_FAILED" in detail)
    return Dropped(detail)


class HTTPXTransport:
    """Requests over an ``httpx.AsyncClient`` (yours, or ours when a proxy applies)."""

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, headers: Mapping[str, str], *, owned: bool
    ) -> None:
        self.client = client
        self._base_url = base_url
        self._headers = dict(headers)
        self._owned = owned

    def __repr__(self) -> str:
        return f"HTTPXTransport({self._base_url!r}, owned={self._owned})"

    async def aclose(self) -> None:
        """Close the client if it is ours; leave a client you passed in open."""
        if self._owned:
            await self.client.aclose()

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts,
    ) -> AsyncIterator[httpx.Response]:
        client = self.client
        if client.is_closed:
            raise Refused("the http_client is closed")
        request = client.build_request(
            method,
            self._base_url + target,
            content=content or None,
            headers={**self._headers, **headers} if headers else self._headers,
            timeout=timeouts.as_httpx(),
        )
        failure: TransportError | None = None
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            failure = _httpx_failure(exc)
        if failure is not None:  # raised outside the except: an httpx error holds the request
            raise _with_seconds(failure, timeouts)
        try:
            yield response
        finally:
            await response.aclose()

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
        with anyio.move_on_after(timeouts.total):
            async with self.stream(method, target, content, headers, timeouts, max_bytes) as r:
                return Response(r.status, r.reason, r.headers, await r.read())
        raise Timeout(Phase.TOTAL, timeouts.total)

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
        """Send one request; yield the response once its headers are in."""
        end = anyio.current_time() + timeouts.total
        with anyio.CancelScope(deadline=end) as scope:
            opening = self._open(method, target, content, headers, timeouts)
            response = await opening.__aenter__()
        if scope.cancelled_caught:
            raise Timeout(Phase.TOTAL, timeouts.total)
        stream = _HTTPXStream(response, max_bytes, timeouts, end)
        try:
            yield stream
        except BaseException as exc:  # cleanup, then re-raised (noqa: cancellation-ok)
            await stream.aclose()
            await opening.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await stream.aclose()
        await opening.__aexit__(None, None, None)


def _with_seconds(failure: TransportError, timeouts: Timeouts) -> TransportError:
    if isinstance(failure, Timeout) and math.isnan(failure.seconds):
        return Timeout(failure.phase, timeouts.of(failure.phase))
    return failure


class _HTTPXStream:
    def __init__(
        self, response: httpx.Response, max_bytes: int, timeouts: Timeouts, end: float
    ) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
        self._size = 0
        self._end = end
        self._max = max_bytes
        self._timeouts = timeouts
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.items()}

    def __aiter__(self) -> _HTTPXStream:
        return self

    async def __anext__(self) -> bytes:
        failure: TransportError | None = None
        with anyio.CancelScope(deadline=self._end) as scope:
            try:
                chunk = await anext(self._chunks)
            except httpx.HTTPError as exc:
                failure = _httpx_failure(exc)
        if scope.cancelled_caught:
            raise Timeout(Phase.TOTAL, self._timeouts.total)
        if failure is not None:  # raised outside the except: an httpx error holds the request
            raise _with_seconds(failure, self._timeouts)
        self._size += len(chunk)
        if self._size > self._max:
            raise TooLarge(self._max)
        return chunk

    async def read(self) -> bytes:
        """The rest of the body (bounded by the request's ``max_bytes``)."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]
