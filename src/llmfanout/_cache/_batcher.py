"""Many lookups, one thread hop: a group commit for calls into a blocking store.

A store (SQLite, a sync Redis client) blocks, so it runs in a worker thread; one hop per
call would cost more than the lookup. Here a call joins the pending group; the first
caller finds no hop in flight and leads: it takes everything pending to the thread in
one batch and hands each caller its answer. Calls arriving meanwhile pile up for the
next batch, led by the first of them, so a batch holds about as many calls as were in
flight. A waiter cancelled meanwhile is dropped from its batch (or its answer is); a
leader cancelled before its hop puts the batch back and passes the lead on, so no call
is ever left waiting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

from .._base._perloop import PerLoop

In = TypeVar("In")
Out = TypeVar("Out")


class _Slot(Generic[In, Out]):
    __slots__ = ("cancelled", "done", "error", "item", "lead", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.done = anyio.Event()
        self.lead = False
        self.cancelled = False
        self.result: Out | None = None
        self.error: Exception | None = None

    def value(self) -> Out:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _Group(Generic[In, Out]):
    __slots__ = ("busy", "pending")

    def __init__(self) -> None:
        self.pending: deque[_Slot[In, Out]] = deque()
        self.busy = False


class Batcher(Generic[In, Out]):
    """``await batcher(item)``: ``run([item, ...])[i]``, with ``run`` called in a thread
    on as many items at once as are waiting. ``run`` returns one result per item, in
    order; an exception it raises is raised to every caller of that batch."""

    __slots__ = ("_groups", "_run")

    def __init__(self, run: Callable[[list[In]], Sequence[Out]]) -> None:
        self._run = run
        self._groups = PerLoop[_Group[In, Out]]()

    def _group(self) -> _Group[In, Out]:
        group = self._groups.get(None)
        if group is None:
            group = _Group()
            self._groups.set(group)
        return group

    async def __call__(self, item: In) -> Out:
        group = self._group()
        slot: _Slot[In, Out] = _Slot(item)
        group.pending.append(slot)
        if group.busy:
            try:
                await slot.done.wait()
            except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
                slot.cancelled = True
                if slot.lead:  # handed the lead in the instant it was cancelled
                    _pass_lead(group)
                raise
            if not slot.lead:
                return slot.value()
        else:
            group.busy = True
        await self._lead(group, slot)
        return slot.value()

    async def _lead(self, group: _Group[In, Out], own: _Slot[In, Out]) -> None:
        batch = [s for s in group.pending if not s.cancelled]
        group.pending.clear()
        delivered = False
        try:
            try:
                # Not abandoned on cancellation: the hop ends before this call does.
                results = await anyio.to_thread.run_sync(self._run, [s.item for s in batch])
            except Exception as exc:
                for s in batch:
                    s.error = exc
            else:
                for s, result in zip(batch, results, strict=True):
                    s.result = result
            delivered = True
            for s in batch:
                s.done.set()
        finally:
            if not delivered:  # cancelled before the answers came: the next leader asks
                group.pending.extendleft(reversed([s for s in batch if s is not own]))
            _pass_lead(group)


def _pass_lead(group: _Group[In, Out]) -> None:
    pending = group.pending
    while pending:
        slot = pending[0]
        if slot.cancelled:
            pending.popleft()
            continue
        slot.lead = True
        slot.done.set()
        return
    group.busy = False
