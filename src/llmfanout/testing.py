"""Helpers for testing code that uses llmfanout: script an :class:`EchoProvider` with these."""

from __future__ import annotations

from collections.abc import Mapping

from ._echo import EchoCall, EchoProvider, ErrorResponse, ResponseQueueExhausted
from ._types import LLMResponse

__all__ = ["EchoCall", "EchoProvider", "ErrorResponse", "ResponseQueueExhausted", "text_response"]


def text_response(
    content: str,
    *,
    model: str = "test-model",
    finish_reason: str | None = "stop",
    usage: Mapping[str, int] | None = None,
) -> LLMResponse:
    """An ``LLMResponse`` with ``content``, for an :class:`EchoProvider` script."""
    return LLMResponse(content, model=model, finish_reason=finish_reason, usage=usage)
