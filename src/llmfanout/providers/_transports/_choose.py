"""Which transport serves a provider: the pool, or httpx for a given client or a proxy."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._base import Transport
from ._origin import Origin, proxy_for, ssl_context
from ._pool import Pool

if TYPE_CHECKING:
    import httpx


def new_transport(
    url: httpx.URL,
    headers: Mapping[str, str],
    *,
    verify: bool | str | ssl.SSLContext,
    timeout: httpx.Timeout,
    max_connections: int,
    client: httpx.AsyncClient | None,
) -> Transport:
    """A transport to ``url``'s origin sending ``headers``: over ``client`` when given (left
    open on close), else over our own ``httpx.AsyncClient`` when the environment sets a
    proxy for ``url``, else our pool."""
    origin = Origin.of(url)
    if client is not None:
        from ._httpx import HTTPXTransport  # httpx is imported only where it serves

        return HTTPXTransport(client, origin.url, headers, owned=False)
    context = ssl_context(verify) if origin.tls else None
    if proxy_for(url) is not None:
        # httpx speaks HTTP and SOCKS proxies and reads NO_PROXY as it always has.
        import httpx

        from ._httpx import HTTPXTransport

        ours = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            # Never follow redirects: a key header such as x-api-key would go along.
            follow_redirects=False,
            verify=context or True,
            trust_env=True,
        )
        return HTTPXTransport(ours, origin.url, headers, owned=True)
    return Pool(origin, headers, context=context, max_connections=max_connections)
