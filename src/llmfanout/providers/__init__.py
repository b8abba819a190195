"""LLM providers over HTTP: :class:`OpenAIProvider`, :class:`AzureOpenAIProvider`,
:class:`AnthropicProvider` and :class:`GeminiProvider`."""

from .._base._public import publish
from ._anthropic import AnthropicProvider
from ._azure import AzureOpenAIProvider
from ._gemini import GeminiProvider
from ._openai import OpenAIProvider

__all__ = ["AnthropicProvider", "AzureOpenAIProvider", "GeminiProvider", "OpenAIProvider"]

publish(__name__, globals(), __all__)
