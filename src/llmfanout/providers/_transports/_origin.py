"""Where requests go and how: the origin, the TLS context, the environment's proxy."""

from __future__ import annotations

import functools
import os
import ssl
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import httpx


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once.

    Loading the CA bundle costs ~20 ms, so every provider shares one context.
    """
    import httpx  # its CA bundle choice, loaded once the first TLS provider needs it

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
    import urllib.request  # ~20 ms (http.client, email): needed once per transport made

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
