"""LLM providers over HTTP: :class:`OpenAIProvider` and :class:`AnthropicProvider`."""

from ._anthropic import AnthropicProvider
from ._openai import OpenAIProvider

__all__ = ["AnthropicProvider", "OpenAIProvider"]
