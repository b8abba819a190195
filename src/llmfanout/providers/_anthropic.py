"""AnthropicProvider: the Messages API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from .._types import LLMMessage, LLMResponse
from ..errors import BadRequestError, ProviderError
from ._config import HTTPOptions, check_positive_int
from ._http import HTTPProvider
from ._transport import Response

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header sent unless ``headers=`` gives another."""

_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicProvider(HTTPProvider):
    """Calls ``POST {base_url}/v1/messages`` over a pool of kept-alive connections.

    ``async with AnthropicProvider("claude-sonnet-4-5") as provider: ...`` or call
    ``aclose()`` when done (the pool is per event loop, as for OpenAIProvider). The key
    comes from ``api_key``, else ``ANTHROPIC_API_KEY``; without one the constructor
    raises ``ValueError`` naming the variable. It is sent as ``x-api-key`` with
    ``anthropic-version: 2023-06-01`` (override either with ``headers``).

    ``finish_reason`` is the ``stop_reason``; ``usage`` maps ``input_tokens`` (plus cached
    input) to ``prompt_tokens`` and ``output_tokens`` to ``completion_tokens``, keeping the
    original keys too. System messages are joined into the top-level ``system`` field;
    ``max_tokens`` (which the API requires) defaults to 1024. Per call,
    ``config_overrides`` are merged over ``default_params`` into the JSON body (a None
    value drops the key; ``stop`` is sent as ``stop_sequences``).

    ``complete`` raises :class:`~llmfanout.errors.ProviderError` subclasses, retryable as
    the official SDK decides (529 "overloaded" is a retryable ``ServerError``); it never
    retries on its own. The key never appears in a repr, an error or a log line.

    ``base_url`` defaults to ``ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com``.
    The other options (``timeout``, ``total_timeout``, ``max_connections``,
    ``max_response_bytes``, ``verify``, ``headers``, ``default_params``, ``http_client``)
    are those of :class:`~llmfanout.providers.OpenAIProvider`.
    """

    provider_name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    endpoint = "/v1/messages"

    def __init__(
        self, model: str, *, max_tokens: int = 1024, **options: Unpack[HTTPOptions]
    ) -> None:
        self.max_tokens = check_positive_int(max_tokens, "max_tokens", type(self).__name__)
        super().__init__(model, **options)

    def _initial_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            **self.default_params,
        }
        if "stop" in params:
            stop = params.pop("stop")
            if not isinstance(stop, str | list | tuple):
                raise TypeError(
                    f"AnthropicProvider: default_params['stop'] is a {type(stop).__name__}; "
                    "give a string or a list of strings"
                )
            params["stop_sequences"] = _stop_sequences(stop)
        return params

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}

    def _merge(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        params = super()._merge(overrides)
        if "stop" in params:  # the OpenAI spelling, so one set of overrides fits both
            params["stop_sequences"] = _stop_sequences(params.pop("stop"))
        return params

    def _payload(self, messages: Sequence[LLMMessage], params: dict[str, Any]) -> dict[str, Any]:
        system: list[str] = []
        wire: list[dict[str, str]] = []
        for m in messages:
            if m.role == "system":
                system.append(m.content)
            elif m.role == "tool":
                raise BadRequestError(
                    "anthropic: the Messages API has no 'tool' role for plain text; send the "
                    "tool's output as a 'user' message",
                    provider=self.provider_name,
                )
            else:
                wire.append({"role": m.role, "content": m.content})
        payload = {**params, "messages": wire}
        if system:
            given = payload.get("system")
            if isinstance(given, list):  # content blocks (prompt caching): add ours after
                payload["system"] = [*given, *({"type": "text", "text": s} for s in system)]
            else:
                payload["system"] = "\n\n".join([given, *system] if given else system)
        return payload

    def _response(self, body: Any, response: Response, model: Any) -> LLMResponse:
        blocks = body.get("content") if isinstance(body, dict) else None
        if not isinstance(blocks, list):
            error: ProviderError = self._format_error(response, "has no content list")
            raise error
        content = "".join(
            block["text"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        stop_reason = body.get("stop_reason")
        reported_model = body.get("model")
        request_id = self._request_id(response)
        metadata: dict[str, Any] = {"raw": body}
        if request_id:
            metadata["request_id"] = request_id
        return LLMResponse(
            content,
            model=reported_model if isinstance(reported_model, str) else str(model),
            finish_reason=stop_reason if isinstance(stop_reason, str) else None,
            usage=_usage(body.get("usage")),
            metadata=metadata,
        )


def _stop_sequences(stop: object) -> list[Any]:
    """OpenAI's ``stop`` (a string or a list of them) as Anthropic's ``stop_sequences``."""
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list | tuple):
        return list(stop)
    raise BadRequestError(
        f"anthropic: stop is a {type(stop).__name__}; give a string or a list of strings",
        provider="anthropic",
    )


def _usage(usage: object) -> dict[str, int] | None:
    """Anthropic's token counts under our keys (the originals kept beside them)."""
    if not isinstance(usage, dict):
        return None
    counts = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    input_tokens = counts.get("input_tokens")
    output_tokens = counts.get("output_tokens")
    if input_tokens is not None:
        counts["prompt_tokens"] = input_tokens + sum(counts.get(k, 0) for k in _CACHE_KEYS)
    if output_tokens is not None:
        counts["completion_tokens"] = output_tokens
    if input_tokens is not None and output_tokens is not None:
        counts["total_tokens"] = counts["prompt_tokens"] + output_tokens
    return counts or None
