"""An LLM task with a schema: each turn sent as any call is, the loop in ``_structured``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse
from .._flow._governor import Governor
from .._flow._limiter import Limiter
from .._structured._loop import Cost, Done, run_structured
from ._attempt import run_llm, shared_cooldown
from ._outcome import Ok
from ._retry import RetryConfig
from ._tasks import LLMTask


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
    """The task's turns: every one (re-asks too) limited, paced, timed and retried."""
    assert task.structured is not None

    plain = per_attempt is None and limit is None

    async def ask(
        messages: tuple[LLMMessage, ...], sent: Mapping[str, Any]
    ) -> tuple[LLMResponse | None, Exception | None, int]:
        first_error: Exception | None = None
        held = True
        if plain and (governor is None or governor.idle()):
            # As the executor's own fast path: a plain call first, the retry machinery
            # only if it fails; the governor counts it and learns from its answer.
            if governor is not None:
                governor.unpaced += 1
            try:
                answer = await provider.complete(messages, config_overrides=dict(sent))
            except Exception as exc:
                if governor is not None:
                    governor.unpaced -= 1
                    cooldown = shared_cooldown(exc, policy)
                    held = governor.learn(sent, exc, cooldown=cooldown)
                if policy.trivial:
                    return None, exc, 1
                first_error = exc
            except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
                if governor is not None:
                    governor.unpaced -= 1
                raise
            else:
                if governor is not None:
                    governor.unpaced -= 1
                    governor.answered()
                    if answer.rate_limits is not None:
                        governor.learn(sent, answer)
                return answer, None, 1
        turn = task if messages is task.messages else attrs.evolve(task, messages=messages)
        outcome = await run_llm(
            provider,
            turn,
            sent,
            policy,
            per_attempt,
            limit,
            first_error=first_error,
            first_held=held,
            governor=governor,
        )
        if type(outcome) is Ok:
            return outcome.value, None, outcome.attempts
        return None, outcome.error, outcome.attempts  # type: ignore[union-attr]

    return await run_structured(ask, task.structured, task.messages, overrides, tag=tag, cost=cost)
