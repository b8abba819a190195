"""ProgressBar: counts, drawing on a terminal, silence elsewhere, on both backends."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig
from llmfanout.progress import ProgressBar
from llmfanout.testing import ErrorResponse

pytestmark = pytest.mark.anyio


class Flaky(Exception):
    """Fails once, then the retry succeeds."""


def run_tasks() -> dict[str, LLMTask]:
    return {f"t{i}": LLMTask([LLMMessage("user", f"q{i}")]) for i in range(5)}


def provider() -> EchoProvider:
    # Served in order: t0 fails once (retried), t4 fails for good (non-retryable).
    bad = ValueError("bad request")
    bad.retryable = False  # type: ignore[attr-defined]
    return EchoProvider().set_responses(
        [ErrorResponse(Flaky("once")), "a0", "a1", "a2", "a3", ErrorResponse(bad)]
    )


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


async def test_counts_and_draws_successes_failures_and_retries() -> None:
    console, out = terminal()
    bar = ProgressBar(5, console=console, refresh=0)
    executor = ParallelLLMExecutor(
        provider(), max_concurrency=1, default_retry=RetryConfig(max_attempts=2, initial_delay=0)
    )
    results = await executor.execute(run_tasks(), on_result=bar)
    assert [r.success for r in results.values()] == [True, True, True, True, False]
    assert (bar.done, bar.ok, bar.failed, bar.retries) == (5, 4, 1, 1)
    screen = out.getvalue()
    assert "5/5" in screen and "4 ok" in screen and "1 failed" in screen
    assert "1 retries" in screen
    assert repr(bar) == "ProgressBar(5/5: 4 ok, 1 failed, 1 retries)"


async def test_silent_when_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(5, file=out)
    assert not bar.enabled
    await ParallelLLMExecutor(EchoProvider()).execute(run_tasks(), on_result=bar)
    assert bar.done == 5 and bar.ok == 5
    assert out.getvalue() == ""


async def test_a_stream_of_unknown_length_draws_until_closed() -> None:
    console, out = terminal()
    tasks = (LLMTask([LLMMessage("user", str(i))]) for i in range(3))
    with ProgressBar(console=console) as bar:
        async with ParallelLLMExecutor(EchoProvider()).stream(tasks, on_result=bar) as results:
            async for _ in results:
                pass
    assert bar.done == 3
    assert "3 ok" in out.getvalue()


def test_enabled_in_a_notebook_even_without_a_terminal() -> None:
    console = Console(file=io.StringIO(), force_jupyter=True)
    assert ProgressBar(1, console=console).enabled


def test_works_with_the_sync_calls() -> None:
    console, out = terminal()
    bar = ProgressBar(5, console=console)
    ParallelLLMExecutor(EchoProvider()).execute_sync(run_tasks(), on_result=bar, backend="trio")
    assert bar.ok == 5 and "5/5" in out.getvalue()


def test_a_bad_total_is_refused() -> None:
    with pytest.raises(ValueError, match="ProgressBar: total is -1; give the number of tasks"):
        ProgressBar(-1)


def test_a_notebook_without_ipywidgets_gets_the_counts_once_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed: list[str] = []
    console = Console(file=io.StringIO(), force_jupyter=True)
    monkeypatch.setattr(console, "print", lambda text: printed.append(text))
    monkeypatch.setattr("llmfanout._report._progressbar.find_spec", lambda name: None)
    bar = ProgressBar(2, console=console)
    ParallelLLMExecutor(EchoProvider()).execute_sync(
        {"a": LLMTask([LLMMessage("user", "a")]), "b": LLMTask([LLMMessage("user", "b")])},
        on_result=bar,
    )
    assert printed == ["llmfanout: 2/2: 2 ok, 0 failed, 0 retries"]
