"""The batcher behind the stores: one hop per batch, and no caller ever left waiting."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfanout._cache._batcher import Batcher

pytestmark = pytest.mark.anyio


class Store:
    """A blocking ``run`` that doubles its items, records each batch, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(10)
        return [2 * i for i in items]


async def entered(store: Store) -> None:
    """Until the store's thread has a batch in hand (the event is set from that thread)."""
    while not store.entered.is_set():
        await anyio.lowlevel.checkpoint()  # polled, not slept: set by another thread


async def test_calls_made_together_go_in_one_batch() -> None:
    store = Store()
    batcher = Batcher(store.run)
    got: dict[int, int] = {}

    async def ask(i: int) -> None:
        got[i] = await batcher(i)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(ask, i)
    assert got == {i: 2 * i for i in range(100)}
    assert len(store.batches) == 1


async def test_woken_callers_make_one_batch_not_one_and_the_rest() -> None:
    """Callers that ask again as soon as their batch answers make one batch each round."""
    store = Store()
    batcher = Batcher(store.run)

    async def worker(i: int) -> None:
        for round_ in range(5):
            assert await batcher(i * 10 + round_) == 2 * (i * 10 + round_)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(worker, i)
    assert sorted(len(b) for b in store.batches) == [50] * 5


async def test_a_leader_cancelled_before_its_turn_leaves_no_one_waiting() -> None:
    store = Store()
    store.release.clear()
    batcher = Batcher(store.run)
    got: dict[int, int] = {}

    async def ask(i: int) -> None:
        got[i] = await batcher(i)

    with anyio.fail_after(30):  # a caller left waiting fails here, not hangs
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, 0)  # leads the first batch, held in the thread
            await entered(store)
            # The next batch: its leader is cancelled while it waits for its turn.
            scope = anyio.CancelScope()

            async def cancelled_leader() -> None:
                with scope:
                    got[-1] = await batcher(-1)

            tg.start_soon(cancelled_leader)
            group = batcher._groups.get(None)
            while group is None or group.pending is None or group.pending.turn is None:
                await anyio.lowlevel.checkpoint()
                group = batcher._groups.get(None)
            for i in range(1, 10):
                tg.start_soon(ask, i)
            while len(group.pending.items) < 10:  # they joined the leader's batch
                await anyio.lowlevel.checkpoint()
            scope.cancel()
            await anyio.lowlevel.checkpoint()
            store.release.set()
    assert -1 not in got
    assert got == {i: 2 * i for i in range(10)}
    assert store.batches[0] == [0]
    assert sorted(store.batches[1]) == list(range(1, 10))  # asked again, without it


async def test_a_leader_cancelled_during_its_hop_leaves_no_one_waiting() -> None:
    store = Store()
    store.release.clear()
    batcher = Batcher(store.run)
    got: dict[int, int] = {}
    scopes = [anyio.CancelScope() for _ in range(10)]

    async def ask(i: int) -> None:
        with scopes[i]:
            got[i] = await batcher(i)

    with anyio.fail_after(30):  # a caller left waiting fails here, not hangs
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(ask, i)  # one batch: they ask in the same turn
            await entered(store)
            leader = store.batches[0][0]  # the first to ask leads
            scopes[leader].cancel()  # the hop runs on to its end; its answers are dropped
            await anyio.lowlevel.checkpoint()
            store.release.set()
        others = [i for i in range(10) if i != leader]
    assert got == {i: 2 * i for i in others}
    assert sorted(store.batches[0]) == list(range(10))
    # The hop ran to its end: its answers reach the others (anyio hands a finished
    # thread's result back and cancels at the next checkpoint), or they ask again.
    assert all(sorted(b) == others for b in store.batches[1:])


async def test_an_error_reaches_every_caller_of_its_batch() -> None:
    def run(items: list[int]) -> list[int]:
        raise OSError("disk full")

    batcher = Batcher(run)
    errors: list[str] = []

    async def ask(i: int) -> None:
        try:
            await batcher(i)
        except OSError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(ask, i)
    assert errors == ["disk full"] * 5


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(0, 3))
def test_any_cancellations_leave_every_other_caller_answered(
    cancel: list[bool], yields: int
) -> None:
    """Cancel any set of callers at any point: every other caller gets its own answer."""

    async def main() -> None:
        store = Store()
        batcher = Batcher(store.run)
        got: dict[int, int] = {}
        scopes = [anyio.CancelScope() for _ in cancel]

        async def ask(i: int) -> None:
            with scopes[i]:
                got[i] = await batcher(i)

        async with anyio.create_task_group() as tg:
            for i in range(len(cancel)):
                tg.start_soon(ask, i)
            for _ in range(yields):
                await anyio.lowlevel.checkpoint()
            for i, doomed in enumerate(cancel):
                if doomed:
                    scopes[i].cancel()
        for i, doomed in enumerate(cancel):
            if not doomed or i in got:  # a doomed one may be answered before it is cancelled
                assert got[i] == 2 * i

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
