"""Many lookups, one thread hop: a group commit for calls into a blocking store.

A store (SQLite, a sync Redis client) blocks, so it runs in a worker thread; one hop per
call would cost more than the lookup. Here a call joins the pending batch; the first
caller of a batch leads it: once no hop is in flight (it waits for its *turn* while one
is), it takes the batch to the thread and every caller of the batch reads its answer
from it. Calls arriving meanwhile fill the next batch, so a batch holds about as many
calls as were in flight. A leader that finds no hop in flight yields once before it
hops, and a leader whose answers are in yields once before it hands the turn on, so
that the calls made in the same turn of the event loop (the tasks a batch just woke)
make one batch rather than a batch of one followed by the rest.

A call costs an append and a wait on its batch's event: a batch, not a call, has the
events (one for its answers, one for its leader's turn). A caller cancelled while it
waits simply leaves (its item's answer goes unread). A leader cancelled before its
hop's answers came back leaves its batch without answers: the batch is woken empty and
each caller still waiting asks again, in a new batch, so no call is ever left waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._base._perloop import PerLoop
from .._base._types import LLMResponse
from ._codec import decode, encode

In = TypeVar("In")
Out = TypeVar("Out")


class _Batch(Generic[In, Out]):
    __slots__ = ("done", "error", "items", "results", "turn")

    def __init__(self, event: Callable[[], anyio.Event]) -> None:
        self.items: list[In] = []
        self.done = event()  # set when the answers are in, or when there will be none
        self.turn: anyio.Event | None = None  # its leader's, while another hop is in flight
        self.results: Sequence[Out] | None = None
        self.error: Exception | None = None


class _Group(Generic[In, Out]):
    __slots__ = ("busy", "event", "pending")

    def __init__(self) -> None:
        self.pending: _Batch[In, Out] | None = None  # the batch calls join
        self.busy = False  # a leader holds the turn: it hops, or is about to
        # This loop's backend's event class, found once (anyio.Event() looks it up per call).
        self.event: Callable[[], anyio.Event] = type(anyio.Event())


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
        while True:
            batch = group.pending
            if batch is None:
                batch = group.pending = _Batch(group.event)
            index = len(batch.items)
            batch.items.append(item)
            if index == 0:
                await self._lead(group, batch)
            else:
                await batch.done.wait()
            if batch.results is not None:
                return batch.results[index]
            if batch.error is not None:
                raise batch.error
            # Its leader was cancelled before the answers came: ask again.

    async def _lead(self, group: _Group[In, Out], batch: _Batch[In, Out]) -> None:
        answered = False
        try:
            if group.busy:  # a hop is in flight: its leader hands the turn on when done
                batch.turn = group.event()
                await batch.turn.wait()
            else:
                group.busy = True
                # Let the calls already due in this turn of the loop join the batch.
                await anyio.lowlevel.checkpoint()
            if group.pending is batch:
                group.pending = None  # later calls make the next batch
            try:
                # Not abandoned on cancellation: the hop ends before this call does.
                batch.results = await anyio.to_thread.run_sync(self._run, batch.items)
            except Exception as exc:
                batch.error = exc
            answered = True
            batch.done.set()
            # The turn passes once the callers just woken have made the next batch, or
            # the first of them would hop alone (trio runs woken tasks in any order).
            await anyio.lowlevel.checkpoint()
        finally:
            if not answered and group.pending is batch:
                group.pending = None  # cancelled: the waiting callers ask again
            if answered or batch.turn is None or batch.turn.is_set():
                _hand_on(group)  # it holds the turn (a leader cancelled before, does not)
            batch.done.set()


def _hand_on(group: _Group[In, Out]) -> None:
    """The turn, to the leader of the next batch, or back to the group if there is none."""
    following = group.pending
    if following is not None and following.turn is not None:
        following.turn.set()  # group.busy stays True: that leader holds the turn now
    else:
        group.busy = False


class BatchedStore:
    """The :class:`~llmfanout.cache.Cache` protocol over a store's two blocking batch
    calls, ``_read(keys)`` and ``_write([(key, data), ...])``, each run in a worker thread
    on every lookup (or write) waiting at the time (the SQLite and Redis caches)."""

    def __init__(self) -> None:
        self._reads: Batcher[str, bytes | None] = Batcher(self._read)
        self._writes: Batcher[tuple[str, bytes], None] = Batcher(self._write)

    def _read(self, keys: list[str]) -> list[bytes | None]:
        raise NotImplementedError

    def _write(self, entries: list[tuple[str, bytes]]) -> list[None]:
        raise NotImplementedError

    async def get(self, key: str) -> LLMResponse | None:
        """The answer stored under ``key`` (marked ``metadata["cached"]``), or None."""
        data = await self._reads(key)
        return None if data is None else decode(data)

    async def put(self, key: str, response: LLMResponse) -> None:
        """Store ``response`` under ``key`` (replacing any answer there; the store's ``ttl``
        sets its expiry)."""
        await self._writes((key, encode(response)))
