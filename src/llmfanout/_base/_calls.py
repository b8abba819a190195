"""Calling user code: await what is async, send what is sync to a worker thread."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread


def callable_is_async(fn: Callable[..., Any]) -> bool:
    """True for coroutine functions, objects whose ``__call__`` is one, and partials of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004  (we want the method, not callable())
    return call is not None and not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


async def call_maybe_async(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    is_async: bool,
    *,
    limiter: anyio.CapacityLimiter | None = None,
    abandon_on_cancel: bool = False,
) -> Any:
    """Await ``fn(*args, **kwargs)`` if it is async, else run it in a worker thread.

    A thread cannot be interrupted: on cancellation we wait for it to finish, unless
    ``abandon_on_cancel`` (used for timeouts), which lets the caller go on while the
    thread runs to its end in the background.
    """
    if is_async:
        return await fn(*args, **kwargs)
    value = await anyio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs) if (args or kwargs) else fn,
        limiter=limiter,
        abandon_on_cancel=abandon_on_cancel,
    )
    if inspect.isawaitable(value):  # a sync factory that hands back a coroutine
        value = await value
    return value
