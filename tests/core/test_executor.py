"""ParallelLLMExecutor: results, isolation, the cap, validation and cancellation."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RetryConfig,
    TaskResult,
)
from llmfanout.testing import ErrorResponse, set_testing, text_response

from support.helpers import ask

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """Retry policies here keep their production delays; testing mode skips the waits."""
    with set_testing(True):
        yield


@pytest.fixture
def real_waits(instant_retries: None) -> Iterator[None]:
    """For the tests about the waits themselves."""
    with set_testing(False):
        yield


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


async def test_execute_runs_the_input_as_it_was_when_called() -> None:
    """The caller's mapping is theirs: changing it during the run changes nothing."""
    tasks = {f"t{i}": ask(f"t{i}") for i in range(20)}
    given = dict(tasks)

    def meddle(result: TaskResult) -> None:
        tasks.pop(result.tag)
        tasks[result.tag + " again"] = ask("late")

    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=3)
    results = await executor.execute(tasks, on_result=meddle)
    assert list(results) == list(given)
    assert all(r.success and r.value.content == f"Echo: {tag}" for tag, r in results.items())


class _Tag(str):
    pass


async def test_a_mapping_whose_tags_are_str_subclasses_is_accepted() -> None:
    tasks: dict[str, LLMTask] = {_Tag("a"): ask("a"), "b": ask("b")}
    results = await ParallelLLMExecutor(EchoProvider()).execute(tasks)
    assert [(tag, r.success) for tag, r in results.items()] == [("a", True), ("b", True)]
    with pytest.raises(TypeError, match=r"execute: task 'c' is a str"):
        await ParallelLLMExecutor(EchoProvider()).execute({**tasks, "c": "no"})  # type: ignore[dict-item]


@attrs.frozen
class RowTask(LLMTask):
    """A user's own kind of LLM task: attrs lets the value classes be extended."""

    row: int = attrs.field(default=0, kw_only=True)


@attrs.frozen
class NamedFunction(DeterministicTask):
    name: str = attrs.field(default="", kw_only=True)


class JSONProvider:
    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        return LLMResponse('{"n": 1}')


async def test_subclasses_of_the_task_classes_run_as_the_classes_do() -> None:
    def row(text: str, **kwargs: Any) -> RowTask:
        return RowTask([LLMMessage("user", text)], row=1, **kwargs)

    executor = ParallelLLMExecutor(EchoProvider())
    mixed = await executor.execute_mixed(
        {"llm": row("a"), "timed": row("b", timeout=5), "code": NamedFunction(lambda: 3)}
    )
    async with executor.stream([row("s", tag="s"), row("p"), NamedFunction(lambda: 4)]) as out:
        streamed = {r.tag: r async for r in out}
    chain = await executor.execute_sequential([row("q", tag="q")])
    checked = await ParallelLLMExecutor(JSONProvider()).execute(
        {"j": row("j", response_model=lambda body: body["n"])}
    )
    assert [r.value.content for r in (mixed["llm"], mixed["timed"], chain[0])] == [
        "Echo: a",
        "Echo: b",
        "Echo: q",
    ]
    assert mixed["code"].value == 3 and checked["j"].value.parsed == 1
    assert streamed["s"].value.content == "Echo: s" and streamed["1"].value.content == "Echo: p"
    assert streamed["2"].value == 4


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


class MeddlingProvider:
    """Records the overrides each call was given, then changes them in place."""

    def __init__(self, fail_first: int = 0) -> None:
        self.seen: list[dict[str, Any]] = []
        self.fail_first = fail_first

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Any = None
    ) -> LLMResponse:
        self.seen.append(dict(config_overrides))
        config_overrides.pop("temperature", None)
        config_overrides["model"] = "meddled"
        await anyio.lowlevel.checkpoint()
        if len(self.seen) <= self.fail_first:
            raise ConnectionError("again")
        return LLMResponse("ok")


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["plain", "with-timeout"])
async def test_no_provider_can_change_what_another_call_sees(timeout: float | None) -> None:
    provider = MeddlingProvider(fail_first=1)
    defaults = {"temperature": 0, "model": "a"}
    own = {"temperature": 1}
    executor = ParallelLLMExecutor(
        provider,
        max_concurrency=1,
        default_config_overrides=defaults,
        default_retry=RetryConfig(max_attempts=2),
        default_timeout=timeout,
    )
    tasks = {
        "retried": ask("r"),  # attempt 2 must see what attempt 1 saw
        "default": ask("d"),
        "own": ask("o", config_overrides=own, retry=RetryConfig(max_attempts=1)),
        "own-only": ask("x", config_overrides=own),
    }
    results = await executor.execute(tasks)
    assert all(r.success for r in results.values())
    assert provider.seen == [
        {"temperature": 0, "model": "a"},
        {"temperature": 0, "model": "a"},
        {"temperature": 0, "model": "a"},
        {"temperature": 1, "model": "a"},
        {"temperature": 1, "model": "a"},
    ]
    assert executor.default_config_overrides == {"temperature": 0, "model": "a"}
    assert own == {"temperature": 1} and defaults == {"temperature": 0, "model": "a"}
    bare = MeddlingProvider()
    await ParallelLLMExecutor(bare, max_concurrency=1).execute(
        {"1": ask("1", config_overrides=own), "2": ask("2", config_overrides=own)}
    )
    assert bare.seen == [{"temperature": 1}, {"temperature": 1}] and own == {"temperature": 1}


async def test_task_retry_overrides_default_retry() -> None:
    provider = EchoProvider()
    provider.set_response_function(lambda messages: _raise(ConnectionError("flaky")))
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3))
    results = await executor.execute(
        {"default": ask("d"), "own": ask("o", retry=RetryConfig(max_attempts=1))}
    )
    assert results["default"].attempts == 3
    assert results["own"].attempts == 1
    assert isinstance(results["default"].error, ConnectionError)
    assert provider.call_count == 4


def _raise(exc: Exception) -> str:
    raise exc


@pytest.mark.usefixtures("real_waits")
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


async def test_threads_abandoned_on_timeout_do_not_starve_later_functions(
    no_stray_threads: None,
) -> None:
    # On trio a timed-out thread kept its slot till it ended, so the third task timed
    # out waiting for a slot without ever running.
    release = threading.Event()
    ended = threading.Semaphore(0)
    began: list[None] = []

    def hang() -> None:
        began.append(None)
        release.wait(10)
        ended.release()

    stuck = DeterministicTask(hang, timeout=0.05)
    tasks = {"stuck1": stuck, "stuck2": stuck, "fast": DeterministicTask(lambda: "fast", timeout=5)}
    try:
        with anyio.fail_after(5):
            results = await ParallelLLMExecutor(EchoProvider(), max_concurrency=2).execute_mixed(
                tasks
            )
    finally:
        release.set()
    assert isinstance(results["stuck1"].error, TimeoutError)
    assert isinstance(results["stuck2"].error, TimeoutError)
    assert results["fast"].value == "fast"
    # The abandoned threads end once released. A call that timed out before a worker
    # thread picked it up (a loaded machine may take longer than 0.05 s to start one)
    # never runs at all: only the calls that began are waited for.
    assert len(began) <= 2
    for _ in range(len(began)):
        assert await anyio.to_thread.run_sync(ended.acquire, True, 5)


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


# -- nested calls: a task that calls its own executor ----------------------------------


async def test_a_task_can_run_a_sequential_chain_on_its_own_executor() -> None:
    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=2)

    async def chain() -> list[str]:
        steps = await executor.execute_sequential([ask("a"), ask("b")])
        return [r.value.content for r in steps]

    with anyio.fail_after(5):
        results = await executor.execute_mixed({"c": DeterministicTask(chain), "d": ask("d")})
    assert results["c"].value == ["Echo: a", "Echo: b"]
    assert results["d"].success


@pytest.mark.parametrize("method", ["execute", "execute_sequential", "stream"])
async def test_a_nested_call_with_one_slot_uses_the_slot_of_the_task_waiting_on_it(
    method: str,
) -> None:
    provider = CountingProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=1)

    async def fan_out() -> int:
        tasks = [ask(str(i)) for i in range(3)]
        if method == "execute":
            done = list((await executor.execute(dict(zip("xyz", tasks, strict=True)))).values())
        elif method == "execute_sequential":
            done = await executor.execute_sequential(tasks)
        else:
            async with executor.stream(tasks) as results:
                done = [r async for r in results]
        return sum(r.success for r in done)

    with anyio.fail_after(5):  # it used to hang (or raise RuntimeError) here
        results = await executor.execute_mixed(
            {"outer": DeterministicTask(fan_out), "beside": ask("b")}
        )
    assert results["outer"].value == 3 and results["beside"].success
    assert max(provider.at_start) == 1
    assert executor._cap.free == executor.max_concurrency


@given(
    cap=st.integers(1, 4),
    depth=st.integers(1, 3),
    fanout=st.integers(1, 3),
    concurrent=st.booleans(),
)
async def test_nested_calls_at_any_depth_finish_and_never_exceed_the_cap(
    cap: int, depth: int, fanout: int, concurrent: bool
) -> None:
    provider = CountingProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=cap)

    async def level(n: int) -> int:
        """A task that fans out to ``fanout`` tasks of the next level; leaves ask the LLM."""
        tasks: dict[str, Any] = {
            f"{n}.{i}": DeterministicTask(level, (n - 1,)) if n > 1 else ask("leaf")
            for i in range(fanout)
        }
        tasks["llm"] = ask("beside")
        if not concurrent:
            results = await executor.execute_mixed(tasks)
            return sum(r.value if isinstance(r.value, int) else 1 for r in results.values())
        # Two nested calls at once from one task (its child tasks share its slot).
        counts: list[int] = []

        async def one(part: dict[str, Any]) -> None:
            results = await executor.execute_mixed(part)
            counts.append(sum(r.value if isinstance(r.value, int) else 1 for r in results.values()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, dict(list(tasks.items())[:1]))
            tg.start_soon(one, dict(list(tasks.items())[1:]))
        return sum(counts)

    with anyio.fail_after(10):
        outer = await executor.execute_mixed({"top": DeterministicTask(level, (depth,))})
    assert outer["top"].success, outer["top"].error
    leaves = fanout**depth + sum(fanout**k for k in range(depth))  # leaves and "beside" calls
    assert outer["top"].value == leaves == len(provider.at_start)
    assert max(provider.at_start) <= cap
    assert executor._cap.free == executor.max_concurrency


async def test_a_call_back_into_an_executor_through_another_one_finds_its_slot() -> None:
    # a's task calls b, whose task calls a again: a's slot is still a's to lend.
    a = ParallelLLMExecutor(EchoProvider(), max_concurrency=1)
    b = ParallelLLMExecutor(EchoProvider(), max_concurrency=1)

    async def back_into_a() -> str:
        return (await a.execute({"x": ask("x")}))["x"].value.content

    async def into_b() -> Any:
        return (await b.execute_mixed({"y": DeterministicTask(back_into_a)}))["y"].value

    with anyio.fail_after(5):
        results = await a.execute_mixed({"z": DeterministicTask(into_b)})
    assert results["z"].value == "Echo: x"
    assert a._cap.free == 1 and b._cap.free == 1


async def test_cancelling_from_outside_during_nested_calls_stops_everything() -> None:
    provider = GateProvider(cap_watch=2)
    executor = ParallelLLMExecutor(provider, max_concurrency=2)

    async def fan_out() -> None:
        await executor.execute({str(i): ask(str(i)) for i in range(5)})

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                executor.execute_mixed,
                {"a": DeterministicTask(fan_out), "b": DeterministicTask(fan_out)},
            )
            await provider.cap_reached.wait()
            tg.cancel_scope.cancel()
    assert provider.in_flight == 0 and provider.peak == 2
    assert executor._cap.free == executor.max_concurrency
    provider.gate.set()  # the executor is still whole: a new call runs
    with anyio.fail_after(5):
        again = await executor.execute_mixed({"a": DeterministicTask(fan_out)})
    assert again["a"].success


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


@pytest.mark.usefixtures("real_waits")
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
        tag: ask(tag, retry=RetryConfig(max_attempts=max_attempts[i]))
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


class ThreadCountingProvider:
    """Counts the calls in flight across every thread and event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    async def complete(self, messages: Any, config_overrides: Any = None) -> LLMResponse:
        with self.lock:
            self.in_flight += 1
            self.calls += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(0.005)
            return LLMResponse("ok")
        finally:
            with self.lock:
                self.in_flight -= 1


def test_the_cap_holds_across_threads_each_running_its_own_event_loop() -> None:
    # It used to be per event loop: max_concurrency=4 let 16 calls run from 4 threads.
    provider = ThreadCountingProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=4)
    errors: list[Exception] = []

    async def run(name: str) -> None:
        with anyio.fail_after(20):
            results = await executor.execute({f"{name}{i}": ask(name) for i in range(25)})
        assert all(r.success for r in results.values())

    def thread(name: str, backend: str) -> None:
        try:
            anyio.run(run, name, backend=backend)
        except Exception as exc:  # reported by the test below
            errors.append(exc)

    threads = [
        threading.Thread(target=thread, args=(f"t{i}", ("asyncio", "trio")[i % 2]))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert provider.calls == 100 and provider.peak == 4
    assert executor._cap.free == 4 and not executor._cap.waiters


async def test_a_loop_cancelled_while_waiting_for_another_loops_slot_leaves_none_taken() -> None:
    provider = ThreadCountingProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=1)
    holding, release = threading.Event(), threading.Event()

    async def hold() -> None:
        holding.set()
        await anyio.to_thread.run_sync(release.wait, 10)

    other = threading.Thread(
        target=anyio.run, args=(executor.execute_mixed, {"h": DeterministicTask(hold)})
    )
    other.start()
    try:
        assert await anyio.to_thread.run_sync(holding.wait, 10)
        with anyio.move_on_after(0.05) as scope:  # waits for the other loop's slot
            await executor.execute({"a": ask("a")})
        assert scope.cancelled_caught and provider.calls == 0
    finally:
        release.set()
        await anyio.to_thread.run_sync(other.join, 10)
    assert executor._cap.free == 1 and not executor._cap.waiters
    assert (await executor.execute({"b": ask("b")}))["b"].success


# -- user hooks that raise fail their own task only ----------------------------------


def _boom(*args: object) -> bool:
    raise LookupError("hook broke")


@pytest.mark.parametrize(
    ("retry", "bad", "good"),
    [
        # retry_on_result judges values: it breaks the task that succeeded
        (RetryConfig(retry_on_result=_boom), ConnectionError, LookupError),
        # on_retry and on_failure run for failures: they break the failing task
        (RetryConfig(on_retry=_boom), LookupError, None),
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


@pytest.mark.usefixtures("real_waits")
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
        pool = provider._transport()
        await provider.aclose()
        refs += [weakref.ref(executor._threads()), weakref.ref(pool)]
        del executor, provider, pool
    gc.collect()
    assert [r() for r in refs if r() is not None] == []
