"""The providers' calls over an ``httpx.AsyncClient``: a user's ``http_client=``, or ours
when an environment proxy applies (httpx speaks HTTP and SOCKS proxies).

The second implementation of :class:`~._base.BaseTransport`: it opens the exchange with
httpx and reads the body as sent (``aiter_raw``), so the :class:`~._base.BodyStream`
decompresses and caps it exactly as for the pool, under the same total deadline. httpx's
own exceptions (which hold the request, and so the key) are turned into ours outside
their ``except`` blocks, so none is chained.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import httpx

from . import _base as failures  # the errors, by their module: what httpx's map to
from ._base import BaseTransport, BodyStream, Inflow, Phase, Request, Timeout, Timeouts


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


class HTTPXTransport(BaseTransport):
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

    async def _begin(self, request: Request) -> BodyStream:
        """Send one request; the response once its headers are in."""
        client = self.client
        if client.is_closed:
            raise failures.Refused("the http_client is closed")
        method, target, content, headers, timeouts, max_bytes = request
        outgoing = client.build_request(
            method,
            self._base_url + target,
            content=content or None,
            headers={**self._headers, **headers} if headers else self._headers,
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
                return _HTTPXBody(response, max_bytes, timeouts, end)
        # Raised outside the except: an httpx error holds the request, and so the key.
        raise failure or Timeout(Phase.TOTAL, timeouts.total)


class _HTTPXBody(BodyStream):
    """A response from :class:`HTTPXTransport`: the body as sent, decoded here."""

    __slots__ = ("_chunks", "_inflow", "_response", "_timeouts")

    def __init__(
        self, response: httpx.Response, max_bytes: int, timeouts: Timeouts, end: float
    ) -> None:
        headers = {k.lower(): v for k, v in response.headers.items()}
        super().__init__(response.status_code, response.reason_phrase, headers, end, timeouts.total)
        self._response = response
        if response.is_stream_consumed:  # a body given whole (httpx.MockTransport): decoded
            self._chunks, encoding = response.aiter_bytes(), ""
        else:
            self._chunks, encoding = response.aiter_raw(), headers.get("content-encoding", "")
        self._inflow = Inflow(max_bytes, encoding)
        self._timeouts = timeouts

    async def _pull(self) -> bytes | None:
        failure: failures.TransportError | None = None
        try:
            raw = await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            return None
        except httpx.HTTPError as exc:
            failure = _httpx_failure(exc, self._timeouts)
        if failure is not None:  # raised outside the except: an httpx error holds the request
            raise failure
        return self._inflow.take(raw)

    async def finish(self) -> None:
        await self.abort()  # httpx keeps the connection if the body was read to its end

    async def abort(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]
        await self._response.aclose()
