"""AzureOpenAIProvider: the Chat Completions API as Azure OpenAI serves it.

Azure's shape differs from OpenAI's in three places, all taken as the ``openai`` SDK's
``AzureOpenAI`` takes them:

- the URL names the deployment and the API version:
  ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={version}``;
- the key goes in an ``api-key`` header (a Microsoft Entra ID token instead goes in
  ``Authorization: Bearer``);
- the environment: ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` (or
  ``AZURE_OPENAI_AD_TOKEN``), ``OPENAI_API_VERSION``.

Answers and errors are OpenAI's. Azure's own habits are mapped: a 429 whose body says
"Please retry after N seconds" without a ``Retry-After`` header gets ``retry_after``
from the text; its ``x-ratelimit-remaining-*`` headers pace as OpenAI's do, and the
``-1`` it sends where it has no figure is taken as no figure. Its error codes
(``content_filter``, ``context_length_exceeded``, ``DeploymentNotFound``) are the
provider's ``error_type``, which a :class:`~llmfanout.Pool` reads to choose a fallback.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import attrs

from .._base._advertised import RateLimitInfo
from .._base._types import LLMMessage, LLMResponse
from ..errors import RateLimitError
from ._config import HTTPOptions
from ._openai import OpenAIProvider

__all__ = ["DEFAULT_API_VERSION", "AzureOpenAIProvider"]

DEFAULT_API_VERSION = "2024-10-21"
"""The API version used when neither ``api_version`` nor ``OPENAI_API_VERSION`` gives one
(the newest generally available one when this was written)."""

_RETRY_IN_TEXT = re.compile(r"retry after (\d+(?:\.\d+)?) (second|millisecond)", re.IGNORECASE)


class AzureOpenAIProvider(OpenAIProvider):
    """Calls an Azure OpenAI deployment's ``chat/completions``.

    ``deployment`` is the deployment's name (what Azure routes by; it is also sent as the
    body's ``model``). ``azure_endpoint`` (``https://NAME.openai.azure.com``), else
    ``base_url``, else ``AZURE_OPENAI_ENDPOINT``. ``api_version``, else
    ``OPENAI_API_VERSION``, else :data:`DEFAULT_API_VERSION`. The key from ``api_key``,
    else ``AZURE_OPENAI_API_KEY``; or a Microsoft Entra ID token from ``azure_ad_token``,
    else ``AZURE_OPENAI_AD_TOKEN``, sent as a bearer token. Every other option is
    :class:`~llmfanout.providers.OpenAIProvider`'s. Raises ``ValueError`` naming the
    variable when no endpoint or no key is found.
    """

    provider_name = "azure"
    api_key_env = "AZURE_OPENAI_API_KEY"
    base_url_env = "AZURE_OPENAI_ENDPOINT"
    default_base_url = ""

    def __init__(
        self,
        deployment: str,
        *,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_ad_token: str | None = None,
        **options: Unpack[HTTPOptions],
    ) -> None:
        owner = type(self).__name__
        if not isinstance(deployment, str) or not deployment.strip():
            raise ValueError(f"{owner}: deployment is {deployment!r}; give the deployment's name")
        base_url = options.pop("base_url", None)
        endpoint = azure_endpoint or base_url or os.environ.get(self.base_url_env, "").strip()
        if not endpoint:
            raise ValueError(
                f"{owner}: no endpoint; set the {self.base_url_env} environment variable or "
                "pass azure_endpoint='https://NAME.openai.azure.com'"
            )
        version = api_version or os.environ.get("OPENAI_API_VERSION", "").strip()
        self.api_version = version or DEFAULT_API_VERSION
        api_key = options.pop("api_key", None)
        if api_key is None and azure_ad_token is None and not os.environ.get(self.api_key_env):
            azure_ad_token = os.environ.get("AZURE_OPENAI_AD_TOKEN", "").strip() or None
        self._bearer = azure_ad_token is not None and api_key is None
        self.deployment = deployment
        quoted = urllib.parse.quote(deployment, safe="")
        query = urllib.parse.urlencode({"api-version": self.api_version})
        # The path and query are per deployment, not per class.
        self.endpoint = f"/chat/completions?{query}"  # type: ignore[misc]
        options["base_url"] = f"{endpoint.rstrip('/')}/openai/deployments/{quoted}"
        options["api_key"] = azure_ad_token if self._bearer else api_key
        super().__init__(deployment, **options)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(deployment={self.deployment!r}, "
            f"base_url={self.base_url!r}, api_version={self.api_version!r})"
        )

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        if self._bearer:
            return {"authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        """As :meth:`OpenAIProvider.complete`, with Azure's rate-limit habits mapped."""
        try:
            answer = await super().complete(messages, config_overrides)
        except RateLimitError as exc:
            if exc.retry_after is None:
                exc.retry_after = _retry_in_text(exc.error_message or exc.message)
            exc.rate_limits = _known(exc.rate_limits)
            raise
        limits = _known(answer.rate_limits)
        if limits is not answer.rate_limits:
            answer = attrs.evolve(answer, rate_limits=limits)
        return answer


def _retry_in_text(text: str) -> float | None:
    """The wait an Azure 429's message names ("Please retry after 6 seconds")."""
    found = _RETRY_IN_TEXT.search(text)
    if found is None:
        return None
    seconds = float(found.group(1))
    return seconds / 1000 if found.group(2).lower().startswith("milli") else seconds


def _known(info: RateLimitInfo | None) -> RateLimitInfo | None:
    """``info`` without the budgets Azure reports as -1 (no figure)."""
    if info is None:
        return None
    budgets = attrs.asdict(info, recurse=False)
    changed = False
    for kind, budget in budgets.items():
        if budget is not None and any(
            isinstance(v, int | float) and v < 0 for v in (budget.limit, budget.remaining)
        ):
            budgets[kind] = None
            changed = True
    if not changed:
        return info
    if all(b is None for b in budgets.values()):
        return None
    return RateLimitInfo(**budgets)
