"""Running the executor's async calls from synchronous code: scripts, notebooks, REPLs.

In a plain script the work runs in a new event loop on this thread (``anyio.run``). Where
a loop is already running on this thread (Jupyter, IPython's autoawait, a sync function
called from async code), no second loop can start here and blocking the running one
from inside is impossible, so the work runs on a fresh thread with its own loop while
this thread waits. Either way the loop is ours: what the run opened in it (our HTTP
providers' connection pools) is closed before it ends, and an interrupt (Ctrl-C, the
notebook's stop button) cancels the work and waits for it to stop.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._base._checks import need_backend
from .._base._types import LoopBound

T = TypeVar("T")

BACKENDS = ("asyncio", "trio")


def check_backend(backend: object, owner: str) -> str:
    """``backend`` if anyio can run it; ``ValueError`` naming the choices otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend is {backend!r}; use 'asyncio' or 'trio'")
    need_backend(str(backend), owner)
    return str(backend)


def loop_running() -> bool:
    """Whether an event loop (asyncio or trio) runs on this thread now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")  # not imported: then no trio loop can be running
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def run_sync(
    work: Callable[[], Awaitable[T]],
    *,
    backend: str,
    owner: str,
    close: Any = None,
) -> T:
    """Run ``work()`` to its end in a loop of our own and return what it returns.

    ``close``: an object whose per-loop resources must be released before our loop ends
    (an HTTP provider's connection pool). Raises what ``work`` raises.
    """
    check_backend(backend, owner)

    async def main() -> T:
        try:
            return await work()
        finally:
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await _release(close)

    if not loop_running():
        return anyio.run(main, backend=backend)
    return _on_a_thread(main, backend, owner)


def _on_a_thread(main: Callable[[], Awaitable[T]], backend: str, owner: str) -> T:
    """Run ``main`` in a new loop on a new thread; this thread waits, interruptibly.

    An exception while waiting (KeyboardInterrupt) cancels the work through a socket
    the loop watches (a byte written to it is the one wake-up that every backend can
    wait for without a blocking call into that loop, which trio refuses from a thread
    running trio itself), then waits for the thread to end and re-raises.
    """
    wake, stop = socket.socketpair()
    outcome: list[Any] = []

    async def cancellable() -> T:
        outcome: list[Any] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_readable, wake, tg.cancel_scope)
            try:
                outcome.append((True, await main()))
            except (
                BaseException
            ) as exc:  # re-raised below, outside the group (noqa: cancellation-ok)
                outcome.append((False, exc))
            tg.cancel_scope.cancel()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    finished = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, anyio.run(cancellable, backend=backend)))
        except BaseException as exc:  # handed to the waiting thread (noqa: cancellation-ok)
            outcome.append((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=target, name=f"llmfanout-{owner}", daemon=True)
    try:
        # An Event, not join(): an interrupted join() marks a live thread as ended
        # (CPython 3.11), after which a second join() would not wait. start() is inside
        # the try: an interrupt can land while it waits for the new thread to begin.
        try:
            thread.start()
            finished.wait()
        except BaseException:  # an interrupt: stop the work, then re-raise (noqa: cancellation-ok)
            stop.send(b"x")
            if thread.ident is not None or thread.is_alive():
                finished.wait()
            raise
        finally:
            if thread.ident is not None:
                thread.join()
    finally:
        wake.close()
        stop.close()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


async def _cancel_when_readable(wake: socket.socket, scope: anyio.CancelScope) -> None:
    await anyio.wait_readable(wake)
    scope.cancel()


async def _release(provider: object) -> None:
    if isinstance(provider, LoopBound):
        await provider.release_loop()
