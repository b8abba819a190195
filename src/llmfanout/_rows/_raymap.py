"""A batch job over a Ray Dataset: a pool of actors, each one executor over one pool.

Ray Data runs an ``async def __call__`` of a callable class on an asyncio loop of the
actor's own, several batches at a time (4 per task in Ray 2.60, and
``max_concurrent_calls_per_actor`` tasks at once). Each batch here is a short
:class:`~llmfanout._rows._job.Job` run on the actor's one executor: they share its cap, its
limiter and its provider's connection pool, so the actor keeps ``spec.concurrency``
calls in flight across batches instead of waiting on each batch's slowest call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._checkpoint import Checkpoint
from ._input_rows import parse_rows
from ._job import Job
from ._spec import JobSpec

if TYPE_CHECKING:
    import pyarrow
    import ray.data

# Tasks (blocks) an actor works on at once, each with up to 4 batches in flight.
_CALLS_PER_ACTOR = 4
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def map_rows(
    ds: ray.data.Dataset,
    spec: JobSpec,
    *,
    actors: int = 2,
    batch_size: int = 1000,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    num_cpus: float = 0.5,
) -> ray.data.Dataset:
    """Run ``spec`` over the rows of ``ds`` on ``actors`` Ray actors; a Dataset of output rows.

    Input rows are the CLI's (``id`` with ``prompt`` or ``messages``, and ``params``; or
    the batch format's ``custom_id``, ``body``); a null in ``params`` or in a message
    means unset, as Arrow fills absent fields with nulls. Output columns are the CLI's
    output rows: ``id``, ``success``, ``content``, ``error`` (``type``, ``message``),
    ``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``), ``attempts``,
    ``duration_ms``, ``model``, ``finish_reason``, and ``line`` (a bad row's position in
    its batch). Lazy, as every Dataset: the work runs when the result is consumed.

    Each actor builds one provider (one connection pool), one executor (``spec``'s
    concurrency, retries, timeout) and one limiter inside itself, and keeps up to
    ``spec.concurrency`` calls in flight across its batches. ``rpm``/``tpm`` are per
    actor unless ``spec.shared_limit`` names a Redis that all share. The key is read from
    ``spec``'s environment variable on each actor's machine. ``spec.backend`` does not
    apply: Ray runs the actors' batches on asyncio.

    With ``checkpoint_dir`` (a directory every actor can reach), each actor appends its
    finished rows to a shard of its own as they complete, and skips rows that any shard
    records (failures too, unless ``retry_failed``), so a re-run after a crash pays for
    each row about once. The Dataset then holds only the rows this run computed; the
    whole output is the directory: ``llmfanout merge DIR -o OUT.jsonl`` writes each id
    once. ``num_cpus`` is what each actor reserves (the work is waiting on the network).
    Needs ``llmfanout[ray]``.
    """
    import ray.data

    if not isinstance(spec, JobSpec):
        raise TypeError(f"map_rows: spec must be a JobSpec, not {type(spec).__name__}")
    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"map_rows: {name} is {value!r}; give a whole number >= 1")
    if not isinstance(num_cpus, int | float) or isinstance(num_cpus, bool) or num_cpus < 0:
        raise ValueError(f"map_rows: num_cpus is {num_cpus!r}; give a number >= 0")
    if checkpoint_dir is not None:
        checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
        os.makedirs(checkpoint_dir, exist_ok=True)
    return ds.map_batches(
        _RowMapper,
        fn_constructor_kwargs={
            "spec": spec,
            "checkpoint_dir": checkpoint_dir,
            "retry_failed": retry_failed,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_concurrent_calls_per_actor=_CALLS_PER_ACTOR
        ),
        num_cpus=num_cpus,
    )


class _RowMapper:
    """The callable class each actor holds: the job's engine, made inside the actor."""

    def __init__(
        self, spec: JobSpec, checkpoint_dir: str | None, retry_failed: bool = False
    ) -> None:
        template = Job(spec)  # reads the key here: a missing one fails the actor at start
        self._spec = spec
        self._provider = template.provider
        self._executor = template.executor()
        self._checkpoint = (
            None
            if checkpoint_dir is None
            else Checkpoint(checkpoint_dir, retry_failed=retry_failed)
        )

    async def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        rows = [_plain_row(row) for row in batch.to_pylist()]
        checkpoint = self._checkpoint
        if checkpoint is not None:
            checkpoint.refresh()
            rows = checkpoint.pending(rows)
        out: list[dict[str, Any]] = []
        if rows:
            job = Job(self._spec, provider=self._provider)
            async with job.run(parse_rows(rows), executor=self._executor) as stream:
                while finished := await stream.batch():
                    if checkpoint is not None:
                        checkpoint.write(finished)
                    out.extend(finished)
        return _table(out, batch)

    def __del__(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.close()


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """An Arrow row as the CLI would read it: nulls that stand for absent fields dropped."""
    params = row.get("params")
    if isinstance(params, Mapping):
        row["params"] = {k: v for k, v in params.items() if v is not None}
    messages = row.get("messages")
    if isinstance(messages, list):
        row["messages"] = [
            {k: v for k, v in m.items() if v is not None} if isinstance(m, Mapping) else m
            for m in messages
        ]
    return {k: v for k, v in row.items() if v is not None}


def _table(rows: list[dict[str, Any]], batch: pyarrow.Table) -> pyarrow.Table:
    """Output rows as a table with one schema, whatever the batch held."""
    import pyarrow as pa

    names = batch.schema.names
    id_type = pa.string()
    for name in ("custom_id", "id"):
        if name in names and not pa.types.is_null(batch.schema.field(name).type):
            id_type = batch.schema.field(name).type
            break
    schema = pa.schema(
        [
            ("id", id_type),
            ("success", pa.bool_()),
            ("content", pa.string()),
            ("error", pa.struct([("type", pa.string()), ("message", pa.string())])),
            ("usage", pa.struct([(name, pa.int64()) for name in _USAGE])),
            ("attempts", pa.int64()),
            ("duration_ms", pa.float64()),
            ("model", pa.string()),
            ("finish_reason", pa.string()),
            ("line", pa.int64()),
        ]
    )
    for row in rows:
        usage = row.get("usage")
        if usage is not None:
            row["usage"] = {name: usage.get(name) for name in _USAGE}
    return pa.Table.from_pylist(rows, schema=schema)
