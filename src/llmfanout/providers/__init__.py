"""LLM providers over HTTP: :class:`OpenAIProvider`, :class:`AzureOpenAIProvider` and
:class:`AnthropicProvider`."""

from .._base._public import publish
from ._anthropic import AnthropicProvider
from ._azure import AzureOpenAIProvider
from ._openai import OpenAIProvider

__all__ = ["AnthropicProvider", "AzureOpenAIProvider", "OpenAIProvider"]

publish(__name__, globals(), __all__)
