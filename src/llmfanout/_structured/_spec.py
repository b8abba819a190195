"""What a task asks of its answers: its schema, how many re-asks, within what budget."""

from __future__ import annotations

from typing import Any

import attrs

from .._base._checks import whole_number
from ._schema import Schema, schema_for

DEFAULT_MAX_REASKS = 2


@attrs.frozen
class Structured:
    """A task's schema, ``max_reasks``, and the budgets that stop re-asking early."""

    schema: Schema
    max_reasks: int = DEFAULT_MAX_REASKS
    token_budget: int | None = None
    cost_budget: float | None = None


def structured_for(
    owner: str,
    response_model: object,
    response_schema: object,
    max_reasks: object,
    token_budget: object,
    cost_budget: object,
) -> Structured | None:
    """The task's :class:`Structured`, or None when it has no schema; raises naming
    ``owner`` (the task) and the field for a value that cannot work."""
    if response_model is None and response_schema is None:
        if max_reasks != DEFAULT_MAX_REASKS or token_budget is not None or cost_budget is not None:
            raise ValueError(
                f"{owner}: max_reasks, token_budget and cost_budget apply to a task with "
                "response_model= or response_schema=; give one"
            )
        return None
    if response_model is not None and response_schema is not None:
        raise ValueError(f"{owner}: give response_model= or response_schema=, not both")
    whole_number(max_reasks, f"{owner}: max_reasks", minimum=0)
    if token_budget is not None:
        whole_number(token_budget, f"{owner}: token_budget", hint=" tokens, or None")
    if cost_budget is not None and (
        not isinstance(cost_budget, int | float)
        or isinstance(cost_budget, bool)
        or not cost_budget > 0
    ):
        raise ValueError(f"{owner}: cost_budget is {cost_budget!r}; give USD > 0, or None")
    try:
        schema = schema_for(response_model, response_schema)
    except (TypeError, ValueError) as exc:
        field = "response_model" if response_model is not None else "response_schema"
        message = str(exc)
        prefix = "" if message.startswith(field) else f"{field} "
        raise type(exc)(f"{owner}: {prefix}{message}") from None
    budget: Any = cost_budget
    return Structured(schema, max_reasks, token_budget, None if budget is None else float(budget))  # type: ignore[arg-type]
