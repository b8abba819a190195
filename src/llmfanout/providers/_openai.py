"""OpenAIProvider: the Chat Completions API, and every server that speaks it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._base._embeddings import EmbeddingCaps, EmbeddingResponse
from .._base._types import LLMMessage, LLMResponse, to_messages
from ..errors import BadRequestError, ProviderError
from ._embeddings_format import OPENAI_CAPS, openai_body, openai_usage, openai_vectors
from ._http import HTTPProvider
from ._openai_format import (
    OpenAIStream,
    json_object_request,
    messages_to_wire,
    refuses_json_schema,
    tool_calls_from,
    usage_from,
    wants_json_schema,
)
from ._streaming import Accumulator
from ._transports._base import Response


class OpenAIProvider(HTTPProvider):
    """Calls ``POST {base_url}/chat/completions`` over a pool of kept-alive connections.

    ``async with OpenAIProvider("gpt-4o-mini") as provider: ...`` or call ``aclose()``
    when done; the pool is per event loop, so one provider may serve successive
    ``anyio.run()`` calls. The key comes from ``api_key``, else ``OPENAI_API_KEY`` (or
    the variable ``api_key_env`` names); without one the constructor raises
    ``ValueError`` naming the variable. ``base_url``
    (else ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``) points it at any
    OpenAI-compatible server (vLLM, Ollama, Groq...).

    Per call, ``config_overrides`` (``model``, ``temperature``, ``max_tokens``, ``top_p``,
    ``stop``, ``seed``, anything else) are merged over ``default_params`` into the JSON
    body; a None value drops the key.

    Options (shared with :class:`~llmfanout.providers.AnthropicProvider`):

    - ``timeout`` (seconds, default 60, or an ``httpx.Timeout``) bounds each read (the
      longest the server may stay silent), each write and the wait for a pooled
      connection; connecting gets at most 10 s.
    - ``total_timeout`` (seconds, default 600; None for none) bounds each attempt as a
      whole, from asking for a connection to the last byte of the answer: a server that
      drips a byte at a time cannot hold a call forever.
    - ``max_connections`` (default 100) caps open connections per event loop: set it to
      at least the executor's ``max_concurrency``. Idle connections are kept alive for
      5 s; one the server closed while idle is never reused.
    - ``max_response_bytes`` (default 32 MiB) caps a response body, after decompression;
      a larger one raises a ``ResponseFormatError`` (not retried).
    - ``verify``: TLS certificate checks (on by default, with ``SSL_CERT_FILE`` and
      ``SSL_CERT_DIR`` honoured); a CA bundle path or an ``ssl.SSLContext`` for a private
      CA; False turns them off.
    - ``api_key_env``: the environment variable the key is read from when ``api_key`` is
      not given (default the provider's own). Give it beside ``api_key`` when you read
      the key from a variable yourself: a 401 or 403 then asks to check that variable.
    - ``headers`` add to or replace the default headers; ``default_params`` go into
      every body.
    - ``http_client``: an ``httpx.AsyncClient`` of your own, used instead of the pool
      (its limits apply, ``max_connections`` does not; ``aclose()`` leaves it open).
      Proxies from the environment (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) are
      honoured: where one applies, requests go through httpx, which speaks to proxies.

    Redirects are never followed (the key would go along).

    Structured output: ``response_format`` goes into the body as given. When a call asks
    for ``{"type": "json_schema", ...}`` and the server refuses it (a 400 or 422 naming
    ``response_format`` or ``json_schema``, as many compatible servers answer), the call
    is sent again at once as ``{"type": "json_object"}`` with the schema in a system
    message, and every later call to that model on this provider goes that way directly.

    ``complete`` raises :class:`~llmfanout.errors.ProviderError` subclasses, retryable as
    the official SDK decides; it never retries on its own (give the executor a
    ``RetryConfig``). The key never appears in a repr, an error or a log line.
    """

    provider_name = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    endpoint = "/chat/completions"

    embedding_caps: EmbeddingCaps = OPENAI_CAPS
    """The most one ``embed`` request carries (OpenAI's 2048 inputs, 300,000 tokens); set
    it on the provider for a compatible server with other caps."""
    embedding_encoding: str = "base64"
    """``encoding_format`` asked of ``/embeddings``: base64 decodes faster than JSON numbers;
    set ``"float"`` on the provider for a compatible server that cannot send base64."""

    _json_object_models: frozenset[str] = frozenset()
    """Models whose server refused ``json_schema``: they get ``json_object`` instead."""

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        if not wants_json_schema(config_overrides):
            return await super().complete(messages, config_overrides)
        assert config_overrides is not None
        model = str(config_overrides.get("model") or self.model)
        if model not in self._json_object_models:
            try:
                return await super().complete(messages, config_overrides)
            except BadRequestError as exc:
                if not refuses_json_schema(exc):
                    raise
                # A set replaced, never changed in place: calls on other loops read it.
                self._json_object_models = self._json_object_models | {model}
        fallback, params = json_object_request(
            to_messages(messages, "OpenAIProvider"), config_overrides
        )
        return await super().complete(fallback, params)

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingResponse:
        """Embed ``texts`` in one ``POST {base_url}/embeddings``; one vector per text, in order.

        ``model`` defaults to the provider's. Raises a
        :class:`~llmfanout.errors.ProviderError` subclass as ``complete`` does (a request
        over the caps is a ``BadRequestError``), and ``ResponseFormatError`` for an answer
        without one vector per text.
        """
        name = model or self.model
        body = openai_body(texts, name, dimensions, self.embedding_encoding)
        response = await self.request("POST", "/embeddings", json=body)
        answer = self._json(response)
        try:
            vectors = openai_vectors(answer, len(texts))
        except ValueError as exc:
            problem = str(exc)
        else:
            reported = answer.get("model")
            return EmbeddingResponse(
                vectors,
                model=reported if isinstance(reported, str) else name,
                usage=openai_usage(answer),
            )
        error: ProviderError = self._format_error(response, problem)
        raise error

    def _payload(self, messages: Sequence[LLMMessage], params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "messages": messages_to_wire(to_messages(messages, "OpenAIProvider"))}

    def _accumulator(self) -> Accumulator:
        return OpenAIStream()

    def _stream_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        # Usage arrives in a last chunk only when asked for; a caller's own choice stands.
        payload.setdefault("stream_options", {"include_usage": True})
        return payload

    def _response(self, body: Any, response: Response, model: Any) -> LLMResponse:
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
        usage = usage_from(body.get("usage"))
        calls = tool_calls_from(choice["message"].get("tool_calls"))
        finish = choice.get("finish_reason")
        return self._answer(body, response, model, content, finish, usage, calls)
