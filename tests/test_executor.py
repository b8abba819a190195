"""ParallelLLMExecutor: results, isolation, the cap, validation and cancellation."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import ask
from llmfanout import (
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    ParallelLLMExecutor,
    RetryConfig,
)
from llmfanout.testing import ErrorResponse, text_response

pytestmark = pytest.mark.anyio


class GateProvider:
    """Every call waits at a gate the test opens; counts what is in flight."""

    def __init__(self, cap_watch: int | None = None) -> None:
        self.gate = anyio.Event()
        self.in_flight = 0
        self.peak = 0
        self.started = 0
        self.finished = 0
        self.cap_watch = cap_watch
        self.cap_reached = anyio.Event()

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        self.in_flight += 1
        self.started += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight == self.cap_watch:
            self.cap_reached.set()
        try:
            await self.gate.wait()
            return LLMResponse("done: " + messages[-1].content)
        finally:
            self.in_flight -= 1
            self.finished += 1


# -- results -------------------------------------------------------------------------


async def test_execute_returns_one_result_per_tag_in_input_order() -> None:
    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=3)
    tags = [f"t{i}" for i in reversed(range(12))]
    results = await executor.execute({tag: ask(tag) for tag in tags})
    assert list(results) == tags
    for tag, result in results.items():
        assert result.tag == tag
        assert result.success and result.error is None and result.attempts == 1
        assert result.value.content == f"Echo: {tag}"
        assert result.duration_ms >= 0


async def test_the_mapping_key_becomes_the_tag() -> None:
    results = await ParallelLLMExecutor(EchoProvider()).execute({"key": ask("x", tag="own")})
    assert results["key"].tag == "key"


async def test_empty_input_gives_empty_results() -> None:
    executor = ParallelLLMExecutor(EchoProvider())
    assert await executor.execute({}) == {}
    assert await executor.execute_mixed({}) == {}
    assert await executor.execute_sequential([]) == []


async def test_one_failure_never_disturbs_the_others() -> None:
    provider = EchoProvider()
    provider.set_responses(
        [text_response("a"), ErrorResponse(RuntimeError("boom")), text_response("c")]
    )
    executor = ParallelLLMExecutor(provider, max_concurrency=1)
    results = await executor.execute({"a": ask("1"), "b": ask("2"), "c": ask("3")})
    assert [r.success for r in results.values()] == [True, False, True]
    assert results["b"].value is None
    assert isinstance(results["b"].error, RuntimeError)
    assert str(results["b"].error) == "boom"
    assert results["c"].value.content == "c"


async def test_overrides_merge_task_over_executor_default() -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(
        provider, max_concurrency=1, default_config_overrides={"temperature": 0, "model": "a"}
    )
    await executor.execute({"x": ask("x", config_overrides={"model": "b"}), "y": ask("y")})
    assert [c.config_overrides for c in provider.calls] == [
        {"temperature": 0, "model": "b"},
        {"temperature": 0, "model": "a"},
    ]
    bare = EchoProvider()
    await ParallelLLMExecutor(bare, default_config_overrides={}).execute(
        {"z": ask("z", config_overrides={})}
    )
    assert bare.calls[0].config_overrides is None


async def test_task_retry_overrides_default_retry() -> None:
    provider = EchoProvider()
    provider.set_response_function(lambda messages: _raise(ConnectionError("flaky")))
    executor = ParallelLLMExecutor(
        provider, default_retry=RetryConfig(max_attempts=3, initial_delay=0)
    )
    results = await executor.execute(
        {"default": ask("d"), "own": ask("o", retry=RetryConfig(max_attempts=1))}
    )
    assert results["default"].attempts == 3
    assert results["own"].attempts == 1
    assert isinstance(results["default"].error, ConnectionError)
    assert provider.call_count == 4


def _raise(exc: Exception) -> str:
    raise exc


async def test_retry_recovers_and_counts_attempts_and_waits() -> None:
    provider = EchoProvider()
    provider.set_responses([ErrorResponse(TimeoutError("slow")), text_response("fine")])
    retry = RetryConfig(max_attempts=3, initial_delay=0.05)
    results = await ParallelLLMExecutor(provider, default_retry=retry).execute({"t": ask("t")})
    result = results["t"]
    assert result.success and result.value.content == "fine" and result.attempts == 2
    assert result.duration_ms >= 50  # the retry wait is part of the task's wall time


# -- execute_mixed and threads -------------------------------------------------------


class AsyncCallable:
    async def __call__(self, x: int) -> tuple[str, int]:
        return ("async-call", x)


async def plain_async(x: int) -> tuple[str, int, int]:
    await anyio.lowlevel.checkpoint()
    return ("coroutine", x, threading.get_ident())


async def test_execute_mixed_runs_functions_beside_llm_tasks() -> None:
    loop_thread = threading.get_ident()
    results = await ParallelLLMExecutor(EchoProvider()).execute_mixed(
        {
            "llm": ask("hi"),
            "sync": DeterministicTask(
                lambda a, b=0: (a + b, threading.get_ident()), (1,), {"b": 2}
            ),
            "async": DeterministicTask(plain_async, (5,)),
            "callable": DeterministicTask(AsyncCallable(), (6,)),
            "partial": DeterministicTask(functools.partial(plain_async, 7)),
            "broken": DeterministicTask(lambda: 1 / 0),
        }
    )
    assert results["llm"].value.content == "Echo: hi"
    total, sync_thread = results["sync"].value
    assert total == 3 and sync_thread != loop_thread
    assert results["async"].value == ("coroutine", 5, loop_thread)
    assert results["callable"].value == ("async-call", 6)
    assert results["partial"].value[:2] == ("coroutine", 7)
    assert isinstance(results["broken"].error, ZeroDivisionError)


async def test_thread_cap_follows_max_concurrency_not_anyios_default() -> None:
    # anyio's default thread limiter allows 40 threads; 50 must run at once here.
    barrier = threading.Barrier(50, timeout=10)
    tasks = {f"f{i}": DeterministicTask(barrier.wait) for i in range(50)}
    results = await ParallelLLMExecutor(EchoProvider(), max_concurrency=50).execute_mixed(tasks)
    assert all(r.success for r in results.values()), [r.error for r in results.values()]


# -- execute_sequential --------------------------------------------------------------


async def test_sequential_passes_previous_response_forward() -> None:
    provider = EchoProvider()
    provider.set_responses(["first answer", ErrorResponse(ValueError("bad")), "third"])
    results = await ParallelLLMExecutor(provider).execute_sequential(
        [ask("one", tag="gen"), ask("two"), ask("three")], pass_result=True
    )
    assert [r.tag for r in results] == ["gen", "step_1", "step_2"]
    assert [r.success for r in results] == [True, False, True]
    sent = [call.messages for call in provider.calls]
    assert sent[0] == (LLMMessage("user", "one"),)
    assert sent[1] == (LLMMessage("user", "two"), LLMMessage("assistant", "first answer"))
    assert sent[2] == (LLMMessage("user", "three"),)  # the step before it failed


async def test_sequential_without_pass_result_sends_tasks_as_given() -> None:
    provider = EchoProvider()
    await ParallelLLMExecutor(provider).execute_sequential([ask("a"), ask("b")])
    assert [c.messages for c in provider.calls] == [
        (LLMMessage("user", "a"),),
        (LLMMessage("user", "b"),),
    ]


async def test_sequential_runs_one_at_a_time() -> None:
    provider = GateProvider()
    provider.gate.set()
    await ParallelLLMExecutor(provider, max_concurrency=5).execute_sequential(
        [ask(str(i)) for i in range(6)]
    )
    assert provider.peak == 1 and provider.finished == 6


# -- the cap ---------------------------------------------------------------------------


async def test_cap_is_reached_and_never_exceeded() -> None:
    provider = GateProvider(cap_watch=4)
    executor = ParallelLLMExecutor(provider, max_concurrency=4)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        outcome.update(await executor.execute({str(i): ask(str(i)) for i in range(20)}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await provider.cap_reached.wait()
        for _ in range(5):  # let any over-eager worker show itself
            await anyio.lowlevel.checkpoint()
        assert provider.in_flight == 4
        provider.gate.set()
    assert provider.peak == 4 and len(outcome) == 20


class CountingProvider:
    """Records how many calls were in flight at each start; yields a few times per call."""

    def __init__(self, hops: int = 2) -> None:
        self.in_flight = 0
        self.at_start: list[int] = []
        self.hops = hops

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        self.in_flight += 1
        self.at_start.append(self.in_flight)
        try:
            for _ in range(self.hops):
                await anyio.lowlevel.checkpoint()
            return LLMResponse(messages[0].content)
        finally:
            self.in_flight -= 1


async def test_the_cap_stays_full_while_work_is_waiting() -> None:
    provider = CountingProvider()
    await ParallelLLMExecutor(provider, max_concurrency=5).execute(
        {str(i): ask(str(i)) for i in range(40)}
    )
    # The first five starts fill the pool; every later start finds it full again.
    assert provider.at_start[:5] == [1, 2, 3, 4, 5]
    assert set(provider.at_start[5:]) == {5}


async def test_concurrent_calls_share_the_cap_and_take_turns() -> None:
    provider = CountingProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    order: list[str] = []

    async def run(name: str) -> None:
        await executor.execute(
            {f"{name}{i}": ask(name) for i in range(30)},
            on_result=lambda r: order.append(r.tag[0]),
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a")
        tg.start_soon(run, "b")
    assert max(provider.at_start) == 3
    assert order.count("a") == order.count("b") == 30
    # b does not wait for all of a: its results are spread through the run.
    assert order.index("b") < 10 and order[:30].count("b") >= 10


# -- validation ----------------------------------------------------------------------


async def test_bad_input_is_refused_before_any_work() -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(provider)
    with pytest.raises(
        TypeError, match=r"execute: task 'fn' is a DeterministicTask; .*execute_mixed"
    ):
        await executor.execute({"ok": ask("x"), "fn": DeterministicTask(print)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"execute_mixed: task 'bad' is a str; give an LLMTask or"):
        await executor.execute_mixed({"ok": ask("x"), "bad": "hello"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"task key 3 is an int; tags must be str"):
        await executor.execute({3: ask("x")})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"execute\(\) takes a mapping .* use stream\(\)"):
        await executor.execute([ask("x")])  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"execute_sequential: task 'step_1' is a DeterministicTask"
    ):
        await executor.execute_sequential([ask("x"), DeterministicTask(print)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_errors is 0"):
        await executor.execute({"ok": ask("x")}, max_errors=0)
    assert provider.call_count == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency is 0; give a whole number >= 1"),
        ({"max_concurrency": 2.5}, ValueError, "max_concurrency is 2.5"),
        ({"default_retry": 3}, TypeError, "default_retry must be a RetryConfig"),
        ({"default_config_overrides": [("a", 1)]}, TypeError, "default_config_overrides"),
        ({"default_timeout": -1}, ValueError, "timeout is -1"),
        ({"rate_limit": 60}, TypeError, "rate_limit is int, which is not a limiter"),
    ],
)
def test_executor_options_are_checked(
    kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        ParallelLLMExecutor(EchoProvider(), **kwargs)


def test_provider_without_complete_is_refused() -> None:
    with pytest.raises(TypeError, match="no complete\\(\\) method"):
        ParallelLLMExecutor(object())  # type: ignore[arg-type]


def test_repr_is_short() -> None:
    assert repr(ParallelLLMExecutor(EchoProvider(), max_concurrency=7)) == (
        "ParallelLLMExecutor(EchoProvider, max_concurrency=7)"
    )


# -- cancellation ----------------------------------------------------------------------


async def test_cancelling_execute_stops_every_attempt_and_records_nothing() -> None:
    provider = GateProvider(cap_watch=3)
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    seen: list[object] = []
    finished = False

    async def run() -> None:
        nonlocal finished
        await executor.execute({str(i): ask(str(i)) for i in range(10)}, on_result=seen.append)
        finished = True

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await provider.cap_reached.wait()
            tg.cancel_scope.cancel()
    assert not finished and seen == []
    assert provider.in_flight == 0 and provider.started == 3


async def test_move_on_after_stops_execute_promptly() -> None:
    provider = GateProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=2)
    with anyio.move_on_after(0.05) as scope:
        await executor.execute({str(i): ask(str(i)) for i in range(5)})
    assert scope.cancelled_caught
    assert provider.in_flight == 0


async def test_cancelling_during_retry_waits_is_prompt() -> None:
    waiting = 0
    all_waiting = anyio.Event()

    def on_retry(attempt: int, exc: Exception) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == 4:
            all_waiting.set()

    provider = EchoProvider()
    provider.set_response_function(lambda messages: _raise(ConnectionError("down")))
    retry = RetryConfig(max_attempts=5, initial_delay=3600, max_delay=3600, on_retry=on_retry)
    executor = ParallelLLMExecutor(provider, max_concurrency=4, default_retry=retry)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(executor.execute, {str(i): ask(str(i)) for i in range(8)})
            await all_waiting.wait()
            tg.cancel_scope.cancel()
    assert provider.call_count == 4  # nothing new started after the cancel


async def test_cancelling_waits_for_threads_so_none_is_left_running(
    no_stray_threads: None,
) -> None:
    release = threading.Event()
    running = 0
    lock = threading.Lock()
    entered = anyio.Event()

    def work() -> None:
        nonlocal running
        with lock:
            running += 1
        anyio.from_thread.run_sync(entered.set)
        release.wait(10)
        with lock:
            running -= 1

    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=2)
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                executor.execute_mixed, {str(i): DeterministicTask(work) for i in range(4)}
            )
            await entered.wait()
            tg.cancel_scope.cancel()
            release.set()  # the threads can only finish; execute waits for them
    assert running == 0


async def test_per_task_logging_is_quiet_at_info(caplog: pytest.LogCaptureFixture) -> None:
    provider = EchoProvider()
    provider.set_responses([ErrorResponse(RuntimeError("x"))] * 5)
    with caplog.at_level(logging.INFO, logger="llmfanout"):
        await ParallelLLMExecutor(provider).execute({str(i): ask(str(i)) for i in range(20)})
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="llmfanout"):
        await ParallelLLMExecutor(provider).execute({"d": ask("d")})
    assert any("run starting" in r.getMessage() for r in caplog.records)


# -- the invariants, generated -------------------------------------------------------


class Transient(Exception):
    pass


class Fatal(Exception):
    retryable = False


outcome = st.one_of(
    st.tuples(st.just("ok"), st.integers(0, 3)),
    st.tuples(st.just("transient"), st.integers(0, 3)),
    st.tuples(st.just("fatal"), st.integers(0, 3)),
)


class PlannedProvider:
    """Answers attempt n of task t from plans[t][n]; each outcome yields `hops` times."""

    def __init__(self, plans: dict[str, list[tuple[str, int]]]) -> None:
        self.plans = plans
        self.attempts: dict[str, int] = dict.fromkeys(plans, 0)
        self.in_flight = 0
        self.peak = 0

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        tag = messages[0].content
        n = self.attempts[tag]
        self.attempts[tag] = n + 1
        kind, hops = self.plans[tag][min(n, len(self.plans[tag]) - 1)]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            for _ in range(hops):
                await anyio.lowlevel.checkpoint()
        finally:
            self.in_flight -= 1
        if kind == "transient":
            raise Transient(f"{tag}#{n}")
        if kind == "fatal":
            raise Fatal(f"{tag}#{n}")
        return LLMResponse(f"{tag}#{n}")


def expected(plan: list[tuple[str, int]], max_attempts: int) -> tuple[str, str, int]:
    for n in range(max_attempts):
        kind = plan[min(n, len(plan) - 1)][0]
        if kind == "ok" or kind == "fatal" or n == max_attempts - 1:
            return kind, f"#{n}", n + 1
    raise AssertionError("unreachable")


@given(
    plans=st.lists(st.lists(outcome, min_size=1, max_size=4), min_size=0, max_size=30),
    concurrency=st.integers(1, 8),
    max_attempts=st.lists(st.integers(1, 4), min_size=30, max_size=30),
)
async def test_every_tag_gets_exactly_the_result_its_calls_produced(
    plans: list[list[tuple[str, int]]], concurrency: int, max_attempts: list[int]
) -> None:
    plan_of = {f"t{i}": plan for i, plan in enumerate(plans)}
    provider = PlannedProvider(plan_of)
    tasks = {
        tag: ask(tag, retry=RetryConfig(max_attempts=max_attempts[i], initial_delay=0))
        for i, tag in enumerate(plan_of)
    }
    seen: list[str] = []
    results = await ParallelLLMExecutor(provider, max_concurrency=concurrency).execute(
        tasks, on_result=lambda r: seen.append(r.tag)
    )
    assert list(results) == list(plan_of)
    assert sorted(seen) == sorted(plan_of)  # on_result once per result
    for i, (tag, plan) in enumerate(plan_of.items()):
        kind, suffix, attempts = expected(plan, max_attempts[i])
        result = results[tag]
        assert result.attempts == attempts == provider.attempts[tag]
        assert attempts <= max_attempts[i]
        if kind == "ok":
            assert result.success and result.value.content == tag + suffix
        else:
            assert not result.success and result.value is None
            assert type(result.error).__name__ == {"transient": "Transient", "fatal": "Fatal"}[kind]
            assert str(result.error) == tag + suffix
    assert provider.peak <= concurrency
    if len(plans) >= concurrency and all(hops for plan in plans for _, hops in plan):
        # When every call yields and there is enough work, the pool fills up.
        assert provider.peak == concurrency


# -- an executor outlives its event loop ---------------------------------------------

SHARED = ParallelLLMExecutor(EchoProvider(), max_concurrency=2)  # made outside any loop


async def test_one_executor_serves_successive_event_loops() -> None:
    # Each backend's run of this test uses the same module-level executor, in a new loop.
    tasks = {"llm": ask("x"), "fn": DeterministicTask(lambda: 2)}
    results = await SHARED.execute_mixed(tasks)
    assert results["llm"].value.content == "Echo: x" and results["fn"].value == 2


def test_one_executor_runs_under_asyncio_then_trio() -> None:
    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=2)

    async def run() -> list[bool]:
        results = await executor.execute_mixed(
            {"a": ask("a"), "f": DeterministicTask(len, ("ab",))}
        )
        return [r.success for r in results.values()]

    assert anyio.run(run) == [True, True]
    assert anyio.run(run, backend="trio") == [True, True]


# -- user hooks that raise fail their own task only ----------------------------------


def _boom(*args: object) -> bool:
    raise LookupError("hook broke")


@pytest.mark.parametrize(
    ("retry", "bad", "good"),
    [
        # retry_on_result judges values: it breaks the task that succeeded
        (RetryConfig(initial_delay=0, retry_on_result=_boom), ConnectionError, LookupError),
        # on_retry and on_failure run for failures: they break the failing task
        (RetryConfig(initial_delay=0, on_retry=_boom), LookupError, None),
        (RetryConfig(max_attempts=1, on_failure=_boom), LookupError, None),
    ],
    ids=["retry_on_result", "on_retry", "on_failure"],
)
async def test_a_raising_retry_hook_fails_only_its_task(
    retry: RetryConfig, bad: type[Exception], good: type[Exception] | None
) -> None:
    provider = EchoProvider()
    provider.set_response_function(
        lambda messages: _raise(ConnectionError("x")) if messages[0].content == "bad" else "ok"
    )
    results = await ParallelLLMExecutor(provider).execute(
        {"bad": ask("bad", retry=retry), "good": ask("good", retry=retry), "plain": ask("p")}
    )
    assert results["plain"].success
    assert type(results["bad"].error) is bad
    if good is None:
        assert results["good"].success
    else:
        assert type(results["good"].error) is good


class TooManyRequests(Exception):
    status_code = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


async def test_a_429_cooldown_is_capped_by_the_retry_policys_max_delay() -> None:
    from llmfanout import RateLimit

    provider = EchoProvider()
    provider.set_responses([ErrorResponse(TooManyRequests(3600)), "after"])
    executor = ParallelLLMExecutor(
        provider,
        max_concurrency=1,
        rate_limit=RateLimit(requests_per_minute=60_000),
        # Without patience, a 429 is an attempt like any other and its wait is capped.
        default_retry=RetryConfig(max_attempts=2, initial_delay=0, max_delay=0.05, patience=0),
    )
    with anyio.fail_after(5):  # an uncapped cooldown would pause this run for an hour
        results = await executor.execute({"a": ask("a"), "b": ask("b")})
    assert [r.value.content for r in results.values()] == ["after", "Echo: b"]
    assert results["a"].attempts == 2


async def test_per_loop_state_of_dropped_executors_and_providers_is_freed() -> None:
    """Limiters and pools made per event loop must not outlive their owner in a long loop."""
    import gc
    import weakref

    from llmfanout.providers import OpenAIProvider

    refs: list[weakref.ref[object]] = []
    for _ in range(20):
        executor = ParallelLLMExecutor(EchoProvider())
        await executor.execute_mixed({"a": ask("x"), "f": DeterministicTask(len, ("ab",))})
        provider = OpenAIProvider("m", api_key="sk-test")
        pool = provider._client()
        await provider.aclose()
        refs += [weakref.ref(executor._slots().limiter), weakref.ref(pool)]
        del executor, provider, pool
    gc.collect()
    assert [r() for r in refs if r() is not None] == []
