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

import inspect
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, Unpack

import attrs

from .._base._advertised import RateLimitInfo
from .._base._types import LLMMessage, LLMResponse
from ..errors import RateLimitError
from ._config import HTTPOptions, check_variable
from ._openai import OpenAIProvider
from ._secrets import Secret, SecretHeaders, TokenRedactor, header_safe

__all__ = ["DEFAULT_API_VERSION", "AzureOpenAIProvider"]

DEFAULT_API_VERSION = "2024-10-21"
"""The API version used when neither ``api_version`` nor ``OPENAI_API_VERSION`` gives one
(the newest generally available one when this was written)."""

_TOKEN_VARIABLE = "AZURE_OPENAI_AD_TOKEN"

TokenProvider: TypeAlias = Callable[[], "str | Awaitable[str]"]
"""What ``azure_ad_token_provider`` is: a function, sync or async, returning the token."""

_RETRY_IN_TEXT = re.compile(r"retry after (\d+(?:\.\d+)?) (second|millisecond)", re.IGNORECASE)


class AzureOpenAIProvider(OpenAIProvider):
    """Calls an Azure OpenAI deployment's ``chat/completions``.

    ``deployment`` is the deployment's name (what Azure routes by; it is also sent as the
    body's ``model``). ``azure_endpoint`` (``https://NAME.openai.azure.com``), else
    ``base_url``, else ``AZURE_OPENAI_ENDPOINT``. ``api_version``, else
    ``OPENAI_API_VERSION``, else :data:`DEFAULT_API_VERSION`. The key from ``api_key``,
    else ``AZURE_OPENAI_API_KEY`` (or the variable ``api_key_env`` names); or a Microsoft
    Entra ID token from ``azure_ad_token``, else ``AZURE_OPENAI_AD_TOKEN`` (or the variable
    ``azure_ad_token_env`` names), sent as a bearer token. A 401 or 403 asks to check the
    credential in use by where it came from (give the ``_env`` name beside a key or token
    you read from a variable yourself), never by its value. Every other option is
    :class:`~llmfanout.providers.OpenAIProvider`'s. Raises ``ValueError`` naming the
    variable when no endpoint or no key is found.
    """

    provider_name = "azure"
    api_key_env = "AZURE_OPENAI_API_KEY"
    base_url_env = "AZURE_OPENAI_ENDPOINT"
    default_base_url = ""

    # Alike in shape only (errors.py, _flow/_redislimit.py): a keyword-only constructor signature.
    def __init__(
        self,
        deployment: str,
        *,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_ad_token: str | None = None,
        azure_ad_token_provider: TokenProvider | None = None,
        azure_ad_token_env: str | None = None,
        **options: Unpack[HTTPOptions],
    ) -> None:
        owner = type(self).__name__
        if not isinstance(deployment, str) or not deployment.strip():
            raise ValueError(f"{owner}: deployment is {deployment!r}; give the deployment's name")
        if azure_ad_token_provider is not None and not callable(azure_ad_token_provider):
            raise TypeError(
                f"{owner}: azure_ad_token_provider is a "
                f"{type(azure_ad_token_provider).__name__}; give a function (sync or async) "
                "that returns the token, e.g. azure.identity's get_bearer_token_provider(...)"
            )
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
        # Which credential: one given beats the environment's; a token beats a key (as the
        # openai SDK, which then sends the bearer and no api-key); a fixed token beats the
        # callable.
        key_env = check_variable(options.get("api_key_env"), "api_key_env", owner)
        token_env = check_variable(azure_ad_token_env, "azure_ad_token_env", owner)
        token_source = f"in {token_env}" if token_env else "given as azure_ad_token="
        if azure_ad_token is None and azure_ad_token_provider is None and api_key is None:
            key_env, token_env = key_env or self.api_key_env, token_env or _TOKEN_VARIABLE
            azure_ad_token = os.environ.get(token_env, "").strip() or None
            token_source = f"in {token_env}"
            if azure_ad_token is None and not os.environ.get(key_env, "").strip():
                raise ValueError(
                    f"{owner}: no credential; set the {key_env} (or {token_env}) "
                    "environment variable, or pass api_key=..., azure_ad_token=... or "
                    "azure_ad_token_provider=..."
                )
        self._token_provider = None if azure_ad_token is not None else azure_ad_token_provider
        self._bearer = azure_ad_token is not None or self._token_provider is not None
        if self._token_provider is not None:
            token_source = "azure_ad_token_provider returns"
        # What a 401 or 403 asks the user to check: the token's source, never the token.
        self._token_source = f"the Entra ID token {token_source}" if self._bearer else None
        self.deployment = deployment
        quoted = urllib.parse.quote(deployment, safe="")
        query = urllib.parse.urlencode({"api-version": self.api_version})
        # The path and query are per deployment, not per class.
        self.endpoint = f"/chat/completions?{query}"  # type: ignore[misc]
        options["base_url"] = f"{endpoint.rstrip('/')}/openai/deployments/{quoted}"
        if self._token_provider is not None:
            options["api_key"] = "none"  # no fixed credential: a token per request
        else:
            options["api_key"] = azure_ad_token if self._bearer else api_key
        super().__init__(deployment, **options)
        if self._token_provider is not None:
            self._per_request = True
            self._redactor = TokenRedactor()
            self._redact_answers = False
            # The token the headers carry; at first one no valid token equals.
            self._token = Secret("\0")
            self._recent: tuple[str, ...] = ()
            self._bearer_headers = SecretHeaders()

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        if self._token_provider is not None:
            return {}  # the bearer goes with each request (_request_headers)
        if self._bearer:
            return {"authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}

    def _credential(self) -> str:
        return self._token_source or super()._credential()

    async def _request_headers(self) -> Mapping[str, str]:
        """The bearer header with the token ``azure_ad_token_provider`` gives now.

        Called before each request, as the openai SDK does: the callable keeps its own
        cache. A new token is checked, and taught to the redactor (with the two before it,
        which requests still in flight may carry) before it is sent.
        """
        assert self._token_provider is not None
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        if token is not self._token and token != self._token:
            self._rotate(token)
        return self._bearer_headers

    def _rotate(self, token: object) -> None:
        owner = type(self).__name__
        if not isinstance(token, str) or not token:
            raise TypeError(
                f"{owner}: azure_ad_token_provider returned "
                f"{'an empty str' if token == '' else 'a ' + type(token).__name__}; it must "
                "return the token as a non-empty str"
            )
        if not header_safe(token):
            raise ValueError(
                f"{owner}: the token azure_ad_token_provider returned holds a space, a "
                "control or a non-ASCII character, which an HTTP header cannot carry"
            )
        self._recent = (Secret(token), *self._recent)[:3]
        self._redactor = TokenRedactor(*self._recent)
        self._redact_answers = True
        self._bearer_headers = SecretHeaders({"authorization": f"Bearer {token}"})
        self._token = Secret(token)

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
