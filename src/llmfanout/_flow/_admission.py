"""The two parts every limiter here is built of: a token bucket and a first-come queue.

:class:`Bucket` is pure arithmetic over an explicit clock. :class:`AdmissionQueue` admits
callers in arrival order over any *core* with ``ready_at(now, cost)`` and ``book(now,
cost)`` (the pure part of :class:`~llmfanout.RateLimit` and of the pacer): while nobody
waits, a caller the core allows now is booked at once, with no lock and no allocation;
once one has to wait, later callers line up behind it and only the head of the line asks
the core, sleeping until the time it names or until :meth:`AdmissionQueue.wake` says the
core changed (an answer's headers, a cooldown), then asking again. Nothing is booked
for a caller until it is admitted, so a caller that leaves the line (cancelled) leaves
nothing behind, and its place passes to the next one.

The same line serves a core that is asked over the network (``RedisRateLimit``): there
the head joins the line, waits for its turn with :meth:`AdmissionQueue.turn`, and may
admit waiters behind it in one round trip with :meth:`AdmissionQueue.grant_in_order`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import anyio

__all__ = ["AdmissionQueue", "Bucket", "Core", "WaitTooLong", "Waiter"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Bucket:
    """A token bucket, refilled lazily: ``level`` as of time ``at``, never above capacity."""

    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = max(per_second, 1.0)  # one second of burst, at least one unit
        self.level = self.capacity
        self.at = -math.inf

    def ready_at(self, now: float, cost: float) -> float:
        """The earliest time, not before ``now``, at which ``cost`` may be taken."""
        base = max(now, self.at)
        level = min(self.capacity, self.level + self.rate * (base - self.at))
        need = min(cost, self.capacity)  # a cost over the burst waits for a full bucket
        return base if level >= need else base + (need - level) / self.rate

    def take(self, when: float, cost: float) -> None:
        """Debit ``cost`` (a negative cost refunds) as of ``when``; the level may go negative."""
        if when > self.at:
            self.level = min(self.capacity, self.level + self.rate * (when - self.at))
            self.at = when
        self.level -= cost

    def resize(self, now: float, per_second: float) -> None:
        """A new rate: keep the level as of ``now``, within the new burst."""
        self.take(now, 0)
        self.rate, self.capacity = per_second, max(per_second, 1.0)
        self.level = min(self.level, self.capacity)


class WaitTooLong(Exception):
    """The head of the line would wait longer than the caller allowed (``within``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class Core(Protocol[T_co]):
    """The pure part of a limiter: when a call of ``cost`` may start, and booking it."""

    def ready_at(self, now: float, cost: int) -> float: ...

    def book(self, now: float, cost: int) -> T_co: ...


class Waiter:
    """One caller in the line: its cost, and what the head decided for it."""

    __slots__ = ("_next", "_turn", "cost", "error", "granted")

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self.granted = False  # admitted by the head on its behalf (see grant_in_order)
        self.error: Exception | None = None  # or failed by the head on its behalf
        self._turn: anyio.Event | None = None  # made only if it has to wait for a turn
        self._next: Waiter | None = None  # granted with it, to wake once it is awake


def _wake_next(waiter: Waiter) -> None:
    """``waiter`` is awake (or gone): the next caller granted with it wakes."""
    after = waiter._next
    if after is not None:
        waiter._next = None
        if after._turn is not None:
            after._turn.set()


class AdmissionQueue:
    """Callers in arrival order; the head waits for the core, the rest wait for the head.

    Belongs to whichever event loop its waiters run on; it is empty between loops, so a
    limiter may serve successive loops (its events are made afresh each time).
    """

    __slots__ = ("_changed", "_line")

    def __init__(self) -> None:
        self._line: deque[Waiter] = deque()
        self._changed: anyio.Event | None = None  # exists only while the head naps

    def __len__(self) -> int:
        return len(self._line)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self._line)

    async def admit(
        self, core: Core[T], cost: int, clock: Callable[[], float], within: float = math.inf
    ) -> T:
        """Wait in line until ``core`` allows a call of ``cost``; book it; its booking.

        Cancellation while waiting books nothing and passes the turn on. At the head of
        the line, a wait longer than ``within`` seconds is not taken: :class:`WaitTooLong`
        is raised at once (and the turn passes on), books nothing.
        """
        if not self._line:  # nobody waits: no line unless we must wait
            now = clock()
            if core.ready_at(now, cost) <= now:
                return core.book(now, cost)
        waiter = await self.turn(cost)
        try:
            while True:
                now = clock()
                when = core.ready_at(now, cost)
                if when <= now:
                    return core.book(now, cost)
                if not when - now <= within:  # an infinite wait too
                    raise WaitTooLong(when - now)
                await self.nap(when - now)
        finally:
            self.leave(waiter)

    async def turn(self, cost: int, waiter: Waiter | None = None) -> Waiter:
        """Join the line and wait to be its head (or to be granted or failed by the head).

        The caller must :meth:`leave` once done, whatever happens (a ``finally``).
        Cancelled while waiting, it has left already; a caller that passes its own
        ``waiter`` can then still see whether the head had granted it meanwhile.
        """
        if waiter is None:
            waiter = Waiter(cost)
        self._line.append(waiter)
        if self._line[0] is waiter:
            return waiter
        waiter._turn = anyio.Event()
        try:
            await waiter._turn.wait()
        except BaseException:  # cancelled: give the place up, and re-raise (noqa: cancellation-ok)
            self.leave(waiter)
            _wake_next(waiter)
            raise
        _wake_next(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` is done with the line: if it was the head, the next one's turn."""
        line = self._line
        if line and line[0] is waiter:
            line.popleft()
            if line:
                head = line[0]
                if head._turn is not None:
                    head._turn.set()
        elif waiter in line:  # not if granted or failed by the head: out already
            line.remove(waiter)
        if not line:  # made afresh by the next head, on whatever loop it runs
            self._changed = None

    def grant(self, waiter: Waiter, error: Exception | None = None) -> None:
        """The head admits (or, with ``error``, fails) ``waiter``, a caller behind it."""
        self._line.remove(waiter)
        waiter.granted = error is None
        waiter.error = error
        if waiter._turn is not None:
            waiter._turn.set()

    def grant_in_order(self, waiters: list[Waiter]) -> list[Waiter]:
        """The head admits ``waiters``, callers behind it in line order, all at once.

        They wake in that order, each once the one before it has (as if admitted one
        by one). Returns those of ``waiters`` that had left the line already (cancelled),
        for which nothing is done.
        """
        granted: list[Waiter] = []
        gone: list[Waiter] = []
        for waiter in waiters:
            try:
                self._line.remove(waiter)  # near the front of the line: cheap
            except ValueError:
                gone.append(waiter)
                continue
            waiter.granted = True
            if granted:
                granted[-1]._next = waiter
            granted.append(waiter)
        if granted and granted[0]._turn is not None:
            granted[0]._turn.set()
        return gone

    async def nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`wake` is called meanwhile."""
        if self._changed is None:
            self._changed = anyio.Event()
        with anyio.move_on_after(seconds):
            await self._changed.wait()

    def wake(self) -> None:
        """The core changed: a napping head looks again at once."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None
