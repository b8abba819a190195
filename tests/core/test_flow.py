"""Flow control: per-attempt timeouts, max_errors, on_result; the invariants, generated."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from llmfanout import (
    DeterministicTask,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RateLimit,
    RetryConfig,
    TaskAborted,
    TaskResult,
)
from llmfanout.testing import set_testing

pytestmark = pytest.mark.anyio

# A production-like policy (1 s, then 2 s of backoff): testing mode makes the waits instant.
NO_WAIT = RetryConfig(max_attempts=3)


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    with set_testing(True):
        yield


class Boom(Exception):
    pass


class PlanProvider:
    """Prompts are ``kind:tag``. Kinds: ok, fail, hang (until cancelled), and ``sleep<s>``.

    ``flaky`` hangs on its first attempt and answers the second. Counts what runs and logs
    every start, so tests can check the cap and what started when.
    """

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.log: list[tuple[str, str]] = []
        self.attempts: dict[str, int] = {}
        self._awaited: tuple[int, anyio.Event] | None = None

    def started(self, count: int) -> anyio.Event:
        """An event set once ``count`` calls have started."""
        self._awaited = (count, anyio.Event())
        return self._awaited[1]

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        kind, tag = messages[0].content.split(":")
        await self.run(kind, tag)
        return LLMResponse(tag)

    async def run(self, kind: str, tag: str) -> str:
        n = self.attempts[tag] = self.attempts.get(tag, 0) + 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.log.append(("start", tag))
        if self._awaited is not None and len(self.log) >= self._awaited[0]:
            self._awaited[1].set()
        try:
            await anyio.lowlevel.checkpoint()
            if kind == "hang" or (kind == "flaky" and n == 1):
                await anyio.sleep_forever()
            if kind.startswith("sleep"):
                await anyio.sleep(float(kind[5:]))
            if kind == "fail":
                raise Boom(tag)
            return tag
        finally:
            self.running -= 1


def ask(kind: str, name: str, **kwargs: Any) -> LLMTask:
    return LLMTask([LLMMessage("user", f"{kind}:{name}")], **kwargs)


async def run_all(
    executor: ParallelLLMExecutor, how: str, tasks: dict[str, Any], **kwargs: Any
) -> dict[str, TaskResult]:
    """Run ``tasks`` through ``execute_mixed`` or ``stream``; one result per tag, checked."""
    if how == "execute":
        return await executor.execute_mixed(tasks, **kwargs)
    results: dict[str, TaskResult] = {}
    async with executor.stream(tasks, **kwargs) as stream:
        async for result in stream:
            assert result.tag not in results, f"two results for {result.tag!r}"
            results[result.tag] = result
    return results


HOW = pytest.mark.parametrize("how", ["execute", "stream"])


# -- timeouts ----------------------------------------------------------------------------


@HOW
async def test_a_hung_call_times_out_with_the_builtin_timeout_error(how: str) -> None:
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider)
    with anyio.fail_after(5):
        results = await run_all(executor, how, {"t": ask("hang", "t", timeout=0.05)})
    result = results["t"]
    assert not result.success and type(result.error) is TimeoutError
    assert "LLM call timed out after 0.05s" in str(result.error)
    assert "timeout=" in str(result.error)
    assert result.attempts == 1 and 40 <= result.duration_ms < 3000
    assert provider.running == 0


async def test_the_default_timeout_applies_and_a_tasks_own_timeout_wins() -> None:
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, default_timeout=0.05)
    with anyio.fail_after(5):
        results = await executor.execute(
            {
                "default": ask("hang", "default"),
                "own": ask("sleep0.15", "own", timeout=5),
                "tighter": ask("sleep0.15", "tighter", timeout=0.01),
            }
        )
    assert isinstance(results["default"].error, TimeoutError)
    assert results["own"].success
    assert isinstance(results["tighter"].error, TimeoutError)
    assert "after 0.01s" in str(results["tighter"].error)


async def test_a_timed_out_attempt_is_retried() -> None:
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, default_retry=NO_WAIT, default_timeout=0.05)
    with anyio.fail_after(5):
        result = (await executor.execute({"t": ask("flaky", "t")}))["t"]
    assert result.success and result.value.content == "t"
    assert result.attempts == 2 == provider.attempts["t"]


async def test_when_every_attempt_times_out_the_result_records_it() -> None:
    retried: list[Exception] = []
    retry = RetryConfig(max_attempts=3, on_retry=lambda n, e: retried.append(e))
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, default_retry=retry)
    with anyio.fail_after(5):
        result = (await executor.execute({"t": ask("hang", "t", timeout=0.02)}))["t"]
    assert not result.success and type(result.error) is TimeoutError
    assert result.attempts == 3 == provider.attempts["t"]
    assert len(retried) == 2 and all(type(e) is TimeoutError for e in retried)
    assert provider.running == 0


async def test_a_providers_own_timeout_error_is_kept_as_it_is() -> None:
    class Slow:
        async def complete(self, messages: Any, config_overrides: Any = None) -> LLMResponse:
            raise TimeoutError("the provider's own read timeout")

    result = (await ParallelLLMExecutor(Slow(), default_timeout=5).execute({"t": ask("", "")}))["t"]
    assert str(result.error) == "the provider's own read timeout"


@HOW
async def test_an_async_function_times_out(how: str) -> None:
    provider = PlanProvider()
    tasks = {
        "slow": DeterministicTask(provider.run, ("hang", "slow"), timeout=0.05),
        "fast": DeterministicTask(provider.run, ("ok", "fast"), timeout=5),
    }
    with anyio.fail_after(5):
        results = await run_all(ParallelLLMExecutor(provider), how, tasks)
    assert type(results["slow"].error) is TimeoutError
    assert "function call timed out after 0.05s" in str(results["slow"].error)
    assert results["fast"].value == "fast"
    assert provider.running == 0


async def test_a_sync_function_times_out_on_time_while_its_thread_runs_on() -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> str:
        release.wait(10)
        finished.set()
        return "too late"

    executor = ParallelLLMExecutor(PlanProvider(), default_timeout=0.05)
    with anyio.fail_after(5):
        result = (await executor.execute_mixed({"t": DeterministicTask(stuck)}))["t"]
    assert type(result.error) is TimeoutError and result.duration_ms < 3000
    assert not finished.is_set()  # the thread could not be stopped: it is still waiting
    release.set()  # then it ends: nothing of ours is left running
    assert await anyio.to_thread.run_sync(finished.wait, 5)


async def test_time_spent_waiting_for_the_rate_limit_is_not_part_of_the_timeout() -> None:
    # 20 requests a second with a burst of 20: the last of 24 calls waits ~0.2 s for
    # the limiter, four times its per-attempt timeout, and still succeeds.
    provider = PlanProvider()
    limit = RateLimit(requests_per_minute=20 * 60)
    executor = ParallelLLMExecutor(provider, max_concurrency=24, rate_limit=limit)
    tasks = {str(i): ask("ok", str(i), timeout=0.05) for i in range(24)}
    with anyio.fail_after(5):
        start = anyio.current_time()
        results = await executor.execute(tasks)
        elapsed = anyio.current_time() - start
    assert all(r.success for r in results.values())
    assert elapsed >= 0.15


# -- max_errors --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["execute", "stream", "stream-generator"])
async def test_max_errors_stops_new_starts_and_cancels_what_is_in_flight(how: str) -> None:
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    kinds = ["hang", "hang", "fail", "fail"] + ["ok"] * 6
    tasks: dict[str, Any] = {f"t{i}": ask(kind, f"t{i}") for i, kind in enumerate(kinds)}
    tasks["t1"] = DeterministicTask(provider.run, ("hang", "t1"))  # functions are cut off too
    with anyio.fail_after(5):
        if how == "stream-generator":  # tagged by position: "0" is t0, and so on
            found = await run_all(executor, "stream", iter(tasks.values()), max_errors=2)
            results = {f"t{tag}": r for tag, r in found.items()}
        else:
            results = await run_all(executor, how, tasks, max_errors=2)
    assert sorted(results, key=lambda t: int(t[1:])) == list(tasks)
    assert [type(results[t].error) for t in ("t2", "t3")] == [Boom, Boom]
    for tag in ("t0", "t1"):
        assert isinstance(results[tag].error, TaskAborted)
        assert "was cancelled in flight" in str(results[tag].error)
        assert "after 2 failed tasks" in str(results[tag].error)
    for tag in [f"t{i}" for i in range(4, 10)]:
        assert isinstance(results[tag].error, TaskAborted)
        assert "never started" in str(results[tag].error)
        assert results[tag].attempts == 0 and results[tag].duration_ms == 0
    assert [tag for _, tag in provider.log] == ["t0", "t1", "t2", "t3"]
    assert provider.running == 0


async def test_a_task_that_recovers_on_retry_is_not_counted_as_failed() -> None:
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, default_retry=NO_WAIT, default_timeout=0.05)
    tasks = {"flaky": ask("flaky", "flaky"), "ok": ask("ok", "ok")}
    with anyio.fail_after(5):
        results = await executor.execute(tasks, max_errors=1)
    assert all(r.success for r in results.values())
    assert results["flaky"].attempts == 2


async def test_an_async_source_is_read_to_its_end_after_max_errors() -> None:
    provider = PlanProvider()
    done = False

    async def source() -> AsyncIterator[LLMTask]:
        nonlocal done
        yield ask("fail", "first")
        for i in range(40):
            await anyio.lowlevel.checkpoint()  # a real source awaits between items
            yield ask("hang", str(i))
        done = True

    executor = ParallelLLMExecutor(provider, max_concurrency=4)
    with anyio.fail_after(5):
        results = await run_all(executor, "stream", source(), max_errors=1)
    assert done and len(results) == 41
    assert isinstance(results["0"].error, Boom)
    assert all(isinstance(r.error, TaskAborted) for tag, r in results.items() if tag != "0")
    assert provider.running == 0


async def test_calls_failing_in_the_same_instant_count_once_on_either_backend() -> None:
    # asyncio used to record 10 failures here and trio 3: the calls that woke up together
    # ran on past the stop on asyncio.
    class SleepThenFail:
        async def complete(self, messages: Any, config_overrides: Any = None) -> LLMResponse:
            await anyio.sleep(0.01)
            raise Boom(messages[0].content)

    executor = ParallelLLMExecutor(SleepThenFail(), max_concurrency=10)
    tasks = {str(i): LLMTask([LLMMessage("user", str(i))]) for i in range(100)}
    with anyio.fail_after(5):
        results = await executor.execute(tasks, max_errors=3)
    failed = [r for r in results.values() if isinstance(r.error, Boom)]
    aborted = [r for r in results.values() if isinstance(r.error, TaskAborted)]
    assert len(failed) == 3 and len(aborted) == 97
    late = [r for r in aborted if r.error.__cause__ is not None]
    assert all(isinstance(r.error.__cause__, Boom) and r.attempts == 1 for r in late)
    assert all("failed after the run had stopped" in str(r.error) for r in late)


@pytest.mark.parametrize("how", ["execute", "stream"])
async def test_cancelling_a_run_with_max_errors_from_outside_propagates(how: str) -> None:
    # Each task runs in a cancel scope of its own under max_errors: a cancellation from
    # outside must not be mistaken for the run's own stop.
    provider = PlanProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    tasks = {f"t{i}": ask("hang", f"t{i}") for i in range(10)}
    got: dict[str, TaskResult] = {}
    three_started = provider.started(3)

    async def cancel_once_three_started(scope: anyio.CancelScope) -> None:
        await three_started.wait()
        scope.cancel()

    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:  # a deadline, or Ctrl-C, as the calls hang
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_three_started, scope)
                got = await run_all(executor, how, tasks, max_errors=2)
    assert scope.cancelled_caught and got == {}
    assert provider.running == 0 and len(provider.log) == 3


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
async def test_max_errors_must_be_a_whole_number_from_one(value: Any) -> None:
    executor = ParallelLLMExecutor(PlanProvider())
    with pytest.raises(ValueError, match=f"max_errors is {value!r}; give a whole number >= 1"):
        await executor.execute({"t": ask("ok", "t")}, max_errors=value)
    with pytest.raises(ValueError, match="max_errors is"):
        await run_all(executor, "stream", [ask("ok", "t")], max_errors=value)


# -- on_result ---------------------------------------------------------------------------


@HOW
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_result_is_called_once_per_result_as_each_completes(how: str, kind: str) -> None:
    gates = {tag: anyio.Event() for tag in "abc"}
    notified: dict[str, anyio.Event] = {tag: anyio.Event() for tag in "abc"}
    seen: list[str] = []

    async def wait_for(tag: str) -> str:
        await gates[tag].wait()
        return tag

    def note(result: TaskResult) -> None:
        seen.append(result.tag)
        notified[result.tag].set()

    async def anote(result: TaskResult) -> None:
        await anyio.lowlevel.checkpoint()
        note(result)

    tasks = {tag: DeterministicTask(wait_for, (tag,)) for tag in "abc"}
    executor = ParallelLLMExecutor(PlanProvider(), max_concurrency=3)
    callback = note if kind == "sync" else anote
    outcome: dict[str, TaskResult] = {}

    async def run() -> None:
        outcome.update(await run_all(executor, how, tasks, on_result=callback))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for tag in "bc":  # each one is reported while the others still run
                gates[tag].set()
                await notified[tag].wait()
                assert seen[-1] == tag and not outcome
            gates["a"].set()
    assert seen == list("bca") and sorted(outcome) == list("abc")


@HOW
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_result_sees_every_result_even_when_max_errors_stops_the_run(
    how: str, kind: str
) -> None:
    seen: list[str] = []

    async def slow_note(result: TaskResult) -> None:
        for _ in range(3):  # an async callback is never cut off half-way
            await anyio.lowlevel.checkpoint()
        seen.append(result.tag)

    provider = PlanProvider()
    kinds = ["hang", "fail", "hang", "ok", "fail"] + ["ok"] * 15
    tasks = {f"t{i}": ask(kind, f"t{i}") for i, kind in enumerate(kinds)}
    callback = slow_note if kind == "async" else (lambda r: seen.append(r.tag))
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    with anyio.fail_after(5):
        results = await run_all(executor, how, tasks, max_errors=1, on_result=callback)
    assert sorted(seen) == sorted(tasks) == sorted(results)
    assert sum(isinstance(r.error, TaskAborted) for r in results.values()) >= len(tasks) - 3


@HOW
async def test_an_error_in_on_result_ends_the_run_and_propagates_bare(how: str) -> None:
    provider = PlanProvider()
    release = anyio.Event()

    async def held(tag: str) -> str:
        await release.wait()  # these finish in the same instant
        return tag

    async def opener() -> None:
        while provider.running < 3:  # the hung calls are in flight
            await anyio.lowlevel.checkpoint()
        release.set()
        await anyio.sleep_forever()

    def explode(result: TaskResult) -> None:
        raise KeyError(f"callback broke on {result.tag}")

    tasks: dict[str, Any] = {f"f{i}": DeterministicTask(held, (f"f{i}",)) for i in range(3)}
    tasks["opener"] = DeterministicTask(opener)
    tasks |= {f"h{i}": ask("hang", f"h{i}") for i in range(5)}
    executor = ParallelLLMExecutor(provider, max_concurrency=7)
    with anyio.fail_after(5), pytest.raises(KeyError, match="callback broke on f"):
        await run_all(executor, how, tasks, on_result=explode)
    assert provider.running == 0


async def test_on_result_must_be_callable() -> None:
    executor = ParallelLLMExecutor(PlanProvider())
    with pytest.raises(TypeError, match="on_result must be callable, not str"):
        await executor.execute({"t": ask("ok", "t")}, on_result="print")  # type: ignore[arg-type]


# -- the invariants, generated -----------------------------------------------------------

KINDS = ["ok", "ok", "fail", "timeout", "function"]


@given(
    plan=st.lists(st.sampled_from(KINDS), max_size=16),
    concurrency=st.integers(1, 5),
    max_errors=st.none() | st.integers(1, 3),
    shape=st.sampled_from(["execute", "mapping", "list", "generator", "async generator"]),
)
async def test_every_input_gets_exactly_one_result_and_the_cap_holds(
    plan: list[str], concurrency: int, max_errors: int | None, shape: str
) -> None:
    provider = PlanProvider()
    tags = [f"t{i}" for i in range(len(plan))]
    tasks: dict[str, Any] = {}
    for tag, kind in zip(tags, plan, strict=True):
        if kind == "function":
            tasks[tag] = DeterministicTask(provider.run, ("ok", tag), tag=tag)
        elif kind == "timeout":
            tasks[tag] = ask("hang", tag, tag=tag, timeout=0.002)
        else:
            tasks[tag] = ask(kind, tag, tag=tag)
    events: list[tuple[str, str]] = provider.log  # starts, and (below) results, in order

    def note(result: TaskResult) -> None:
        events.append(("result", result.tag))

    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    source: Any = {
        "execute": tasks,
        "mapping": tasks,
        "list": list(tasks.values()),
        "generator": iter(tasks.values()),
    }.get(shape)
    if shape == "async generator":

        async def agen() -> AsyncIterator[Any]:
            for task in tasks.values():
                await anyio.lowlevel.checkpoint()
                yield task

        source = agen()
    how = "execute" if shape == "execute" else "stream"
    with anyio.fail_after(10):
        results = await run_all(executor, how, source, max_errors=max_errors, on_result=note)

    assert sorted(results) == sorted(tags)  # exactly one each (run_all refuses repeats)
    assert sorted(tag for kind, tag in events if kind == "result") == sorted(tags)
    assert provider.peak <= concurrency and provider.running == 0
    failures = []
    for tag, kind in zip(tags, plan, strict=True):
        result = results[tag]
        if isinstance(result.error, TaskAborted):
            assert max_errors is not None
            continue
        expected = {"fail": Boom, "timeout": TimeoutError}.get(kind)
        if expected is None:
            assert result.success and tag in (result.value, getattr(result.value, "content", 0))
        else:
            assert type(result.error) is expected
            failures.append(tag)
    aborted = len(tags) - len([r for r in results.values() if not isinstance(r.error, TaskAborted)])
    event(f"aborted: {bool(aborted)}")
    if max_errors is None or len(failures) < max_errors:
        assert aborted == 0
    else:  # exactly max_errors tasks failed; after that nothing new started
        assert len(failures) == max_errors
        nth_failure_reported = [
            i for i, (kind, tag) in enumerate(events) if kind == "result" and tag in failures
        ][max_errors - 1]
        assert all(kind != "start" for kind, _ in events[nth_failure_reported:])
