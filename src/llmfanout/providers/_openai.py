"""OpenAIProvider: the Chat Completions API, and every server that speaks it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from .._types import LLMMessage, LLMResponse, to_messages
from ..errors import ProviderError
from ._http import HTTPProvider
from ._openai_format import messages_to_wire, tool_calls_from, usage_from


class OpenAIProvider(HTTPProvider):
    """Calls ``POST {base_url}/chat/completions`` over one pooled ``httpx.AsyncClient``.

    ``async with OpenAIProvider("gpt-4o-mini") as provider: ...`` or call ``aclose()``
    when done; the pool is per event loop, so one provider may serve successive
    ``anyio.run()`` calls. The key comes from ``api_key``, else ``OPENAI_API_KEY``; without one the
    constructor raises ``ValueError`` naming the variable. ``base_url`` points it at any
    OpenAI-compatible server (vLLM, Ollama, Groq...).

    Per call, ``config_overrides`` (``model``, ``temperature``, ``max_tokens``, ``top_p``,
    ``stop``, ``seed``, anything else) are merged over ``default_params`` into the JSON
    body; a None value drops the key. ``timeout`` (seconds, or an ``httpx.Timeout``) bounds
    reading, writing and waiting for a pooled connection; connecting gets at most 10 s.
    ``max_connections`` sizes the pool: set it to at least the executor's
    ``max_concurrency``. With your own ``http_client`` its pool is used and
    ``max_connections`` is ignored; ``aclose()`` leaves it open.

    ``complete`` raises :class:`~llmfanout.errors.ProviderError` subclasses, retryable as
    the official SDK decides; it never retries on its own (give the executor a
    ``RetryConfig``). The key never appears in a repr, an error or a log line.
    """

    provider_name = "openai"
    api_key_env = "OPENAI_API_KEY"
    endpoint = "/chat/completions"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        default_params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = 100,
    ) -> None:
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            default_params=default_params,
            headers=headers,
            http_client=http_client,
            max_connections=max_connections,
        )
        self._params: dict[str, Any] = {"model": self.model, **self.default_params}

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def _payload(self, messages: Sequence[LLMMessage], params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "messages": messages_to_wire(to_messages(messages, "OpenAIProvider"))}

    def _response(self, body: Any, response: httpx.Response, model: Any) -> LLMResponse:
        problem: str | None = None
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            problem = "has no choices[0].message.content"
        else:
            if content is None:  # tool calls only, or a refusal (the raw body holds it)
                content = ""
            elif isinstance(content, list):  # content parts, from some compatible servers
                content = "".join(
                    part["text"]
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
            elif not isinstance(content, str):
                problem = "has a choices[0].message.content that is not text"
        if problem is not None:
            error: ProviderError = self._format_error(response, problem)
            raise error
        finish_reason = choice.get("finish_reason")
        reported_model = body.get("model")
        counts = usage_from(body.get("usage"))
        request_id = response.headers.get("x-request-id")
        metadata: dict[str, Any] = {"raw": body}
        if request_id:
            metadata["request_id"] = request_id
        return LLMResponse(
            content,
            model=reported_model if isinstance(reported_model, str) else str(model),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            usage=counts,
            metadata=metadata,
            tool_calls=tool_calls_from(choice["message"].get("tool_calls")),
        )
