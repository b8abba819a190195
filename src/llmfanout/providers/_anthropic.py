"""AnthropicProvider: the Messages API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from .._base._types import LLMMessage, LLMResponse, to_messages
from ..errors import BadRequestError, ProviderError
from ._anthropic_format import (
    AnthropicStream,
    messages_to_wire,
    response_format_to_wire,
    text_and_tool_calls,
    tool_choice_to_wire,
    tools_to_wire,
    usage_from,
)
from ._config import HTTPOptions, check_positive_int
from ._http import HTTPProvider
from ._streaming import Accumulator
from ._transports._base import Response

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header sent unless ``headers=`` gives another."""


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
    content parts, tool calls and tool answers are mapped to Anthropic's blocks (see
    ``docs/messages-and-tools.md``), and a part it cannot express is refused with a
    ``BadRequestError`` before anything is sent; ``tools`` and ``tool_choice`` in OpenAI's
    format are rewritten in Anthropic's (its own format passes unchanged);
    ``max_tokens`` (which the API requires) defaults to 1024. OpenAI's
    ``response_format`` is rewritten too: a ``json_schema`` one becomes a single tool
    with that input schema, forced by ``tool_choice`` (its input is the object), a
    ``json_object`` one a line of the system prompt. Per call,
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
        system, wire = messages_to_wire(to_messages(messages, "AnthropicProvider"))
        payload = {**params, "messages": wire}
        if "tools" in payload:  # OpenAI's spelling, so one set of overrides fits both
            payload["tools"] = tools_to_wire(payload["tools"])
        if "tool_choice" in payload:
            payload["tool_choice"] = tool_choice_to_wire(payload["tool_choice"])
        if "response_format" in payload:  # OpenAI's structured output: a forced tool
            line = response_format_to_wire(payload)
            if line is not None:
                system = [*system, line]
        if system:
            given = payload.get("system")
            if isinstance(given, list):  # content blocks (prompt caching): add ours after
                payload["system"] = [*given, *({"type": "text", "text": s} for s in system)]
            else:
                payload["system"] = "\n\n".join([given, *system] if given else system)
        return payload

    def _accumulator(self) -> Accumulator:
        return AnthropicStream()

    def _response(self, body: Any, response: Response, model: Any) -> LLMResponse:
        blocks = body.get("content") if isinstance(body, dict) else None
        if not isinstance(blocks, list):
            error: ProviderError = self._format_error(response, "has no content list")
            raise error
        content, tool_calls = text_and_tool_calls(blocks)
        usage, finish = usage_from(body.get("usage")), body.get("stop_reason")
        return self._answer(body, response, model, content, finish, usage, tool_calls)


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
