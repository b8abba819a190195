"""The shared first-come admission queue, by property: FIFO, no lost wakeups, nothing booked
for a caller that left.

A fake clock drives the core (a token bucket); the queue's own naps are on the event
loop's clock and are made long (fake seconds read as real ones would be minutes), so
only :meth:`AdmissionQueue.wake` and turns passed on move the line, as in the limiters.
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfanout._flow._admission import AdmissionQueue, Bucket

pytestmark = pytest.mark.anyio


class Core:
    """A token bucket at one unit a (fake) second that records what it booked."""

    def __init__(self) -> None:
        self.bucket = Bucket(1.0)
        self.bucket.at = 0.0
        self.booked: list[int] = []  # costs, in booking order

    def ready_at(self, now: float, cost: int) -> float:
        # Scaled up: a wait of a fake second is a nap of 1000 real ones (never reached).
        when = self.bucket.ready_at(now, cost)
        return now if when <= now else now + (when - now) * 1000

    def ready(self, now: float, cost: int) -> bool:
        return self.bucket.ready_at(now, cost) <= now

    def book(self, now: float, cost: int) -> int:
        self.bucket.take(now, cost)
        self.booked.append(cost)
        return len(self.booked)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(0, 3)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(script=ops)
async def test_callers_are_admitted_first_come_and_leaving_books_nothing(
    script: list[tuple[str, float]],
) -> None:
    queue = AdmissionQueue()
    core = Core()
    now = [0.0]
    admitted: list[int] = []  # caller numbers, in admission order
    cancelled: set[int] = set()
    scopes: list[anyio.CancelScope] = []
    costs: list[int] = []

    async def caller(number: int, cost: int, scope: anyio.CancelScope) -> None:
        with scope:
            await queue.admit(core, cost, lambda: now[0])
            admitted.append(number)  # no checkpoint since the booking: booking order

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for op, value in script:
                if op == "arrive":
                    scope = anyio.CancelScope()
                    scopes.append(scope)
                    costs.append(int(value))
                    tg.start_soon(caller, len(costs) - 1, int(value), scope)
                elif op == "cancel" and scopes:
                    number = int(value) % len(scopes)
                    if number not in admitted:
                        cancelled.add(number)
                    scopes[number].cancel()
                elif op == "advance":
                    now[0] += value
                    queue.wake()  # the core changed: the head must look again
                await anyio.wait_all_tasks_blocked()

                waiting = [n for n in range(len(costs)) if n not in admitted and n not in cancelled]
                # FIFO: admitted callers are the first ones that did not leave.
                assert admitted == sorted(admitted)
                assert all(n < min(waiting, default=len(costs)) for n in admitted)
                # Nothing booked but for callers admitted, and each of them once.
                assert core.booked == [costs[n] for n in admitted]
                assert len(queue) == len(waiting)
                # No lost wakeup: the caller at the head is waiting for the bucket only.
                if waiting:
                    assert not core.ready(now[0], costs[waiting[0]])
            tg.cancel_scope.cancel()
    assert len(queue) == 0


async def test_a_caller_behind_the_head_is_granted_and_the_line_moves_on() -> None:
    queue = AdmissionQueue()
    outcomes: list[str] = []

    async def behind(name: str) -> None:
        waiter = await queue.turn(1)
        try:
            outcomes.append(f"{name}:{'granted' if waiter.granted else 'head'}")
        finally:
            queue.leave(waiter)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            head = await queue.turn(1)
            for name in "bc":  # one at a time: trio runs new tasks in any order
                tg.start_soon(behind, name)
                await anyio.wait_all_tasks_blocked()
            queue.grant(next(w for w in queue if w is not head))  # b, in one round trip
            await anyio.wait_all_tasks_blocked()
            assert outcomes == ["b:granted"]
            queue.leave(head)  # c's turn as the head
    assert outcomes == ["b:granted", "c:head"]
    assert len(queue) == 0
