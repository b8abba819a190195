"""Small helpers shared by the test modules."""

from __future__ import annotations

from typing import Any

from llmfanout import LLMMessage, LLMTask


def ask(text: str, **kwargs: Any) -> LLMTask:
    """An LLM task of one user message."""
    return LLMTask([LLMMessage("user", text)], **kwargs)
