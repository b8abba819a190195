"""A run in a few numbers: counts, attempts, token usage, task times, throughput."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

import attrs

from ._tasks import TaskResult
from ._types import LLMResponse
from .errors import TaskAborted


@attrs.frozen(kw_only=True)
class RunSummary:
    """What :func:`summarize` found in a run's results.

    - ``total`` = ``ok + failed + aborted``; ``aborted`` counts results whose error is
      :class:`~llmfanout.errors.TaskAborted` (cut off at ``max_errors``), ``failed`` the
      other failures.
    - ``attempts``: attempts made, retries included, over all results.
    - ``prompt_tokens``, ``completion_tokens``, ``total_tokens``: summed from the
      ``usage`` of successful ``LLMResponse`` values (0 where none was reported).
    - ``p50_ms``, ``p95_ms``, ``max_ms``: percentiles of ``duration_ms`` over the tasks
      that were not aborted (None if there are none).
    - ``elapsed_s``, ``throughput`` (results per second): None unless ``elapsed`` was given
      (``throughput`` also when it is 0).
    - ``concurrency``: calls the executor kept in flight at the end
      (``executor.concurrency``: fewer than ``max_concurrency`` while the server answered
      overload), when given.
    """

    total: int
    ok: int
    failed: int
    aborted: int
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    elapsed_s: float | None = None
    throughput: float | None = None
    concurrency: int | None = None

    def __str__(self) -> str:
        lines = [
            f"{self.total:,} {_plural(self.total, 'task')}: {self.ok:,} ok, "
            f"{self.failed:,} failed, {self.aborted:,} aborted "
            f"({self.attempts:,} {_plural(self.attempts, 'attempt')})"
        ]
        if self.total_tokens or self.prompt_tokens or self.completion_tokens:
            lines.append(
                f"tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion"
                f" = {self.total_tokens:,} total"
            )
        if self.p50_ms is not None:
            lines.append(
                f"time per task: p50 {self.p50_ms:,.1f} ms, p95 {self.p95_ms:,.1f} ms, "
                f"max {self.max_ms:,.1f} ms"
            )
        if self.elapsed_s is not None:
            rate = "" if self.throughput is None else f", {self.throughput:,.1f} tasks/s"
            lines.append(f"wall time: {self.elapsed_s:,.2f} s{rate}")
        if self.concurrency is not None:
            lines.append(f"calls in flight at the end: {self.concurrency}")
        return "\n".join(lines)


class SummaryAccumulator:
    """A :class:`RunSummary` built one result at a time: for runs too long to keep.

    Keeps only counts and each counted task's duration (8 bytes a result, for the
    percentiles). :func:`summarize` is this over an iterable; a long-running job adds each
    result as it completes and asks for :meth:`summary` whenever it likes.
    """

    __slots__ = (
        "aborted",
        "attempts",
        "completion_tokens",
        "durations",
        "ok",
        "prompt_tokens",
        "total",
        "total_tokens",
    )

    def __init__(self) -> None:
        self.total = self.ok = self.aborted = self.attempts = 0
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0
        self.durations = array("d")

    def add(self, result: TaskResult) -> None:
        """Count one result."""
        self.total += 1
        self.attempts += result.attempts
        if result.success:
            self.ok += 1
            value = result.value
            if isinstance(value, LLMResponse) and value.usage:
                self.prompt_tokens += value.usage.get("prompt_tokens") or 0
                self.completion_tokens += value.usage.get("completion_tokens") or 0
                self.total_tokens += value.total_tokens or 0
        elif isinstance(result.error, TaskAborted):
            self.aborted += 1
            return
        self.durations.append(result.duration_ms)

    def summary(
        self, *, elapsed: float | None = None, concurrency: int | None = None
    ) -> RunSummary:
        """The summary of every result added so far; see :func:`summarize` for the options."""
        _check_elapsed(elapsed)
        durations = sorted(self.durations)
        total = self.total
        return RunSummary(
            total=total,
            ok=self.ok,
            failed=total - self.ok - self.aborted,
            aborted=self.aborted,
            attempts=self.attempts,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            p50_ms=_percentile(durations, 0.50),
            p95_ms=_percentile(durations, 0.95),
            max_ms=durations[-1] if durations else None,
            elapsed_s=None if elapsed is None else float(elapsed),
            throughput=total / elapsed if elapsed else None,
            concurrency=concurrency,
        )


def _check_elapsed(elapsed: object) -> None:
    if elapsed is not None and (
        not isinstance(elapsed, int | float) or isinstance(elapsed, bool) or not elapsed >= 0
    ):
        raise ValueError(f"summarize: elapsed is {elapsed!r}; give the run's seconds (>= 0)")


def summarize(
    results: Iterable[TaskResult] | Mapping[str, TaskResult],
    *,
    elapsed: float | None = None,
    concurrency: int | None = None,
) -> RunSummary:
    """Sum up a run's results: what ``execute`` returned, or what ``stream`` handed out.

    ``elapsed`` is the run's wall time in seconds; give it to get ``throughput``;
    ``concurrency`` (``executor.concurrency`` after the run) is reported as given. Reads
    ``results`` once (a generator will do). Raises ``TypeError`` for an item that is not
    a ``TaskResult`` and ``ValueError`` for a negative ``elapsed``.
    """
    _check_elapsed(elapsed)
    items = results.values() if isinstance(results, Mapping) else results
    accumulator = SummaryAccumulator()
    for result in items:
        if not isinstance(result, TaskResult):
            raise TypeError(
                f"summarize: item #{accumulator.total} is a {type(result).__name__}; give "
                "TaskResults (or the dict execute() returns)"
            )
        accumulator.add(result)
    return accumulator.summary(elapsed=elapsed, concurrency=concurrency)


def _percentile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default) of sorted data."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
