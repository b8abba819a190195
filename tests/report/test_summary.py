"""summarize(): counts, attempts, tokens, task-time percentiles, throughput, and its text."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    EchoProvider,
    ErrorResponse,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RunSummary,
    TaskAborted,
    TaskResult,
    summarize,
)
from llmfanout._report._summary import SummaryAccumulator

pytestmark = pytest.mark.anyio


def ok(tag: str, ms: float, usage: dict[str, int] | None = None, attempts: int = 1) -> TaskResult:
    return TaskResult(tag, True, LLMResponse(tag, usage=usage), None, ms, attempts)


def failed(tag: str, ms: float, error: Exception, attempts: int = 1) -> TaskResult:
    return TaskResult(tag, False, None, error, ms, attempts)


RESULTS = [
    ok("a", 10.0, {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
    ok("b", 30.0, {"prompt_tokens": 1, "completion_tokens": 2}, attempts=3),  # no total
    TaskResult("c", True, 42, None, 20.0, 1),  # a function's value: no usage
    failed("d", 40.0, RuntimeError("down"), attempts=2),
    failed("e", 5.0, TaskAborted("e"), attempts=0),
    failed("f", 0.0, TaskAborted("f"), attempts=0),
]


def test_counts_attempts_and_tokens() -> None:
    summary = summarize(RESULTS)
    assert (summary.total, summary.ok, summary.failed, summary.aborted) == (6, 3, 1, 2)
    assert summary.attempts == 7
    assert (summary.prompt_tokens, summary.completion_tokens, summary.total_tokens) == (6, 9, 15)


def test_task_times_leave_out_aborted_tasks() -> None:
    summary = summarize(RESULTS)  # times 10, 20, 30, 40
    assert summary.p50_ms == pytest.approx(25.0)
    assert summary.p95_ms == pytest.approx(38.5)
    assert summary.max_ms == 40.0


def test_throughput_needs_the_elapsed_time() -> None:
    assert summarize(RESULTS).elapsed_s is None
    assert summarize(RESULTS).throughput is None
    summary = summarize(RESULTS, elapsed=2)
    assert summary.elapsed_s == 2.0 and summary.throughput == pytest.approx(3.0)


def test_a_mapping_and_a_generator_are_read_alike() -> None:
    by_tag = {r.tag: r for r in RESULTS}
    assert summarize(by_tag) == summarize(RESULTS) == summarize(r for r in RESULTS)


def test_no_results() -> None:
    summary = summarize([], elapsed=0.0)
    assert summary == RunSummary(
        total=0,
        ok=0,
        failed=0,
        aborted=0,
        attempts=0,
        prompt_tokens=0,
        completion_tokens=0,
        total_tokens=0,
        p50_ms=None,
        p95_ms=None,
        max_ms=None,
        elapsed_s=0.0,
        throughput=None,
    )
    assert str(summary) == "0 tasks: 0 ok, 0 failed, 0 aborted (0 attempts)\nwall time: 0.00 s"


def test_str_reads_as_a_short_report() -> None:
    assert str(summarize(RESULTS, elapsed=2)) == (
        "6 tasks: 3 ok, 1 failed, 2 aborted (7 attempts)\n"
        "tokens: 6 prompt + 9 completion = 15 total\n"
        "time per task: p50 25.0 ms, p95 38.5 ms, max 40.0 ms\n"
        "wall time: 2.00 s, 3.0 tasks/s"
    )
    one = summarize([TaskResult("x", True, "v", None, 1234.5, 1)])
    assert str(one) == (
        "1 task: 1 ok, 0 failed, 0 aborted (1 attempt)\n"
        "time per task: p50 1,234.5 ms, p95 1,234.5 ms, max 1,234.5 ms"
    )


def test_the_summary_is_a_frozen_value() -> None:
    summary = summarize(RESULTS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        summary.ok = 0  # type: ignore[misc]
    assert attrs.evolve(summary, ok=0).ok == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: summarize([RESULTS[0], "x"]), TypeError, "item #1 is a str; give TaskResults"),
        (lambda: summarize(RESULTS, elapsed=-1), ValueError, "elapsed is -1; give the run's"),
        (lambda: summarize(RESULTS, elapsed="2"), ValueError, "elapsed is '2'"),
    ],
)
def test_bad_input_is_named(call: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_percentiles_are_ordered_and_within_the_data(times: list[float]) -> None:
    summary = summarize(TaskResult(str(i), True, None, None, t, 1) for i, t in enumerate(times))
    assert summary.p50_ms is not None and summary.p95_ms is not None
    assert min(times) <= summary.p50_ms <= summary.p95_ms <= summary.max_ms == max(times)
    below = sum(t <= summary.p50_ms for t in times)
    assert below >= len(times) / 2  # at least half the tasks took no longer than p50


async def test_summarizing_a_real_run() -> None:
    provider = EchoProvider()
    provider.set_responses(["one", ErrorResponse(RuntimeError("down")), "three"])
    executor = ParallelLLMExecutor(provider, max_concurrency=1)
    tasks = {str(i): LLMTask([LLMMessage("user", "hello there")]) for i in range(5)}
    summary = summarize(await executor.execute(tasks, max_errors=1), elapsed=0.5)
    assert (summary.ok, summary.failed, summary.aborted) == (1, 1, 3)
    assert summary.total_tokens == summary.prompt_tokens + summary.completion_tokens > 0
    assert summary.throughput == pytest.approx(10.0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "failed", "aborted"]),
            st.floats(0, 1e6, allow_nan=False),
            st.integers(0, 5),
            st.none()
            | st.dictionaries(
                st.sampled_from(["prompt_tokens", "total_tokens"]), st.integers(0, 1000)
            ),
        ),
        max_size=40,
    ),
    st.none() | st.floats(0, 1e4, allow_nan=False),
)
def test_the_accumulator_summarizes_like_summarize(
    rows: list[tuple[str, float, int, dict[str, int] | None]], elapsed: float | None
) -> None:
    """Adding results one at a time, as a long job does, sums up as summarize() does."""
    results = []
    for i, (kind, ms, attempts, usage) in enumerate(rows):
        if kind == "ok":
            results.append(ok(str(i), ms, usage, attempts))
        elif kind == "failed":
            results.append(TaskResult(str(i), False, None, ValueError("x"), ms, attempts))
        else:
            results.append(TaskResult(str(i), False, None, TaskAborted("cut"), ms, attempts))
    accumulator = SummaryAccumulator()
    for result in results:
        accumulator.add(result)
    assert accumulator.summary(elapsed=elapsed) == summarize(results, elapsed=elapsed)
    assert accumulator.total == len(rows)
