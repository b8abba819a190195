"""Rows to tasks: the one place an input row becomes the :class:`LLMTask` that sends it.

A row job (:class:`~llmfanout._rows._job.Job`, sync or async input) leaves its tasks
untagged, the executor numbering them, and asks for a row's schema through the task (it
re-asks); a provider batch (``llmfanout batch submit``) tags each task with its row's id
key, which comes back with its result, and asks for the schema natively in the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._core._tasks import LLMTask
from .._structured._schema import Schema
from .._structured._spec import DEFAULT_MAX_REASKS
from ._input_rows import Bad, BadRow, ParsedRow
from ._structured_rows import with_request


def task_for(
    row: ParsedRow,
    *,
    tag: str = "",
    schema: Mapping[str, Any] | None = None,
    max_reasks: int = DEFAULT_MAX_REASKS,
) -> LLMTask:
    """The task that sends ``row``: its messages, its params over the job's defaults.

    With ``schema``, the task asks for it (and re-asks up to ``max_reasks`` times); the
    row's own ``response_schema`` parameter is not sent as a parameter. Raises
    ``TypeError``/``ValueError`` for a schema or parameter the task cannot take.
    """
    params = row.params
    if schema is None:
        return LLMTask(row.messages, params, tag=tag)
    own = {k: v for k, v in params.items() if k != "response_schema"} if params else None
    return LLMTask(row.messages, own, tag=tag, response_schema=schema, max_reasks=max_reasks)


def tagged_tasks(
    rows: Iterable[ParsedRow | Bad], schema: Schema | None = None
) -> Iterator[LLMTask]:
    """A task per row, tagged with the row's id key; a bad row raises :class:`BadRow`.

    For rows already checked in full (a batch submit): a bad one here means the input
    changed after it was checked. ``schema`` (or a row's own ``response_schema``) is asked
    for natively in the request (``response_format``): a batch cannot re-ask.
    """
    for row in rows:
        if type(row) is Bad:
            raise BadRow(row.reason, row.key)
        assert isinstance(row, ParsedRow)
        yield task_for(row._replace(params=with_request(row.params, schema)), tag=row.key)
