"""A row job's structured output: the schema a row asks for, and what its output row says.

A job's ``schema`` applies to every row; a row's ``params.response_schema`` replaces it
for that row. An output row then carries ``parsed`` (the validated object, None when the
row failed); a row whose answers never matched adds ``validation_errors`` to its error
(the last answer's) and ``usage`` over every answer it got, re-asks included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._core._tasks import TaskResult
from .._structured._schema import schema_for
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
        row["error"]["validation_errors"] = [scrub(e) for e in error.errors]
        if error.usage:
            row["usage"] = dict(error.usage)
    return row
