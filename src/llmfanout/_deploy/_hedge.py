"""Hedging without a task per call: one timer and one task group per ``async with pool``.

A hedged call used to open a task group and start a task for its first copy, so that
something could send the second copy once ``hedge_after`` passed; that cost about a
task group, a task and two cancel scopes on every call (some 200 us of CPU), though
nearly every call answers before the delay and is never hedged.

Inside ``async with pool:`` the pool opens one :class:`HedgeHost` instead: a task group
holding one timer task (a heap of the deadlines of the calls in flight) that starts a
hedge's copy in that group only when a call's deadline passes unanswered. The call's
first copy runs in the caller's own task, under a cancel scope the copy cancels if it
wins; a call that answers in time costs a heap push and that scope. The host is found
through a context variable, so it serves exactly the code run inside the block (the
executor's workers started there), and lives no longer than the block: nothing outlives
it. Elsewhere (a pool not entered) the pool falls back to a task group per call.

The rules are the per-call group's: the first whole answer wins and the other copy is
cancelled, and the call returns only once it is; an error waits for the other copy; a
caller cancelled cancels its copy and waits for it to end. The copy runs with the
caller's context variables, as a task started by the caller would. A call still running
when its block ends (a task started inside the block into a group outside it) keeps its
first request; its copy, if any, is cancelled with the block, and it is not hedged after.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable
from contextvars import Context, ContextVar
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._base._types import LLMResponse
from ._latency import LatencyWindow

__all__ = ["HOST", "HedgeHost", "Race"]

# The host of the innermost ``async with pool:`` block (of a pool that hedges) this code
# runs in; None outside every such block.
HOST: ContextVar[HedgeHost | None] = ContextVar("llmfanout_hedge_host", default=None)

# Compact the heap once more than this many answered calls wait in it, and they are
# over half of it: memory stays within twice the calls in flight.
_COMPACT_AT = 64


class Race:
    """One hedged call: its first copy in the caller's task, perhaps a second in the host.

    ``send(avoid, chose)`` sends a copy of the call, avoiding the deployment ``avoid``
    and telling ``chose`` where it goes; ``chosen`` collects the deployments the first
    copy went to (the second copy avoids the first of them).
    """

    __slots__ = (
        "answers",
        "call",
        "chosen",
        "context",
        "copy_done",
        "copy_scope",
        "errors",
        "first",
        "first_running",
        "hedged",
        "send",
        "settled",
        "started",
        "window",
    )

    def __init__(
        self,
        send: Callable[[Any, Any], Awaitable[LLMResponse]],
        call: Any,
        window: LatencyWindow | None,
        context: Context,
    ) -> None:
        self.send = send
        self.call = call  # its ``hedged`` is set once the copy goes
        self.window = window
        self.context = context
        self.chosen: list[Any] = []
        self.answers: list[LLMResponse] = []
        self.errors: list[Exception] = []
        self.settled = False  # the caller needs no copy any more (answered, or gone)
        self.hedged = False  # the timer started the copy's task
        self.started = False  # the copy sent its request
        self.first: anyio.CancelScope | None = None  # the caller's copy, while it runs
        self.first_running = True
        self.copy_scope: anyio.CancelScope | None = None
        self.copy_done: anyio.Event | None = None

    async def copy(self) -> None:
        """The hedge's copy, run in the host's task group."""
        assert self.copy_done is not None
        try:
            if self.settled:  # the first copy answered before this task began: no copy
                return
            for var, value in self.context.items():  # the caller's context, as start_soon
                var.set(value)
            self.started = True
            self.call.hedged = True
            start = anyio.current_time()
            answer: LLMResponse | None = None
            error: Exception | None = None
            try:
                with anyio.CancelScope() as self.copy_scope:
                    try:
                        answer = await self.send(self.chosen[0] if self.chosen else None, None)
                    except Exception as exc:
                        error = exc
            finally:  # also when the host closes under it
                self.finished(answer, error, start)
                if self.answers and self.first_running and self.first is not None:
                    self.first.cancel()  # this copy won: the caller's copy is the loser
        finally:
            self.copy_done.set()

    def finished(self, answer: LLMResponse | None, error: Exception | None, start: float) -> None:
        """A copy ended (neither: cancelled): keep its outcome, and its latency."""
        if answer is not None:
            self.answers.append(answer)
        elif error is not None:
            self.errors.append(error)
        if self.window is not None and (self.answers or not self.errors):
            # An answer's latency, or a lower bound for a copy cut short: hedging must
            # not pull the quantile down by hiding the slow answers it cuts short.
            self.window.add(anyio.current_time() - start)

    def cancel_copy(self) -> None:
        """The caller is done with the copy: stop it (or keep it from starting)."""
        self.settled = True
        if self.copy_scope is not None:
            self.copy_scope.cancel()


class HedgeHost:
    """The timer and task group that hedge the calls made inside one ``async with pool``."""

    __slots__ = ("_heap", "_seq", "_stale", "_target", "_wake", "closed", "owner", "tg", "token")

    def __init__(self, tg: TaskGroup, owner: object) -> None:
        self.tg = tg
        self.owner = owner  # the pool whose block opened it
        self._heap: list[tuple[float, int, Race]] = []
        self._seq = 0  # ties broken by arrival, never by comparing races
        self._stale = 0  # answered calls still in the heap
        self._target = math.inf  # the deadline the timer sleeps until
        self._wake: anyio.Event | None = None  # the timer's, made once it runs
        self.closed = False
        self.token: Any = None  # to reset HOST when the block ends

    def add(self, race: Race, deadline: float) -> None:
        """Hedge ``race`` at ``deadline`` unless it is settled by then."""
        heap = self._heap
        if self._stale > _COMPACT_AT and 2 * self._stale > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].settled]
            heapq.heapify(heap)
            self._stale = 0
        self._seq += 1
        heapq.heappush(heap, (deadline, self._seq, race))
        if deadline < self._target:
            self._target = deadline
            if self._wake is not None:
                self._wake.set()  # the timer sleeps past this deadline: wake it

    def settled(self, race: Race) -> None:
        """``race`` answered (or its caller left) with no copy sent: its entry is stale."""
        race.settled = True
        self._stale += 1

    async def serve(self) -> None:
        """Sleep to the soonest deadline; start a copy for each call still unanswered."""
        heap = self._heap
        while True:
            now = anyio.current_time()
            while heap and (heap[0][2].settled or heap[0][0] <= now):
                _, _, race = heapq.heappop(heap)
                if race.settled:
                    self._stale -= 1
                else:
                    race.hedged = True
                    race.copy_done = anyio.Event()
                    self.tg.start_soon(race.copy)
            self._target = heap[0][0] if heap else math.inf
            self._wake = wake = anyio.Event()
            with anyio.move_on_after(self._target - now):
                await wake.wait()
