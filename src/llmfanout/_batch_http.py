"""The batch client's one door to HTTP: a JSON call, an upload, a line-by-line download.

Built on an HTTP provider's pieces (its pooled client, base URL, auth headers, error
mapping and redaction), so the batch APIs share the providers' connection layer and
their secret handling. When the providers grow a generic request primitive, only this
module changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx

from .errors import BadRequestError, ProviderError
from .providers._http import HTTPProvider, redact, status_error, transport_error

logger = logging.getLogger("llmfanout")

MAX_JSON_BYTES = 64 * 1024 * 1024
"""The most a JSON answer (a batch, a page of batches) may hold: far above any real one."""


class BatchHTTP:
    """Requests on behalf of the batch APIs, authenticated as ``provider`` is."""

    def __init__(self, provider: HTTPProvider) -> None:
        self.provider = provider
        self.name = provider.provider_name
        self.base_url = provider.base_url
        self._origin = httpx.URL(provider.base_url)

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` is relative, or on base_url's scheme, host and port."""
        if not url.startswith(("http://", "https://")):
            return True
        parsed, origin = httpx.URL(url), self._origin
        return (parsed.scheme, parsed.host, parsed.port) == (
            origin.scheme,
            origin.host,
            origin.port,
        )

    def url(self, path: str) -> str:
        """``path`` under the base URL; an absolute URL only if it is on the same origin.

        The key goes with every request, so a URL from a server's answer (Anthropic's
        ``results_url``) pointing at another host is refused rather than followed.
        """
        if not path.startswith(("http://", "https://")):
            return self.base_url + path
        if not self.same_origin(path):
            raise BadRequestError(
                f"{self.name}: the server gave a URL on another host ({httpx.URL(path).host}); "
                "the API key is only sent to base_url's host, so it was not fetched",
                provider=self.name,
            )
        return path

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(self.provider._headers)
        if extra:
            headers.update(extra)
        return headers

    def _client(self) -> httpx.AsyncClient:
        client = self.provider._client()
        if client is None:
            raise ProviderError(
                f"{type(self.provider).__name__}: closed; use a provider that is still open",
                provider=self.name,
            )
        return client

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request; the parsed JSON of a 2xx answer, else a ``ProviderError``.

        Errors are raised outside ``except`` blocks so they chain no httpx exception
        (which would hold the request, headers and all).
        """
        url = self.url(path)
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
        provider = self.provider
        error: ProviderError
        try:
            response = await self._client().request(
                method,
                url,
                content=content,
                headers=self._headers(headers),
                timeout=provider.timeout,
            )
        except httpx.RequestError as exc:
            error = transport_error(self.name, exc, url, provider.timeout, provider._secret)
        else:
            if 200 <= response.status_code < 300:
                if len(response.content) > MAX_JSON_BYTES:
                    error = self._format_error(response, url, "is larger than any batch answer")
                else:
                    try:
                        return json.loads(response.content)
                    except ValueError:
                        error = self._format_error(response, url, "is not JSON")
            else:
                error = status_error(self.name, response, provider._secret, provider.api_key_env)
        logger.debug("%s", error)
        raise error

    async def lines(self, path: str) -> AsyncGenerator[bytes, None]:
        """The non-blank lines of a JSONL download, as they arrive (nothing held whole)."""
        url = self.url(path)
        provider = self.provider
        headers = self._headers({"accept": "application/x-jsonl, application/json, */*"})
        error: ProviderError | None = None
        try:
            async with self._client().stream(
                "GET", url, headers=headers, timeout=provider.timeout
            ) as response:
                if not 200 <= response.status_code < 300:
                    await response.aread()
                    error = status_error(
                        self.name, response, provider._secret, provider.api_key_env
                    )
                else:
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield line.encode()
        except httpx.RequestError as exc:
            error = transport_error(self.name, exc, url, provider.timeout, provider._secret)
        if error is not None:
            logger.debug("%s", error)
            raise error

    def _format_error(self, response: httpx.Response, url: str, problem: str) -> ProviderError:
        text = redact(response.content[:200].decode("utf-8", "replace"), self.provider._secret)
        return ProviderError(
            f"{self.name}: HTTP {response.status_code} from {url}, but the body {problem}: "
            f"{' '.join(text.split()) or '(empty)'}; check that base_url points at the API",
            status_code=response.status_code,
            provider=self.name,
        )
