"""GeminiProvider: Google's Gemini API (``generativelanguage``), natively."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Unpack
from urllib.parse import quote

from .._base._embeddings import EmbeddingCaps, EmbeddingResponse
from .._base._types import LLMMessage, LLMResponse, to_messages
from ..errors import ContentBlockedError, ProviderError
from ._config import HTTPOptions
from ._embeddings_format import GEMINI_CAPS, gemini_body, gemini_vectors
from ._errors import BODY_KEEP, safe_headers
from ._gemini_format import (
    GeminiStream,
    blocked_reason,
    finish_reason,
    request_body,
    text_and_tool_calls,
    usage_from,
)
from ._http import HTTPProvider
from ._streaming import Accumulator
from ._transports._base import Response

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


def model_path(model: str) -> str:
    """``/models/{model}`` (a name with a collection, ``tunedModels/x``, is kept as is)."""
    name = model if "/" in model else f"models/{model}"
    return "/" + quote(name, safe="/-._~")


class GeminiProvider(HTTPProvider):
    """Calls ``POST {base_url}/models/{model}:generateContent`` (and ``:streamGenerateContent``).

    ``async with GeminiProvider("gemini-2.5-flash") as provider: ...`` or call
    ``aclose()`` when done (the pool is per event loop, as for OpenAIProvider). The key
    comes from ``api_key``, else ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``; it is sent
    only in the ``x-goog-api-key`` header, never in the URL, so no log of addresses can
    hold it. ``base_url`` defaults to ``GEMINI_BASE_URL``, else
    ``https://generativelanguage.googleapis.com/v1beta``.

    Messages map to ``contents`` (the assistant is ``model``; system messages go to
    ``systemInstruction``; images to ``inlineData`` or ``fileData``; tool calls and tool
    answers to ``functionCall`` and ``functionResponse`` parts). Per call,
    ``config_overrides`` are merged over ``default_params``: ``max_tokens``,
    ``temperature``, ``top_p``, ``stop``, ``seed`` and any other option go into
    ``generationConfig`` (snake_case or camelCase); ``tools`` and ``tool_choice`` in
    OpenAI's format are rewritten in Gemini's; ``safetySettings``, ``cachedContent`` and
    Gemini's own ``tools`` and ``toolConfig`` pass as given. ``model`` picks the model's
    path; ``stream=True`` or ``on_text`` read the answer as server-sent events.

    The answer: text from candidate 0 (thoughts left out), ``finish_reason`` ``"stop"``
    or ``"length"`` (others in lower case), ``usage`` from ``usageMetadata`` (thinking
    tokens count as completion tokens, ``cachedContentTokenCount`` as
    ``cached_prompt_tokens``). A prompt or answer withheld by the safety filter raises
    :class:`~llmfanout.errors.ContentBlockedError` (not retried). Error statuses raise
    the usual :class:`~llmfanout.errors.ProviderError` subclasses, Google's status name
    (``RESOURCE_EXHAUSTED``...) in ``error_type``; a 429's ``RetryInfo`` delay is its
    ``retry_after``. The other options are those of
    :class:`~llmfanout.providers.OpenAIProvider`.
    """

    provider_name = "gemini"
    api_key_env = "GEMINI_API_KEY"
    base_url_env = "GEMINI_BASE_URL"
    default_base_url = GEMINI_BASE_URL
    endpoint = ""
    reports_rate_limits = False  # Gemini sends no rate-limit headers to pace by

    def __init__(self, model: str, **options: Unpack[HTTPOptions]) -> None:
        if (
            options.get("api_key") is None
            and options.get("api_key_env") is None
            and not os.environ.get(self.api_key_env, "").strip()
        ):
            google = os.environ.get("GOOGLE_API_KEY", "").strip()
            if google:  # a refusal then names the variable the key came from
                options["api_key"], options["api_key_env"] = google, "GOOGLE_API_KEY"
        super().__init__(model, **options)
        self._paths = {model: self._paths_for(model)}

    embedding_caps: EmbeddingCaps = GEMINI_CAPS
    """The most one ``embed`` request carries (``batchEmbedContents`` takes 100)."""
    embedding_task_type: str | None = None
    """``taskType`` for ``embed`` (``"RETRIEVAL_DOCUMENT"``, ``"SEMANTIC_SIMILARITY"``...);
    None leaves it to the model."""

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingResponse:
        """Embed ``texts`` in one ``POST {base_url}/models/{model}:batchEmbedContents``.

        One vector per text, in order; ``dimensions`` is ``outputDimensionality``. Raises
        as ``complete`` does, and ``ResponseFormatError`` for an answer without one
        vector per text.
        """
        name = model or self.model
        path = model_path(name)
        body = gemini_body(texts, path[1:], dimensions, self.embedding_task_type)
        response = await self.request("POST", f"{path}:batchEmbedContents", json=body)
        try:
            vectors = gemini_vectors(self._json(response), len(texts))
        except ValueError as exc:
            problem = str(exc)
        else:
            return EmbeddingResponse(vectors, model=name)
        error: ProviderError = self._format_error(response, problem)
        raise error

    def _paths_for(self, model: str) -> tuple[str, str]:
        path = model_path(model)
        return f"{path}:generateContent", f"{path}:streamGenerateContent?alt=sse"

    def _initial_params(self) -> dict[str, Any]:
        return {"model": self.model, **self.default_params}

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def _path(self, params: Mapping[str, Any], *, stream: bool) -> str:
        model = params.get("model", self.model)
        paths = self._paths.get(model)
        if paths is None:
            if not isinstance(model, str) or not model.strip():
                raise ValueError(f"GeminiProvider: model is {model!r}; give a model name")
            paths = self._paths[model] = self._paths_for(model)
        return paths[1] if stream else paths[0]

    def _payload(self, messages: Sequence[LLMMessage], params: dict[str, Any]) -> dict[str, Any]:
        return request_body(to_messages(messages, "GeminiProvider"), params)

    def _accumulator(self) -> Accumulator:
        return GeminiStream()

    def _response(self, body: Any, response: Response, model: Any) -> LLMResponse:
        if not isinstance(body, dict):
            error: ProviderError = self._format_error(response, "is not a JSON object")
            raise error
        reason = blocked_reason(body)
        if reason is not None:
            raise self._blocked(body, response, reason)
        candidates = body.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise self._format_error(response, "has no candidates")
        candidate = candidates[0]
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        text, tool_calls = text_and_tool_calls(parts)
        reported_model = body.get("modelVersion")
        metadata: dict[str, Any] = {"raw": body}
        rid = body.get("responseId") or self._request_id(response)
        if isinstance(rid, str) and rid:
            metadata["request_id"] = rid
        return LLMResponse(
            text,
            model=reported_model if isinstance(reported_model, str) else str(model),
            finish_reason=finish_reason(candidate.get("finishReason")),
            usage=usage_from(body.get("usageMetadata")),
            metadata=metadata,
            tool_calls=tool_calls,
        )

    def _blocked(self, body: dict[str, Any], response: Response, reason: str) -> ProviderError:
        feedback = body.get("promptFeedback")
        blocked_prompt = isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str)
        what = "prompt" if blocked_prompt else "answer"
        text = json.dumps(body, ensure_ascii=False)  # already redacted, as every answer is
        return ContentBlockedError(
            f"gemini: the {what} was blocked ({reason}); the same request is blocked again, "
            "so it is not retried: rephrase it, or relax safetySettings where allowed",
            status_code=response.status,
            retryable=False,
            error_type=reason,
            provider=self.provider_name,
            body=text[:BODY_KEEP] or None,
            headers=safe_headers(response, self._redactor),
        )
