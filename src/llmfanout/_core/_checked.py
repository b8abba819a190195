"""An LLM task with a schema: each turn sent as any call is, the loop in ``_structured``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse
from .._flow._governor import Governor
from .._flow._limiter import Limiter
from .._structured._loop import Cost, Done, first_valid, refused, run_structured, sent_with
from ._attempt import run_llm, shared_cooldown
from ._outcome import Ok
from ._retry import RetryConfig
from ._tasks import LLMTask

Turn = tuple[LLMResponse | None, Exception | None, int]


async def run_checked(
    provider: AsyncLLMProvider,
    tag: str,
    task: LLMTask,
    overrides: Mapping[str, Any] | None,
    policy: RetryConfig,
    per_attempt: float | None,
    limit: Limiter | None,
    governor: Governor | None,
    cost: Cost | None,
) -> Done:
    """The task's turns: every one (re-asks too) limited, paced, timed and retried.

    The first turn takes the executor's short path when it can (a plain call; the loop
    only if that answer fails its schema or the call fails): most answers validate.
    """
    spec = task.structured
    assert spec is not None
    stop = refused(spec, tag, cost)
    if stop is not None:
        return stop
    sent = sent_with(spec, overrides)
    plain = per_attempt is None and limit is None

    async def retried(
        messages: tuple[LLMMessage, ...], error: Exception | None, held: bool
    ) -> Turn:
        """A turn through the retry machinery (after ``error``, a plain first try's)."""
        turn = task if messages is task.messages else attrs.evolve(task, messages=messages)
        outcome = await run_llm(
            provider,
            turn,
            sent,
            policy,
            per_attempt,
            limit,
            first_error=error,
            first_held=held,
            governor=governor,
        )
        if type(outcome) is Ok:
            return outcome.value, None, outcome.attempts
        return None, outcome.error, outcome.attempts  # type: ignore[union-attr]

    async def ask(messages: tuple[LLMMessage, ...], sent: Mapping[str, Any]) -> Turn:
        if not (plain and (governor is None or governor.idle())):
            return await retried(messages, None, True)
        answer, error, held = await _plain_call(provider, messages, sent, governor, policy)
        if answer is not None:
            return answer, None, 1
        return (None, error, 1) if policy.trivial else await retried(messages, error, held)

    first: Turn | None = None
    if plain and (governor is None or governor.idle()):
        # ask()'s first turn written out, to validate a good answer on the short path
        answer, error, held = await _plain_call(provider, task.messages, sent, governor, policy)
        if answer is not None:
            value = first_valid(spec, answer)
            if value is not None:
                return Done(value, None, 1, 0)
            first = (answer, None, 1)
        elif policy.trivial:
            first = (None, error, 1)
        else:
            first = await retried(task.messages, error, held)
    return await run_structured(ask, spec, task.messages, sent, tag=tag, cost=cost, first=first)


async def _plain_call(
    provider: AsyncLLMProvider,
    messages: tuple[LLMMessage, ...],
    sent: Mapping[str, Any],
    governor: Governor | None,
    policy: RetryConfig,
) -> tuple[LLMResponse | None, Exception | None, bool]:
    """As the executor's own fast path: one plain call, the governor counting it and
    learning from its answer. ``(answer, None, True)``, or ``(None, error, held)`` where
    ``held`` says the pacer keeps the error's pause."""
    if governor is not None:
        governor.unpaced += 1
    try:
        answer = await provider.complete(messages, config_overrides=dict(sent))
    except Exception as exc:
        held = True
        if governor is not None:
            governor.unpaced -= 1
            held = governor.learn(sent, exc, cooldown=shared_cooldown(exc, policy))
        return None, exc, held
    except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
        if governor is not None:
            governor.unpaced -= 1
        raise
    if governor is not None:
        governor.unpaced -= 1
        governor.answered()
        if answer.rate_limits is not None:
            governor.learn(sent, answer)
    return answer, None, True
