"""The batch client's one door to HTTP: a JSON call, and a JSONL download line by line.

Both go through the provider's own primitives (:meth:`HTTPProvider.request` and
:meth:`HTTPProvider.stream`): its connection pool, auth headers, error mapping, size cap
and key redaction. Nothing here touches a socket or a header holding the key.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, TypedDict, Unpack

from ..errors import BadRequestError, ResponseFormatError
from ..providers._http import HTTPProvider
from ..providers._transports._base import Response
from ..providers._transports._origin import Origin

MAX_DOWNLOAD_BYTES = 1 << 40
"""A results file is read line by line, never held whole: no cap short of absurd."""


MAX_LINE = 64 * 1024 * 1024
"""The longest line of a results file: one answer, far below the API's own limits."""


class Body(TypedDict, total=False):
    """A request's body, as :meth:`HTTPProvider.request` takes it."""

    json: Any
    content: bytes
    content_type: str
    headers: Mapping[str, str]


class BatchHTTP:
    """Requests on behalf of the batch APIs, authenticated as ``provider`` is."""

    def __init__(self, provider: HTTPProvider) -> None:
        self.provider = provider
        self.name = provider.provider_name

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` is a path, or on base_url's scheme, host and port."""
        if not url.lower().startswith(("http://", "https://")):
            return True
        import httpx  # the provider has imported it already

        try:
            return Origin.of(httpx.URL(url)) == self.provider._origin
        except httpx.InvalidURL:
            return False

    def resolve(self, url: str) -> str | None:
        """A URL a server handed back, resolved as the URL standard says; None elsewhere.

        A path from the root (``/v1/...``) is taken against base_url's origin, a relative
        one (``v1/...``) against base_url's path, an absolute one as it is (its scheme in
        any case). The result is absolute; None when it is on another origin (the key
        would go there) or is no URL at all.
        """
        if not isinstance(url, str) or any(ord(c) < 33 or ord(c) > 126 for c in url):
            return None
        import httpx

        try:
            target = httpx.URL(self.provider.base_url + "/").join(url)
            same = Origin.of(target) == self.provider._origin
        except (httpx.InvalidURL, ValueError, TypeError):
            return None
        return str(target) if same else None

    def url(self, path: str) -> str:
        """``path`` as the provider will take it; an absolute URL only on the same origin.

        The key goes with every request, so a URL from a server's answer (Anthropic's
        ``results_url``) pointing at another host is refused rather than followed.
        """
        if not self.same_origin(path):
            raise BadRequestError(
                f"{self.name}: the server gave a URL on another host ({path[:100]}); the API "
                "key is only sent to base_url's host, so it was not fetched",
                provider=self.name,
            )
        return path

    async def call(self, method: str, path: str, **body: Unpack[Body]) -> Any:
        """Send one request; the parsed JSON of a 2xx answer, else a ``ProviderError``."""
        return self.provider._json(await self.send(method, path, **body))

    async def send(self, method: str, path: str, **body: Unpack[Body]) -> Response:
        """Send one request; the whole 2xx answer (headers too), else a ``ProviderError``."""
        return await self.provider.request(method, self.url(path), **body)

    async def lines(self, path: str) -> AsyncGenerator[bytes, None]:
        """The non-blank lines of a JSONL download, as they arrive (nothing held whole).

        An unfinished line is held as pieces and joined once its end arrives (time in
        proportion to its length); one longer than ``MAX_LINE`` bytes raises
        :class:`~llmfanout.errors.ResponseFormatError`.
        """
        provider = self.provider
        redact = provider._redactor.data if provider._redact_answers else None
        async with provider.stream(
            "GET", self.url(path), max_response_bytes=MAX_DOWNLOAD_BYTES
        ) as body:
            held: list[bytes] = []
            size = 0
            async for chunk in body:
                end = chunk.rfind(b"\n")
                if end >= 0:
                    held.append(chunk[:end])
                    whole = b"".join(held)
                    held, size = [], 0
                    for line in whole.split(b"\n"):
                        if len(line) > MAX_LINE:
                            raise self._too_long(path)
                        if line.strip():
                            yield redact(line) if redact else line
                    chunk = chunk[end + 1 :]
                held.append(chunk)
                size += len(chunk)
                if size > MAX_LINE:
                    raise self._too_long(path)
            rest = b"".join(held)
            if rest.strip():
                yield redact(rest) if redact else rest

    def _too_long(self, path: str) -> ResponseFormatError:
        return ResponseFormatError(
            f"{self.name}: a line of {path[:100]} is longer than {MAX_LINE} bytes; a batch "
            "results file holds one answer a line, so this is not one",
            provider=self.name,
        )
