"""A task's turns under its schema: ask, validate, re-ask with the errors, within budget.

The loop knows nothing of scheduling: ``ask`` (from the core) sends one turn through the
same path as any call (limits, pacing, time limit, transport retries) and reports the
answer or the error and the attempts it took. Usage is summed over every turn; a
re-ask is sent only while ``max_reasks`` and the budgets allow it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from .._base._types import LLMMessage, LLMResponse
from ..errors import ValidationFailed
from ._reask import answer_text, reask_turn
from ._spec import Structured

Ask = Callable[
    [tuple[LLMMessage, ...], Mapping[str, Any]],
    Awaitable[tuple[LLMResponse | None, Exception | None, int]],
]
"""One turn: ``(answer, None, attempts)`` or ``(None, error, attempts)``."""

Cost = Callable[[str, Mapping[str, int] | None], float | None]
"""USD for one answer's model and usage (None: no price for it)."""


@attrs.frozen
class Done:
    """How a structured task ended: ``value`` (its ``parsed`` set) or ``error``."""

    value: LLMResponse | None
    error: Exception | None
    attempts: int
    reasks: int


def add_usage(total: dict[str, int], usage: Mapping[str, int] | None) -> None:
    """Add one answer's token counts into ``total``, key by key."""
    if usage:
        for key, count in usage.items():
            total[key] = total.get(key, 0) + count


def _next_tokens(usage: Mapping[str, int] | None, errors: tuple[str, ...]) -> int:
    """A re-ask's likely tokens: the last prompt again, the last answer twice (as history
    and as the new answer), and the errors."""
    usage = usage or {}
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    return prompt + 2 * completion + sum(len(e) for e in errors) // 4 + 20


def _stopped_by(
    spec: Structured,
    reasks: int,
    spent: dict[str, int],
    spent_usd: float,
    answer: LLMResponse,
    errors: tuple[str, ...],
    cost: Cost | None,
) -> str | None:
    if reasks >= spec.max_reasks:
        return "max_reasks"
    next_tokens = _next_tokens(answer.usage, errors)
    if spec.token_budget is not None:
        total = spent.get("total_tokens", spent.get("prompt_tokens", 0))
        if total + next_tokens > spec.token_budget:
            return "token_budget"
    if spec.cost_budget is not None and cost is not None:
        completion = (answer.usage or {}).get("completion_tokens", 0)
        guess = {"prompt_tokens": next_tokens - completion, "completion_tokens": completion}
        if spent_usd + (cost(answer.model, guess) or 0.0) > spec.cost_budget:
            return "cost_budget"
    return None


_WHY = {
    "max_reasks": "max_reasks={n} reached",
    "token_budget": "token_budget={budget} would be passed by another re-ask",
    "cost_budget": "cost_budget=${budget} would be passed by another re-ask",
}


def _failed(
    tag: str,
    spec: Structured,
    history: list[tuple[str, tuple[str, ...]]],
    usage: dict[str, int],
    stopped_by: str,
) -> ValidationFailed:
    budget = spec.token_budget if stopped_by == "token_budget" else spec.cost_budget
    why = _WHY[stopped_by].format(n=spec.max_reasks, budget=budget)
    reasks = len(history) - 1
    last = "; ".join(history[-1][1][:3])
    message = (
        f"task {tag!r}: no answer matched the schema {spec.schema.name!r} after {reasks} "
        f"re-ask{'' if reasks == 1 else 's'} ({why}); last errors: {last}"
    )
    return ValidationFailed(
        message, tag=tag, attempts=tuple(history), usage=usage, stopped_by=stopped_by
    )


def with_parsed(
    answer: LLMResponse, raw: str, value: Any, usage: Mapping[str, int] | None
) -> LLMResponse:
    """``answer`` with ``content=raw``, ``parsed=value`` and ``usage``: every other field
    as it was. (Built field by field: ``attrs.evolve`` costs twice as much, once a call;
    a test checks that no field is left out.)"""
    return LLMResponse(
        raw,
        answer.model,
        answer.finish_reason,
        usage,
        answer.metadata,
        tool_calls=answer.tool_calls,
        rate_limits=answer.rate_limits,
        parsed=value,
    )


def sent_with(spec: Structured, overrides: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The overrides every turn sends: the task's, and the schema's ``response_format``."""
    if not overrides:
        return spec.schema.alone
    return {**overrides, "response_format": spec.schema.request}


def refused(spec: Structured, tag: str, cost: Cost | None) -> Done | None:
    """The task ended before its first turn, for options that cannot work here; or None."""
    if spec.cost_budget is not None and cost is None:
        error = ValueError(
            f"task {tag!r}: cost_budget needs prices to count cost by; give the executor "
            "prices= (a price table)"
        )
        return Done(None, error, 0, 0)
    return None


def first_valid(spec: Structured, answer: LLMResponse) -> LLMResponse | None:
    """The first answer with its ``parsed`` value, if it validates (the common case, on
    the short path: nothing to sum or count); else None, and the loop takes it from
    there with ``first=``."""
    raw, _ = answer_text(answer, spec.schema.name)
    checked = spec.schema.check(raw)
    if checked.errors:
        return None
    return with_parsed(answer, raw, checked.value, answer.usage)


async def run_structured(
    ask: Ask,
    spec: Structured,
    messages: tuple[LLMMessage, ...],
    sent: Mapping[str, Any],
    *,
    tag: str,
    cost: Cost | None,
    first: tuple[LLMResponse | None, Exception | None, int] | None = None,
) -> Done:
    """Ask until an answer validates, re-asking with the errors within the budget.

    ``sent``: the overrides of every turn (:func:`sent_with`); ``first``: the first turn's
    outcome when the caller has sent it already. Never raises but for cancellation: an
    error a turn raised ends the task with it, and running out of re-asks ends it with
    :class:`~llmfanout.errors.ValidationFailed`.
    """
    history: list[tuple[str, tuple[str, ...]]] = []
    usage: dict[str, int] = {}
    spent_usd = 0.0
    attempts = 0
    turn = messages
    while True:
        if first is not None:
            (answer, error, tries), first = first, None
        else:
            answer, error, tries = await ask(turn, sent)
        attempts += tries
        if answer is None:
            return Done(None, error, attempts, len(history))
        add_usage(usage, answer.usage)
        if cost is not None:
            spent_usd += cost(answer.model, answer.usage) or 0.0
        raw, call = answer_text(answer, spec.schema.name)
        checked = spec.schema.check(raw)
        if not checked.errors:
            value = with_parsed(answer, raw, checked.value, usage or None)
            return Done(value, None, attempts, len(history))
        history.append((raw, checked.errors))
        reasks = len(history) - 1
        stop = _stopped_by(spec, reasks, usage, spent_usd, answer, checked.errors, cost)
        if stop is not None:
            return Done(None, _failed(tag, spec, history, usage, stop), attempts, reasks)
        turn = (*turn, *reask_turn(answer, raw, call, checked.errors))
