"""ParallelLLMExecutor.stream: completion order, any input shape, lazy input, leaving early."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anyio
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
    TaskResult,
)
from llmfanout._core._inputs import Invalid, Tagger

from support.helpers import ask

pytestmark = pytest.mark.anyio


class GatedProvider:
    """Each call waits for the gate named by its prompt; counts the calls running."""

    def __init__(self) -> None:
        self.gates: dict[str, anyio.Event] = {}
        self.running = 0
        self.started = 0
        self.cancelled = 0
        self.changed = anyio.Event()

    def gate(self, text: str) -> anyio.Event:
        return self.gates.setdefault(text, anyio.Event())

    async def wait_running(self, n: int) -> None:
        while self.running != n:
            await self.changed.wait()
            self.changed = anyio.Event()

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        text = messages[-1].content
        self.running += 1
        self.started += 1
        self.changed.set()
        try:
            await self.gate(text).wait()
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
            self.changed.set()
        return LLMResponse("done: " + text)


async def collect(executor: ParallelLLMExecutor, tasks: Any, **kwargs: Any) -> list[TaskResult]:
    async with executor.stream(tasks, **kwargs) as results:
        return [r async for r in results]


# -- what comes out ----------------------------------------------------------------------


async def test_results_come_out_in_completion_order() -> None:
    provider = GatedProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=4)
    tasks = {t: ask(t) for t in "abcd"}
    with anyio.fail_after(5):
        async with executor.stream(tasks) as results:
            await provider.wait_running(4)
            seen = []
            for text in "cadb":  # finish them in an order unlike the input's
                provider.gate(text).set()
                seen.append(await anext(results))
    assert [r.tag for r in seen] == list("cadb")
    assert [r.value.content for r in seen] == [f"done: {t}" for t in "cadb"]


def _tasks(shape: str) -> Any:
    made = [
        ask("a"),
        DeterministicTask(str.upper, ("b",)),
        ask("c", tag="named"),
        DeterministicTask(str.upper, ("d",), tag="fn"),
    ]
    if shape == "list":
        return made
    if shape == "tuple":
        return tuple(made)
    if shape == "generator":
        return (task for task in made)

    async def agen() -> AsyncIterator[Any]:
        for task in made:
            await anyio.lowlevel.checkpoint()
            yield task

    return agen()


@pytest.mark.parametrize("shape", ["list", "tuple", "generator", "async generator"])
async def test_iterables_of_mixed_tasks_are_tagged_by_position_unless_named(shape: str) -> None:
    results = await collect(ParallelLLMExecutor(EchoProvider(), max_concurrency=2), _tasks(shape))
    by_tag = {r.tag: r for r in results}
    assert sorted(by_tag) == ["0", "1", "fn", "named"]
    assert by_tag["0"].value.content == "Echo: a"
    assert by_tag["1"].value == "B"
    assert by_tag["named"].value.content == "Echo: c"
    assert by_tag["fn"].value == "D"
    assert all(r.success for r in results)


async def test_a_mapping_is_tagged_by_its_keys() -> None:
    tasks = {"x": ask("1", tag="ignored"), "y": DeterministicTask(len, ("abc",))}
    results = await collect(ParallelLLMExecutor(EchoProvider()), tasks)
    assert {r.tag: r.success for r in results} == {"x": True, "y": True}
    assert {r.tag: r.value for r in results}["y"] == 3


async def test_no_tasks_means_no_results() -> None:
    executor = ParallelLLMExecutor(EchoProvider())
    assert await collect(executor, []) == []
    assert await collect(executor, {}) == []
    assert await collect(executor, iter([])) == []


async def test_a_repeated_tag_fails_that_task_and_the_run_goes_on() -> None:
    tasks = [
        ask("a", tag="a"),
        ask("b"),  # tagged "1" by position
        ask("c", tag="a"),  # repeats "a"
        ask("d", tag="1"),  # repeats the position tag of task #1
        ask("e", tag="5"),  # names the position of a later task...
        ask("f"),  # ...which therefore clashes: it is #5
        ask("g"),
    ]
    provider = EchoProvider()
    results = await collect(ParallelLLMExecutor(provider, max_concurrency=2), iter(tasks))
    assert len(results) == len(tasks)
    failed = sorted(r.tag for r in results if not r.success)
    assert failed == ["1", "5", "a"]
    for r in results:
        if not r.success:
            assert isinstance(r.error, ValueError)
            assert f"task {r.tag!r}" in str(r.error) and "already used" in str(r.error)
            assert r.attempts == 0
    ok = sorted(r.value.content for r in results if r.success)
    assert ok == ["Echo: a", "Echo: b", "Echo: e", "Echo: g"]
    assert provider.call_count == 4  # the repeats were never sent


async def test_a_refused_repeat_leaves_its_position_free_for_a_later_tag() -> None:
    tasks = [ask("a", tag="a"), ask("b", tag="a"), ask("c", tag="1"), ask("d"), ask("e")]
    results = await collect(ParallelLLMExecutor(EchoProvider()), tasks)
    outcome = sorted((r.tag, r.success) for r in results)
    # Task #1 was refused under its own tag "a", so "1" was never used: task #2 may take it.
    assert outcome == [("1", True), ("3", True), ("4", True), ("a", False), ("a", True)]


# "" is no tag (tagged by position); None is not a task at all.
_TAGS = st.sampled_from(["", "a", "b", "0", "1", "2", "3", "01", "٣", None])


@given(st.lists(_TAGS, max_size=12))
def test_tagging_a_stream_is_tagging_each_task(tags: list[str | None]) -> None:
    """A stream of an iterable tags as the one-task-at-a-time rules do (the worker takes
    the common case itself), on both backends; every task that runs has a tag of its
    own; the iterable is read once and through."""
    tasks = ["not a task" if tag is None else ask("x", tag=tag) for tag in tags]
    one_by_one = Tagger()
    expected = []
    for tag, task in (one_by_one(task) for task in tasks):
        expected.append((tag, str(task.error) if isinstance(task, Invalid) else None))
    ran = [tag for tag, error in expected if error is None]
    assert len(ran) == len(set(ran))

    async def run() -> list[tuple[str, str | None]]:
        # One worker: results come out in the input's order.
        executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=1)
        async with executor.stream(iter(tasks)) as results:
            return [(r.tag, None if r.success else str(r.error)) async for r in results]

    for backend in ("asyncio", "trio"):
        assert anyio.run(run, backend=backend) == expected


class _OwnTask(LLMTask):
    """A subclass: an LLMTask to the kind check, though not of its exact type."""


_ITEMS = st.sampled_from(
    [ask("a"), DeterministicTask(len, ("x",)), _OwnTask(messages=ask("b").messages), "no", None, 3]
)


@given(st.lists(_ITEMS, max_size=6))
def test_a_collection_is_refused_exactly_when_an_item_is_no_task(items: list[Any]) -> None:
    from llmfanout._core._inputs import InputFailure, prepare

    bad = [i for i, item in enumerate(items) if not isinstance(item, LLMTask | DeterministicTask)]
    if bad:
        with pytest.raises(TypeError, match=f"stream: task #{bad[0]} is "):
            prepare(items, InputFailure())
    else:
        tagger, count = prepare(items, InputFailure())
        assert type(tagger) is Tagger
        assert count == len(items)


async def test_a_bad_item_in_a_collection_is_refused_before_any_work() -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(provider)
    with pytest.raises(TypeError, match=r"stream: task #1 is a str"):
        await collect(executor, [ask("a"), "not a task"])
    with pytest.raises(TypeError, match="not int"):
        await collect(executor, 42)
    assert provider.call_count == 0


async def test_a_bad_item_read_lazily_fails_alone() -> None:
    def gen() -> Iterator[Any]:
        yield ask("a")
        yield "not a task"
        yield ask("c")

    results = await collect(ParallelLLMExecutor(EchoProvider()), gen())
    by_tag = {r.tag: r for r in results}
    assert by_tag["0"].success and by_tag["2"].success
    assert isinstance(by_tag["1"].error, TypeError)
    assert "task #1 is a str" in str(by_tag["1"].error)


async def test_an_error_raised_by_the_input_propagates() -> None:
    def gen() -> Iterator[LLMTask]:
        yield ask("a")
        raise LookupError("the source broke")

    async def agen() -> AsyncIterator[LLMTask]:
        yield ask("a")
        await anyio.lowlevel.checkpoint()
        raise LookupError("the source broke")

    executor = ParallelLLMExecutor(EchoProvider())
    for source in (gen(), agen()):
        with pytest.raises(LookupError, match="the source broke"):
            await collect(executor, source)


async def test_every_task_taken_before_the_input_broke_gets_its_result_first() -> None:
    # trio used to lose the results of tasks in flight when a worker's read raised.
    def gen() -> Iterator[LLMTask]:
        for i in range(5):
            yield ask(str(i))
        raise LookupError("the source broke")

    async def agen() -> AsyncIterator[LLMTask]:
        for i in range(5):
            yield ask(str(i))
        await anyio.lowlevel.checkpoint()
        raise LookupError("the source broke")

    async def consume(provider: GatedProvider, source: Any, received: list[str]) -> None:
        async with ParallelLLMExecutor(provider, max_concurrency=10).stream(source) as results:
            await provider.wait_running(5)  # every task taken is in flight
            for i in range(5):
                provider.gate(str(i)).set()
            async for result in results:
                received.append(result.tag)

    for source in (gen(), agen()):
        provider = GatedProvider()
        received: list[str] = []
        with anyio.fail_after(5), pytest.raises(LookupError, match="the source broke"):
            await consume(provider, source, received)
        assert sorted(received) == ["0", "1", "2", "3", "4"]


# -- input is read lazily; memory stays proportional to max_concurrency ------------------


async def test_input_is_pulled_only_as_workers_free_up() -> None:
    provider = GatedProvider()
    pulled = 0

    def endless() -> Iterator[LLMTask]:
        nonlocal pulled
        while True:
            pulled += 1
            yield ask(str(pulled))

    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    with anyio.fail_after(5):
        async with executor.stream(endless()) as results:
            await provider.wait_running(3)
            assert pulled == 3
            provider.gate("2").set()
            first = await anext(results)
            await provider.wait_running(3)  # the freed worker took exactly one more
            assert first.tag == "1" and pulled == 4


async def test_a_slow_consumer_holds_the_workers_back() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[LLMTask]:
        nonlocal pulled
        while True:
            pulled += 1
            yield ask(str(pulled))

    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=4)
    with anyio.fail_after(5):
        async with executor.stream(endless()) as results:
            await anyio.wait_all_tasks_blocked()
            # The result buffer (twice max_concurrency) is full and every worker waits
            # to hand its result on: nothing more is read from the endless input.
            assert pulled == 3 * 4
            await anext(results)
            await anyio.wait_all_tasks_blocked()
            assert pulled == 3 * 4 + 1  # room for one: one worker went on, took one task
            # What is ready includes the results of the workers waiting for room, and
            # taking it all makes room for as many again.
            assert len(results.ready()) == 3 * 4
            await anyio.wait_all_tasks_blocked()
            assert pulled == 3 * 4 + 1 + 3 * 4


# -- leaving early -----------------------------------------------------------------------


async def test_break_after_the_first_result_cancels_the_rest_promptly() -> None:
    provider = GatedProvider()
    provider.gate("fast").set()
    closed = False

    async def source() -> AsyncIterator[LLMTask]:
        nonlocal closed
        try:
            yield ask("fast")
            for i in range(1000):
                yield ask(f"slow {i}")
        finally:
            closed = True

    executor = ParallelLLMExecutor(provider, max_concurrency=5)
    with anyio.fail_after(5):
        async with executor.stream(source()) as results:
            async for result in results:
                assert result.tag == "0"
                await provider.wait_running(5)  # slow calls are in flight as we leave
                break
    assert provider.running == 0
    assert provider.cancelled == 5 and provider.started == 6
    assert closed  # the async generator was closed, its finally ran


async def test_leaving_as_calls_finish_is_clean() -> None:
    # The calls in flight finish in the very instant the consumer leaves: their wake-ups
    # are due before the cancellation lands (asyncio then does not cancel them), so they
    # hand on results after the consumer has gone. That used to raise
    # BrokenResourceError in an ExceptionGroup.
    provider = GatedProvider()
    provider.gate("first").set()
    tasks = {"first": ask("first"), **{f"s{i}": ask("slow") for i in range(20)}}
    executor = ParallelLLMExecutor(provider, max_concurrency=5)
    for _ in range(3):
        provider.gates.pop("slow", None)
        with anyio.fail_after(5):
            async with executor.stream(tasks) as results:
                first = await anext(results)
                await provider.wait_running(5)
                provider.gate("slow").set()  # five results due, none handed on yet
        assert first.tag == "first" and provider.running == 0


async def test_leaving_early_is_clean_under_load() -> None:
    # The reproduction, smaller: break (or time out) mid-stream with many in flight.
    executor = ParallelLLMExecutor(EchoProvider(latency=0.001), max_concurrency=50)
    for run in range(20):
        with anyio.fail_after(10), anyio.move_on_after(0.02 if run % 2 else 10):
            async with executor.stream(ask(str(i)) for i in range(100_000)) as results:
                count = 0
                async for _ in results:
                    count += 1
                    if count == 100:
                        break


async def test_an_exception_in_the_block_cancels_the_work_and_propagates_bare() -> None:
    provider = GatedProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)

    async def fail_inside() -> None:
        async with executor.stream([ask(str(i)) for i in range(10)]):
            await provider.wait_running(3)
            raise KeyError("mine")

    with anyio.fail_after(5), pytest.raises(KeyError, match="mine"):
        await fail_inside()
    assert provider.running == 0 and provider.started == 3


async def test_cancelling_from_outside_stops_the_stream_promptly() -> None:
    provider = GatedProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    received: list[TaskResult] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async with executor.stream(ask(str(i)) for i in range(10)) as results:
                    async for result in results:
                        received.append(result)

            tg.start_soon(consume)
            await provider.wait_running(3)
            tg.cancel_scope.cancel()
    assert received == []
    assert provider.running == 0 and provider.cancelled == 3


async def test_leaving_without_reading_cancels_everything() -> None:
    provider = GatedProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=2)
    with anyio.fail_after(5):
        async with executor.stream({str(i): ask(str(i)) for i in range(4)}):
            await provider.wait_running(2)
    assert provider.running == 0 and provider.started == 2


async def test_stream_shares_the_cap_with_other_calls_on_the_executor() -> None:
    provider = GatedProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(executor.execute, {f"e{i}": ask(f"e{i}") for i in range(2)})
            async with executor.stream([ask(f"s{i}") for i in range(3)]) as results:
                await provider.wait_running(3)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                assert provider.running == 3  # 2 + 3 wanted, 3 allowed
                for name in ["e0", "e1", "s0", "s1", "s2"]:
                    provider.gate(name).set()
                assert len([r async for r in results]) == 3


async def test_ready_hands_out_finished_results_without_waiting() -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)
    hang = anyio.Event()

    async def wait_forever() -> None:
        await hang.wait()

    tasks = {"a": ask("a"), "b": ask("b"), "stuck": DeterministicTask(wait_forever)}
    with anyio.fail_after(5):
        async with executor.stream(tasks) as results:
            await anyio.wait_all_tasks_blocked()  # a and b are done; "stuck" never will be
            ready = results.ready()
            assert sorted(r.tag for r in ready) == ["a", "b"]
            assert results.ready() == []  # taken once only
