"""Hedging inside ``async with pool:``: one timer per block, the first copy in the caller.

In-process providers whose answers the test releases with events, on both backends. The
rules are those of a task group per call (the first whole answer wins, the loser is
cancelled and ended before the call returns, an error waits for the other copy, a
cancelled caller takes both copies with it); what changes is where the copies run: the
first in the caller's own task, a copy only once the delay has passed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import Deployment, LLMMessage, LLMResponse, LLMTask, ParallelLLMExecutor, Pool
from llmfanout._deploy._hedge import _COMPACT_AT, HOST, HedgeHost, Race

pytestmark = pytest.mark.anyio

DELAY = 0.05
REQUEST: ContextVar[str] = ContextVar("test_request", default="none")


class Scripted:
    """Answers by prompt: ``hang`` never (until cancelled); ``gate`` once ``release`` is
    set; ``fail`` raises; ``gate-fail`` raises once released; anything else at once.
    Records, per prompt, the task it ran in, when it came and the caller's REQUEST."""

    def __init__(self, name: str, script: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.script = dict(script or {})
        self.release = anyio.Event()
        self.came: dict[str, anyio.Event] = {}
        self.calls: dict[str, tuple[int, float, str]] = {}
        self.cancelled: list[str] = []

    def arrived(self, text: str) -> anyio.Event:
        return self.came.setdefault(text, anyio.Event())

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        text = messages[-1].content
        self.calls[text] = (anyio.get_current_task().id, anyio.current_time(), REQUEST.get())
        self.arrived(text).set()
        how = self.script.get(text, "answer")
        done = False
        try:
            if how == "hang":
                await anyio.Event().wait()
            elif how.startswith("gate"):
                await self.release.wait()
            else:
                await anyio.lowlevel.checkpoint()
            done = True
        finally:
            if not done:
                self.cancelled.append(text)
        if how.endswith("fail"):
            raise ValueError(f"{self.name} failed {text}")
        return LLMResponse(f"{self.name}: {text}", model="m")


def ask(text: str) -> list[LLMMessage]:
    return [LLMMessage("user", text)]


def pair(first: Scripted, second: Scripted, delay: float | str = DELAY) -> Pool:
    return Pool(
        [
            Deployment(name=first.name, provider=first, weight=100.0),  # each call's first
            Deployment(name=second.name, provider=second),
        ],
        hedge_after=delay,
    )


def idle(pool: Pool) -> bool:
    return all(s.in_flight == 0 for s in pool._slots)


async def test_an_answer_in_time_runs_in_the_callers_task_and_is_never_copied() -> None:
    first, second = Scripted("first", {"probe": "hang"}), Scripted("second")
    pool = pair(first, second)
    with anyio.fail_after(10):
        async with pool:
            assert HOST.get() is not None
            quick = await pool.complete(ask("quick"))
            assert quick.metadata == {"deployment": "first"}
            assert first.calls["quick"][0] == anyio.get_current_task().id  # no task made
            # A later call that hangs is hedged once its own, later, deadline passes: by
            # then the quick call's deadline has passed too, and it sent no copy.
            probe = await pool.complete(ask("probe"))
            assert probe.metadata["deployment"] == "second" and probe.metadata["hedged"]
            assert list(second.calls) == ["probe"]
            assert pool.stats()["second"].hedges == 1
        assert HOST.get() is None


async def test_past_the_delay_a_copy_wins_and_the_first_is_cancelled() -> None:
    first, second = Scripted("first", {"stuck": "hang"}), Scripted("second")
    pool = pair(first, second)
    with anyio.fail_after(10):
        async with pool:
            answer = await pool.complete(ask("stuck"))
            assert answer.content == "second: stuck" and answer.metadata["hedged"]
            assert answer.metadata["deployment_attempts"] == {"first": 1, "second": 1}
            assert first.cancelled == ["stuck"]  # ended before the call returned
            assert idle(pool)
            began, hedged = first.calls["stuck"], second.calls["stuck"]
            assert hedged[0] != anyio.get_current_task().id  # the copy: the host's task
            assert hedged[1] - began[1] >= DELAY  # on the pool's clock
            assert pool.stats()["second"].hedges == 1


async def test_the_first_copy_wins_if_it_answers_before_the_copy() -> None:
    first, second = Scripted("first", {"late": "gate"}), Scripted("second", {"late": "hang"})
    pool = pair(first, second)
    got: list[LLMResponse] = []

    async def call() -> None:
        got.append(await pool.complete(ask("late")))

    with anyio.fail_after(10):
        async with pool, anyio.create_task_group() as tg:
            tg.start_soon(call)
            await second.arrived("late").wait()  # the copy went
            first.release.set()
        assert got[0].content == "first: late" and got[0].metadata["hedged"]
        assert second.cancelled == ["late"] and first.cancelled == []
        assert idle(pool)


async def test_an_error_waits_for_the_copy_and_both_failing_raise_the_first() -> None:
    first = Scripted("first", {"a": "gate-fail", "b": "gate-fail"})
    second = Scripted("second", {"a": "gate", "b": "gate-fail"})
    pool = pair(first, second)
    got: list[LLMResponse] = []
    errors: list[Exception] = []

    async def call(text: str) -> None:
        try:
            got.append(await pool.complete(ask(text)))
        except ValueError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with pool:
            for text in ("a", "b"):
                first.release, second.release = anyio.Event(), anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, text)
                    await second.arrived(text).wait()  # both copies are out
                    first.release.set()  # the first fails...
                    await anyio.lowlevel.checkpoint()
                    second.release.set()  # ...and the call waits for the copy
    assert [r.content for r in got] == ["second: a"] and got[0].metadata["hedged"]
    assert [str(e) for e in errors] == ["first failed b"]
    assert first.cancelled == second.cancelled == [] and idle(pool)


async def test_cancelling_the_caller_cancels_both_copies_and_ends_them() -> None:
    first = Scripted("first", {"both": "hang", "early": "hang", "probe": "hang"})
    second = Scripted("second", {"both": "hang"})
    pool = pair(first, second)
    with anyio.fail_after(10):
        async with pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.complete, ask("both"))
                await second.arrived("both").wait()  # hedged: two copies out
                tg.cancel_scope.cancel()
            assert first.cancelled == second.cancelled == ["both"] and idle(pool)
            # Cancelled before its delay: the timer never sends a copy of it later.
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.complete, ask("early"))
                await first.arrived("early").wait()
                tg.cancel_scope.cancel()
            await pool.complete(ask("probe"))  # hedged past a later deadline
            assert "early" not in second.calls and idle(pool)


async def test_the_copy_runs_with_the_callers_context() -> None:
    first, second = Scripted("first", {"stuck": "hang"}), Scripted("second")
    pool = pair(first, second)
    with anyio.fail_after(10):
        async with pool:
            REQUEST.set("req-42")
            await pool.complete(ask("stuck"))
    assert first.calls["stuck"][2] == second.calls["stuck"][2] == "req-42"


class HangOnce:
    """Hangs on the first request of a prompt in ``stuck``, wherever it is routed (the
    pool balances load, so a call's first copy may go to either); answers the rest."""

    def __init__(self, name: str, stuck: set[str], seen: dict[str, str]) -> None:
        self.name, self.stuck, self.seen = name, stuck, seen
        self.cancelled: list[str] = []

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        text = messages[-1].content
        if text in self.stuck and text not in self.seen:
            self.seen[text] = self.name
            try:
                await anyio.Event().wait()
            finally:
                self.cancelled.append(text)
        await anyio.lowlevel.checkpoint()
        return LLMResponse(f"{self.name}: {text}", model="m")


async def test_many_calls_through_the_executor_are_hedged_only_where_stuck() -> None:
    stuck = {f"t{i}" for i in range(0, 40, 2)}
    seen: dict[str, str] = {}
    a, b = HangOnce("a", stuck, seen), HangOnce("b", stuck, seen)
    pool = Pool([a, b], hedge_after=DELAY)
    with anyio.fail_after(20):
        async with pool:
            executor = ParallelLLMExecutor(pool, max_concurrency=40)
            results = await executor.execute(
                {k: LLMTask(ask(k)) for k in map("t{}".format, range(40))}
            )
    assert all(r.success for r in results.values())
    hedged = {k for k, r in results.items() if r.value.metadata.get("hedged")}
    assert hedged == stuck
    names = {"a": "deployment-1", "b": "deployment-2"}
    for text in stuck:  # the copy went to the other deployment, the first was cancelled
        assert results[text].value.metadata["deployment"] != names[seen[text]]
    assert sorted(a.cancelled + b.cancelled) == sorted(stuck)
    assert sum(s.hedges for s in pool.stats().values()) == len(stuck) and idle(pool)


async def test_the_block_ends_cleanly_and_a_pool_not_entered_still_hedges() -> None:
    first, second = Scripted("first", {"stuck": "hang"}), Scripted("second")
    pool = pair(first, second)
    with pytest.raises(KeyError):  # the block's own error, not wrapped in a group
        async with pool:
            raise KeyError("mine")
    assert HOST.get() is None
    with anyio.fail_after(10):
        answer = await pool.complete(ask("stuck"))  # a task group of its own
    assert answer.metadata["hedged"] and first.cancelled == ["stuck"]
    assert first.calls["stuck"][0] != anyio.get_current_task().id
    other = pair(Scripted("a"), Scripted("b"))
    await pool.__aenter__()
    await other.__aenter__()
    with pytest.raises(RuntimeError, match="left out of order"):
        await pool.__aexit__(None, None, None)  # refused before anything is closed
    await other.__aexit__(None, None, None)
    await pool.__aexit__(None, None, None)
    assert HOST.get() is None


async def test_a_call_outliving_its_block_still_answers() -> None:
    first, second = Scripted("first", {"stray": "gate-then-answer"}), Scripted("second")
    pool = pair(first, second, 5.0)
    got: list[LLMResponse] = []
    callers: list[int] = []

    async def call() -> None:
        callers.append(anyio.get_current_task().id)
        got.append(await pool.complete(ask("stray")))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            async with pool:
                outer.start_soon(call)  # sees the block's host, and outlives the block
                await first.arrived("stray").wait()
            assert HOST.get() is None
            first.release.set()
    assert got[0].content == "first: stray" and "hedged" not in got[0].metadata
    assert "stray" not in second.calls and idle(pool)
    assert first.calls["stray"][0] == callers[0]  # it was the block's: in its own task


# -- the timer's heap: bounded by the calls in flight ---------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=1000)), max_size=400))
def test_answered_calls_leave_the_heap_in_time(steps: list[tuple[bool, int]]) -> None:
    host = HedgeHost(None, None)  # type: ignore[arg-type]  # no timer runs here
    live: list[Race] = []
    for settle, pick in steps:
        if settle and live:
            host.settled(live.pop(pick % len(live)))
            continue
        race = Race(None, None, None, None)  # type: ignore[arg-type]
        host.add(race, float(pick))
        live.append(race)
        heap = host._heap
        assert sum(not entry[2].settled for entry in heap) == len(live)
        assert len(heap) <= len(live) + max(_COMPACT_AT, len(live))
        assert all(heap[(i - 1) // 2][:2] <= heap[i][:2] for i in range(1, len(heap)))
