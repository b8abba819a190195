"""Messages, responses and the provider protocol: the vocabulary every other module speaks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ._advertised import RateLimitInfo
from ._messages import (
    ROLES,
    ContentPart,
    ImagePart,
    LLMMessage,
    OtherPart,
    Role,
    TextPart,
    ToolCall,
    a_kind,
    to_message,
    to_messages,
)

__all__ = [
    "ROLES",
    "AsyncLLMProvider",
    "Cacheable",
    "ContentPart",
    "ImagePart",
    "LLMMessage",
    "LLMResponse",
    "LoopBound",
    "OtherPart",
    "Role",
    "TextPart",
    "ToolCall",
    "a_kind",
    "to_message",
    "to_messages",
]


def _to_tuple(value: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


@attrs.frozen
class LLMResponse:
    """What a provider returns for one call.

    ``usage`` holds ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` where
    the provider reports them, and ``cached_prompt_tokens`` (prompt tokens read from the
    provider's cache, counted in ``prompt_tokens`` too) and ``cache_write_tokens``
    (Anthropic's cache writes, likewise) where it reports those. ``tool_calls`` holds the
    tool calls the model made (``content`` may then be empty). ``metadata`` holds anything
    provider-specific (the raw body, a request id, ``time_to_first_token_s`` when streamed).
    ``rate_limits`` holds the limits the server advertised in its headers, which the
    executor paces by. ``parsed`` holds the validated object when the task asked for one
    (``response_model=`` or ``response_schema=``), else None; ``content`` is then the raw
    text it was parsed from.
    """

    content: str
    model: str = ""
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=_to_tuple, kw_only=True)
    rate_limits: RateLimitInfo | None = attrs.field(default=None, kw_only=True, eq=False)
    """The rate limits the server advertised with this answer (None: it sent none)."""
    parsed: Any = attrs.field(default=None, kw_only=True)
    """The validated object of a task with a schema (None without one)."""

    def message(self) -> LLMMessage:
        """This answer as the ``assistant`` message to send back, tool calls and all."""
        return LLMMessage("assistant", self.content, tool_calls=self.tool_calls)

    @property
    def total_tokens(self) -> int | None:
        """``usage['total_tokens']``, or the sum of prompt and completion tokens, or None."""
        usage = self.usage
        if not usage:
            return None
        total = usage.get("total_tokens")
        if total is not None:
            return total
        parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        if all(p is None for p in parts):
            return None
        return sum(p for p in parts if p is not None)


@runtime_checkable
class AsyncLLMProvider(Protocol):
    """Anything with an async ``complete`` method is a provider; no base class is needed.

    The executor calls ``await provider.complete(messages, config_overrides=overrides)``,
    where ``overrides`` is a mapping of per-call settings (``temperature``, ``model``,
    ``max_tokens``...) or ``None``. Raise an exception to fail the attempt: one with
    ``retryable = False`` is never retried, one with ``retry_after`` (seconds) delays
    the next attempt at least that long.
    """

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse: ...


@runtime_checkable
class LoopBound(Protocol):
    """A provider whose resources (a connection pool) belong to the running event loop.

    ``release_loop()`` closes the running loop's share and leaves the provider usable from
    the next loop; the sync entry points call it as their own loop ends. A provider
    without it is left to its owner: its ``aclose()`` may mean "for good".
    """

    async def release_loop(self) -> None: ...


@runtime_checkable
class Cacheable(Protocol):
    """A provider that says what it would send for a call, so a cache can key it.

    ``cache_request(messages, config_overrides)`` returns plain JSON data holding
    everything that reaches the wire and can change the answer: the provider's kind, its
    endpoint (origin and path of the base URL), the request body built from the messages
    and the merged parameters, and protocol headers that select behaviour (an API
    version). It leaves out what never reaches the wire (an ``on_text`` callback, the
    client-side ``stream`` choice) and anything secret: never a key or a credential
    header. A provider without it is keyed by its class, its ``model`` and the call's
    messages and overrides as given.
    """

    def cache_request(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]: ...
