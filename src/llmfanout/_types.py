"""Messages, responses and the provider protocol: the vocabulary every other module speaks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


def a_kind(value: object) -> str:
    """``value``'s type with its article, for messages: "an int", "a dict", "an LLMTask"."""
    name = type(value).__name__
    if name[:2].isupper():  # an acronym is read letter by letter: "an LLMTask", "a URL"
        article = "an" if name[0] in "AEFHILMNORSX" else "a"
    else:
        article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def _check_role(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in ROLES:
        raise ValueError(f"LLMMessage.role is {value!r}; use one of {', '.join(sorted(ROLES))}")


def _check_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{type(instance).__name__}.{attribute.name} must be a str, not {type(value).__name__}"
        )


@attrs.frozen
class LLMMessage:
    """One chat message: a ``role`` (system, user, assistant or tool) and its text.

    Raises ``ValueError`` for an unknown role and ``TypeError`` for non-string content.
    """

    role: Role = attrs.field(validator=_check_role)
    content: str = attrs.field(validator=_check_str)
    name: str | None = None


def _freeze_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else dict(value)


@attrs.frozen
class LLMResponse:
    """What a provider returns for one call.

    ``usage`` holds ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` where
    the provider reports them; ``metadata`` holds anything provider-specific (the raw
    body, a request id).
    """

    content: str
    model: str = ""
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

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
