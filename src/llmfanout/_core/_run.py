"""One run of the executor: its shared state (``_Run``), the stream its results come out of
(:class:`ResultStream`), and the small rules a run applies (``max_errors``, a refused key,
the ``on_result`` callback)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from .._base._checks import whole_number
from ..errors import TaskAborted
from ._inputs import (
    AsyncItems,
    InputFailure,
    Item,
)
from ._tasks import TaskResult

if TYPE_CHECKING:
    pass

logger = logging.getLogger("llmfanout")

OnResult = Callable[[TaskResult], Any]


class _Run:
    """The state of one call: where items come from, where results go, how many failed."""

    __slots__ = (
        "aborted",
        "emit",
        "failures",
        "guarded",
        "items",
        "max_errors",
        "notify",
        "put",
        "reason",
        "results",
        "scopes",
        "stop_on_auth",
        "threads",
    )

    def __init__(
        self,
        items: Iterator[Item] | AsyncItems,
        put: Callable[[TaskResult], bool],
        emit: Callable[[TaskResult], Awaitable[None]],
        max_errors: int | None,
        on_result: OnResult | None,
        stop_on_auth: bool = False,
    ) -> None:
        self.items = items
        # Where results go: ``put`` hands one on at once if it can (True), else the
        # worker awaits ``emit``, which waits for room.
        self.put = put
        self.emit = emit
        self.results: dict[str, Any] | None = None  # execute's: results stored right here
        self.max_errors = max_errors
        self.guarded = max_errors is not None
        self.stop_on_auth = stop_on_auth
        self.notify = _callback(on_result)
        self.failures = 0
        self.aborted = False
        self.reason = ""  # why the run stopped early, for the results it cuts off
        # With max_errors: per worker, the scope of the task it runs (None between tasks).
        self.scopes: list[anyio.CancelScope | None] = []
        self.threads: anyio.CapacityLimiter  # for sync functions, this loop's

    def count_failure(self, result: TaskResult) -> None:
        """Count a failed task; at max_errors, or at an auth error, stop the run."""
        self.failures += 1
        if self.aborted:
            return
        if self.stop_on_auth and _refused_key(result.error):
            status = getattr(result.error, "status_code", None)
            self.stop(
                f"the run stopped at task {result.tag!r}: the server refused the credentials "
                f"(HTTP {status}); check the API key and what it may access, then run again"
            )
        elif self.max_errors is not None and self.failures >= self.max_errors:
            logger.info("max_errors=%d reached: stopping the run", self.max_errors)
            self.stop(f"the run stopped after {self.max_errors} failed tasks")

    def stop(self, reason: str) -> None:
        """Start nothing new; cut off the tasks in flight (those under max_errors)."""
        self.aborted = True
        self.reason = reason
        for scope in self.scopes:
            if scope is not None:
                scope.cancel()


def _refused_key(error: Exception | None) -> bool:
    """401 or 403: every other call with the same key will be refused too."""
    return getattr(error, "status_code", None) in (401, 403)


def _callback(fn: OnResult | None) -> Callable[[TaskResult], Awaitable[None]] | None:
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"on_result must be callable, not {type(fn).__name__}")
    raised = False

    async def call(result: TaskResult) -> None:
        # After one call raised, the run is ending: say nothing more, so workers that
        # finish in the same instant do not add their own copies of the error.
        nonlocal raised
        if raised:
            return
        try:
            outcome = fn(result)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            raised = True
            raise

    return call


def _check_max_errors(value: object) -> int | None:
    if value is None:
        return None
    return whole_number(value, "max_errors", hint=", or None for no limit")


def _aborted(
    tag: str, reason: str, start: float | None = None, late: TaskResult | None = None
) -> TaskResult:
    """Not started (``start`` None), cut off in flight, or failed too ``late`` (after the
    run had stopped, in the same instant): the run stopped early, for ``reason``."""
    if start is None:
        what = "never started"
    elif late is None:
        what = "was cancelled in flight"
    else:
        what = "failed after the run had stopped (its error is the __cause__)"
    ms = 0.0 if start is None else (perf_counter() - start) * 1000
    error = TaskAborted(f"task {tag!r} {what}: {reason}")
    if late is None:
        return TaskResult(tag, False, None, error, ms, 0)
    error.__cause__ = late.error
    return TaskResult(tag, False, None, error, ms, late.attempts)


class ResultStream:
    """The results of a :meth:`ParallelLLMExecutor.stream` run, in completion order.

    An async iterator. A result already finished is handed out without waiting; the loop
    waits (and yields to the event loop) only when none is ready. If the input raised
    while it was read, the iteration raises that exception after the last result of the
    tasks taken before it.
    """

    __slots__ = ("_failure", "_receive")

    def __init__(
        self, receive: MemoryObjectReceiveStream[TaskResult], failure: InputFailure
    ) -> None:
        self._receive = receive
        self._failure = failure

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> TaskResult:
        try:
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            self._end()
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._end()

    def _end(self) -> NoReturn:
        error, self._failure.error = self._failure.error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    def ready(self) -> list[TaskResult]:
        """The results that have finished but were not taken yet, without waiting.

        Useful when the run is being cancelled: whatever finished can still be saved.
        """
        taken: list[TaskResult] = []
        while True:
            try:
                taken.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return taken
