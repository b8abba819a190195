"""LLM providers over HTTP: :class:`OpenAIProvider`, :class:`AzureOpenAIProvider`,
:class:`AnthropicProvider` and :class:`GeminiProvider`.

They load on first use (PEP 562): the HTTP machinery costs every process's start, and
a run over ``EchoProvider`` (``providers._echo``, which imports this package) needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._base._public import publish

if TYPE_CHECKING:
    from ._anthropic import AnthropicProvider
    from ._azure import AzureOpenAIProvider
    from ._gemini import GeminiProvider
    from ._openai import OpenAIProvider

__all__ = ["AnthropicProvider", "AzureOpenAIProvider", "GeminiProvider", "OpenAIProvider"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # All four at once: they share the heavy part (the HTTP base), and each is published
    # before any code can reach it through another (AzureOpenAIProvider's base, say).
    from ._anthropic import AnthropicProvider
    from ._azure import AzureOpenAIProvider
    from ._gemini import GeminiProvider
    from ._openai import OpenAIProvider

    loaded = {
        "AnthropicProvider": AnthropicProvider,
        "AzureOpenAIProvider": AzureOpenAIProvider,
        "GeminiProvider": GeminiProvider,
        "OpenAIProvider": OpenAIProvider,
    }
    globals().update(loaded)
    publish(__name__, loaded, __all__)
    return loaded[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
