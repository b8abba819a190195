"""OpenAI's Batch API for ``/v1/embeddings``: one text per request line, at half price.

The lines are ``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body":
{"model", "input", "encoding_format": "base64"}}``; each result's body is an embeddings
list of one vector, handed back as an ``LLMResponse`` with no content and the vector in
``metadata["embedding"]`` (a list of floats), for the output row's ``"embedding"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._base._types import LLMMessage, LLMResponse
from ..errors import BadRequestError, ResponseFormatError
from ..providers._embeddings_format import openai_usage, openai_vectors
from ._api import OpenAIBatchAPI


class OpenAIEmbeddingsBatchAPI(OpenAIBatchAPI):
    """OpenAI's Batch API on ``/v1/embeddings``: a task's one user text is the input
    (``llmfanout batch --endpoint embeddings`` makes one per ``{"id", "text"}`` row)."""

    endpoint = "/v1/embeddings"

    def body(
        self, messages: Sequence[LLMMessage], overrides: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        provider = self.provider
        params = provider._merge(overrides) if overrides else provider._params
        texts = [m.text for m in messages if m.role == "user"]
        if len(texts) != 1 or not texts[0]:
            raise BadRequestError(
                "openai: an embeddings batch takes one text per request (one user "
                "message); this one has "
                + (f"{len(texts)} user messages" if len(texts) != 1 else "an empty one"),
                provider="openai",
            )
        body: dict[str, Any] = {
            "model": params.get("model", provider.model),
            "input": texts[0],
            "encoding_format": "base64",
        }
        if params.get("dimensions") is not None:
            body["dimensions"] = params["dimensions"]
        return body

    def _answer(self, body: Any, request_id: str | None) -> LLMResponse:
        try:
            (vector,) = openai_vectors(body, 1)
        except ValueError as exc:
            raise ResponseFormatError(
                f"openai: an embeddings batch result {exc}", provider="openai"
            ) from None
        model = body.get("model") if isinstance(body, dict) else None
        metadata: dict[str, Any] = {"embedding": list(vector)}
        if request_id:
            metadata["request_id"] = request_id
        return LLMResponse(
            "",
            model=model if isinstance(model, str) else self.provider.model,
            usage=openai_usage(body),
            metadata=metadata,
        )
