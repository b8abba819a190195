"""The executor's cap: ``max_concurrency`` slots, held across every event loop it serves.

An executor may be used from several threads at once, each running its own event loop
(a web server's worker threads, say); the cap belongs to the executor, so the slots are
counted under a thread lock and a slot freed in one loop wakes a waiter in another
through anyio's thread-safe ``run_sync_soon``. Waiters are served in arrival order.

A worker (or a sequential chain) holds its slot as a :class:`Lease` for its whole life,
found through a context variable: a call made from inside a task of the same executor
finds it, and since that task only waits for the call, it lends its slot to the call's
own workers meanwhile (see :func:`lend`). Nested calls then work at any depth and any
``max_concurrency``, and the cap always holds.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token

import anyio
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken, current_token


class _Waiter:
    __slots__ = ("event", "granted", "thread", "token")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.token: EventLoopToken = current_token()
        self.thread = threading.get_ident()
        self.granted = False


class Cap:
    """``total`` slots, shared by every event loop; thread-safe; first come, first served."""

    __slots__ = ("_lock", "free", "total", "waiters")

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._lock = threading.Lock()
        # In line for a slot. Read without the lock (a hint: "someone waits") on the hot path.
        self.waiters: deque[_Waiter] = deque()

    def take_nowait(self) -> bool:
        """Take a free slot if there is one and nobody waits ahead."""
        with self._lock:
            if self.free and not self.waiters:
                self.free -= 1
                return True
            return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one. Cancellation while waiting takes none."""
        if self.take_nowait():
            return
        waiter = _Waiter()
        with self._lock:
            if self.free and not self.waiters:
                self.free -= 1
                return
            self.waiters.append(waiter)
        taken = False
        try:
            await waiter.event.wait()
            taken = True
        finally:
            if not taken:  # cancelled: leave the line, or pass on a slot granted meanwhile
                with self._lock:
                    granted = waiter.granted
                    if not granted:
                        self.waiters.remove(waiter)
                if granted:
                    self.give()

    def give(self) -> None:
        """Free a slot: straight to the first waiter in line, whatever its event loop."""
        while True:
            with self._lock:
                if not self.waiters:
                    self.free += 1
                    return
                waiter = self.waiters.popleft()
                waiter.granted = True
            if waiter.thread == threading.get_ident():  # our own loop: no hop needed
                waiter.event.set()
                return
            try:
                waiter.token.backend_class.run_sync_soon(
                    waiter.event.set, (), waiter.token.native_token
                )
                return
            except anyio.RunFinishedError:
                continue  # its loop has ended: the next in line gets the slot


class Lease:
    """One slot, held by a worker or a sequential chain; ``lent`` while it waits on a call."""

    __slots__ = ("cap", "held", "lent")

    def __init__(self, cap: Cap) -> None:
        self.cap = cap
        self.held = False
        self.lent = 0  # calls in progress that this lease's task waits on


# The leases the current task holds, one per cap: a task of executor A that calls
# executor B, whose task calls A again, must still find its A lease. Never mutated:
# replaced by a copy (see ``holding``).
_LEASES: ContextVar[dict[Cap, Lease]] = ContextVar("llmfanout_leases", default={})  # noqa: B039


def holding(lease: Lease) -> Token[dict[Cap, Lease]]:
    """Record in the current context that this task holds ``lease``."""
    return _LEASES.set({**_LEASES.get(), lease.cap: lease})


def release_context(token: Token[dict[Cap, Lease]]) -> None:
    """Undo :func:`holding` (for a lease held in a caller's own task)."""
    _LEASES.reset(token)


async def take(lease: Lease) -> None:
    """Take a slot for ``lease``."""
    await lease.cap.take()
    lease.held = True


def give_back(lease: Lease) -> None:
    """Give ``lease``'s slot back, if it holds one."""
    if lease.held:
        lease.held = False
        lease.cap.give()


@asynccontextmanager
async def lend(cap: Cap) -> AsyncIterator[None]:
    """Around a call: if the task making it holds a slot of ``cap``, lend it meanwhile."""
    lease = _LEASES.get().get(cap)
    if lease is None:
        yield
        return
    lease.lent += 1
    if lease.lent == 1:
        give_back(lease)
    try:
        yield
    finally:
        lease.lent -= 1
        if not lease.lent:
            # Cancelled while waiting: ``held`` stays False and the worker takes a slot
            # again before its next task.
            await take(lease)
