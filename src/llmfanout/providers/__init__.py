"""LLM providers over HTTP: :class:`OpenAIProvider` and :class:`AnthropicProvider`."""

from .._base._public import publish
from ._anthropic import AnthropicProvider
from ._openai import OpenAIProvider

__all__ = ["AnthropicProvider", "OpenAIProvider"]

publish(__name__, globals(), __all__)
