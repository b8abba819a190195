"""A run in a few numbers: counts, attempts, token usage, task times, throughput."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

import attrs

from .._base._types import LLMResponse
from .._core._tasks import TaskResult
from ..errors import TaskAborted
from ._cost import CostTally, Price, check_prices


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
    - ``cached_prompt_tokens``: the part of ``prompt_tokens`` read from the provider's cache.
    - ``cost_usd``: with ``prices``, the cost of the successful responses in USD (None
      without); ``unpriced`` maps each model that had no price (or responses without
      usage) to how many responses were left out of ``cost_usd``.
    - ``cache_hits``, ``cache_misses``: answers that came from the executor's cache (or
      from an identical call in flight) and answers that were fetched with a cache on;
      a hit counts in no token sum and costs nothing; ``cache_saved_usd``: with
      ``prices``, what the hits would have cost.
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
    cached_prompt_tokens: int = 0
    cost_usd: float | None = None
    unpriced: Mapping[str, int] = attrs.field(factory=dict)
    concurrency: int | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    cache_saved_usd: float | None = None

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
        if self.cached_prompt_tokens:
            lines.append(f"cached prompt tokens: {self.cached_prompt_tokens:,}")
        if self.cost_usd is not None:
            lines.append(f"cost: {format_usd(self.cost_usd)}" + unpriced_note(self.unpriced))
        if self.cache_hits or self.cache_misses:
            saved = self.cache_saved_usd
            lines.append(
                f"cache: {self.cache_hits:,} {_plural(self.cache_hits, 'hit')}, "
                f"{self.cache_misses:,} {_plural(self.cache_misses, 'miss')}"
                + ("" if saved is None else f", saved {format_usd(saved)}")
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
        "cached",
        "completion_tokens",
        "cost",
        "durations",
        "hits",
        "misses",
        "ok",
        "prompt_tokens",
        "saved",
        "total",
        "total_tokens",
    )

    def __init__(self, prices: Mapping[str, Price | Mapping[str, float]] | None = None) -> None:
        """``prices``: as :func:`summarize` takes them, for ``cost_usd``."""
        self.total = self.ok = self.aborted = self.attempts = 0
        self.prompt_tokens = self.completion_tokens = self.total_tokens = self.cached = 0
        self.durations = array("d")
        table = None if prices is None else check_prices(prices, "summarize")
        self.cost = None if table is None else CostTally(table)
        self.hits = self.misses = 0
        self.saved = None if table is None else CostTally(table)

    def add(self, result: TaskResult) -> None:
        """Count one result."""
        self.total += 1
        self.attempts += result.attempts
        if result.success:
            self.ok += 1
            value = result.value
            if isinstance(value, LLMResponse):
                cached = value.metadata.get("cached")
                if cached is not None and self._cached(value, cached):
                    self.durations.append(result.duration_ms)
                    return
                usage = value.usage
                if usage:
                    self.prompt_tokens += usage.get("prompt_tokens") or 0
                    self.completion_tokens += usage.get("completion_tokens") or 0
                    self.total_tokens += value.total_tokens or 0
                    self.cached += usage.get("cached_prompt_tokens") or 0
                if self.cost is not None:
                    self.cost.add(value.model, usage)
        elif isinstance(result.error, TaskAborted):
            self.aborted += 1
            return
        self.durations.append(result.duration_ms)

    def _cached(self, value: LLMResponse, cached: object) -> bool:
        """Count a response that went through a cache; True if it was a hit."""
        if not cached:
            self.misses += 1
            return False
        self.hits += 1
        if self.saved is not None:
            self.saved.add(value.model, value.usage)
        return True

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
            cached_prompt_tokens=self.cached,
            cost_usd=None if self.cost is None else self.cost.total,
            unpriced={} if self.cost is None else dict(sorted(self.cost.unpriced.items())),
            concurrency=concurrency,
            cache_hits=self.hits,
            cache_misses=self.misses,
            cache_saved_usd=None if self.saved is None else self.saved.total,
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
    prices: Mapping[str, Price | Mapping[str, float]] | None = None,
    concurrency: int | None = None,
) -> RunSummary:
    """Sum up a run's results: what ``execute`` returned, or what ``stream`` handed out.

    ``elapsed`` is the run's wall time in seconds; give it to get ``throughput``.
    ``prices`` (model name -> :class:`Price`, or ``{"input", "output", "cached_input",
    "cache_write"}`` in USD per million tokens) gives ``cost_usd``; a response's model is
    looked up as reported, then without a date suffix. ``concurrency``
    (``executor.concurrency`` after the run) is reported as given. Reads ``results`` once
    (a generator will do). Raises ``TypeError`` for an item that is not a ``TaskResult``,
    and ``ValueError`` for a negative ``elapsed`` or a price table entry it cannot read.
    """
    _check_elapsed(elapsed)
    items = results.values() if isinstance(results, Mapping) else results
    accumulator = SummaryAccumulator(prices)
    for result in items:
        if not isinstance(result, TaskResult):
            raise TypeError(
                f"summarize: item #{accumulator.total} is a {type(result).__name__}; give "
                "TaskResults (or the dict execute() returns)"
            )
        accumulator.add(result)
    return accumulator.summary(elapsed=elapsed, concurrency=concurrency)


def format_usd(amount: float) -> str:
    """``$12.34``, or more digits for small amounts (``$0.000123``)."""
    if amount == 0 or amount >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.2g}" if amount < 1e-6 else f"${amount:.6f}".rstrip("0")


def unpriced_note(unpriced: Mapping[str, int]) -> str:
    """What a cost leaves out (``" (not counted, ...: model xN)"``), or nothing."""
    if not unpriced:
        return ""
    shown = ", ".join(f"{model or '(no model)'} x{n}" for model, n in unpriced.items())
    return f" (not counted, no price or no usage: {shown})"


def _percentile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default) of sorted data."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _plural(n: int, word: str) -> str:
    if n == 1:
        return word
    return word + ("es" if word.endswith("s") else "s")
