"""A row job's structured output: the schema a row asks for, and what its output row says.

A job's ``schema`` applies to every row; a row's ``params.response_schema`` replaces it
for that row. An output row then carries ``parsed`` (the validated object, None when the
row failed); a row whose answers never matched adds ``validation_errors`` to its error
(the last answer's) and ``usage`` over every answer it got, re-asks included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._core._tasks import TaskResult
from .._structured._reask import answer_text
from .._structured._schema import Schema, schema_for
from ..errors import ValidationFailed


def check_job_schema(instance: Any, attribute: Any, value: object) -> None:
    """``JobSpec.schema``: None, or a JSON Schema dict jsonschema accepts."""
    if value is None:
        return
    try:
        schema_for(schema=value)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("response_schema ")
        raise ValueError(f"JobSpec: schema {message}") from None


def row_schema(params: Mapping[str, Any] | None, default: dict[str, Any] | None) -> Any:
    """The schema for a row: its own ``params.response_schema``, else the job's."""
    if params:
        own = params.get("response_schema")
        if own is not None:
            return own
    return default


def structured_fields(
    row: dict[str, Any], result: TaskResult, scrub: Callable[[str], str]
) -> dict[str, Any]:
    """``row`` with ``parsed``, and a failed validation's errors and usage."""
    value = result.value if result.success else None
    row["parsed"] = getattr(value, "parsed", None)
    row["reasks"] = result.reasks
    error = result.error
    if isinstance(error, ValidationFailed):
        row["error"]["message"] = scrub(_naming_row(error, row["id"]))
        row["error"]["validation_errors"] = [scrub(e) for e in error.errors]
        if error.usage:
            row["usage"] = dict(error.usage)
    return row


def _naming_row(error: ValidationFailed, row_id: object) -> str:
    """``error``'s message naming the row by its id, where the executor's loop named the
    task by its internal tag (a row job's tags are positions, meaningless to the user)."""
    message = error.message.removeprefix(f"task {error.tag!r}: ")
    return f"row {row_id!r}: {message}"


def with_request(params: Mapping[str, Any] | None, default: Schema | None) -> dict[str, Any] | None:
    """A batch row's params asking natively for its schema (``response_format``): its own
    ``response_schema``, else ``default``; None and unchanged without either."""
    own = params.get("response_schema") if params else None
    schema = schema_for(schema=own) if own is not None else default
    if schema is None:
        return dict(params) if params else None
    kept = {k: v for k, v in (params or {}).items() if k != "response_schema"}
    return {**kept, "response_format": schema.request}


def checked_result(result: TaskResult, schema: Schema) -> TaskResult:
    """A batch answer validated once (no re-asks: a batch cannot converse): ``parsed`` set,
    or a failed result whose error is :class:`ValidationFailed` with the errors."""
    if not result.success or result.value is None:
        return result
    response = result.value
    raw, _ = answer_text(response, schema.name)
    checked = schema.check(raw)
    if not checked.errors:
        value = attrs.evolve(response, content=raw, parsed=checked.value)
        return attrs.evolve(result, value=value)
    error = ValidationFailed(
        f"the answer did not match the schema {schema.name!r}: {'; '.join(checked.errors[:3])}; "
        "re-ask these rows in real time with llmfanout run --resume --retry-failed",
        tag=result.tag,
        attempts=((raw, checked.errors),),
        usage=response.usage,
    )
    return attrs.evolve(result, success=False, value=None, error=error)
