"""One run of the executor: its shared state (``_Run``), the stream its results come out of
(:class:`ResultStream`), and the small rules a run applies (``max_errors``, a refused key,
the ``on_result`` callback)."""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from typing import Any, NoReturn

import anyio
import anyio.lowlevel

from .._base._checks import whole_number
from .._flow._governor import refused_credential
from ..errors import TaskAborted
from ._inputs import (
    AsyncItems,
    InputFailure,
    Item,
    Tagger,
)
from ._tasks import TaskResult

logger = logging.getLogger("llmfanout")

OnResult = Callable[[TaskResult], Any]


class _Run:
    """The state of one call: where items come from, where results go, how many failed."""

    __slots__ = (
        "aborted",
        "buffer",
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
        items: Iterator[Item] | AsyncItems | Tagger,
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
        self.buffer: Results | None = None  # stream's: the worker puts results in itself
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
            credential = refused_credential(result.error)
            self.stop(
                f"the run stopped at task {result.tag!r}: the server refused the credentials "
                f"(HTTP {status}); check {credential} and what it may access, then run again"
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


class Results:
    """Where a stream's finished results wait for its consumer: a buffer of ``size``.

    Workers append (:meth:`put`); one that finds the buffer full leaves its result at
    the end all the same and waits (:meth:`room`) until the consumer has taken enough for
    it to be within ``size``, so the run holds at most ``size`` results plus one per
    waiting worker, as a bounded channel does. The consumer takes from the front with no
    wait while any is there and sleeps only on an empty buffer: one wake-up per batch of
    results, not per result.
    """

    __slots__ = ("buffer", "closed", "left", "senders", "size", "wake")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer: deque[TaskResult] = deque()
        self.closed = False  # every worker has ended: no more results
        self.left = False  # the consumer has left the block: the run is being cancelled
        self.wake: anyio.Event | None = None  # set for a consumer asleep on an empty buffer
        # The workers waiting for room, in the order of their results beyond ``size``.
        self.senders: deque[anyio.Event] = deque()

    def put(self, result: TaskResult) -> bool:
        """Hand ``result`` on without waiting: False if the worker must await :meth:`room`."""
        if self.left:
            return False  # see room
        buffer = self.buffer
        buffer.append(result)
        if self.wake is not None:
            self.wake_up()
        return len(buffer) <= self.size

    def wake_up(self) -> None:
        """Wake the consumer asleep on an empty buffer."""
        wake = self.wake
        if wake is not None:
            self.wake = None
            wake.set()

    async def room(self, result: TaskResult) -> None:
        """Wait until the result :meth:`put` refused is within the buffer's size."""
        if self.left:
            # The consumer has left; this worker's call ended before the cancellation
            # reached it. Stop here rather than read more input.
            await anyio.lowlevel.checkpoint()  # raises the cancellation
            return
        sent = anyio.Event()
        self.senders.append(sent)
        try:
            await sent.wait()
        finally:
            if not sent.is_set():
                self.senders.remove(sent)

    def take(self) -> TaskResult:
        """The oldest result (the buffer is not empty); lets one waiting worker on."""
        buffer = self.buffer
        result = buffer.popleft()
        if self.senders and len(buffer) >= self.size:
            self.senders.popleft().set()
        return result

    def close(self) -> None:
        """Every worker has ended."""
        self.closed = True
        self.wake_up()


class ResultStream:
    """The results of a :meth:`ParallelLLMExecutor.stream` run, in completion order.

    An async iterator. A result already finished is handed out without waiting; the loop
    waits (and yields to the event loop) only when none is ready. If the input raised
    while it was read, the iteration raises that exception after the last result of the
    tasks taken before it.
    """

    __slots__ = ("_failure", "_results")

    def __init__(self, results: Results, failure: InputFailure) -> None:
        self._results = results
        self._failure = failure

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> TaskResult:
        results = self._results
        buffer = results.buffer
        if buffer:  # Results.take, inline: this runs once per result
            result = buffer.popleft()
            if results.senders and len(buffer) >= results.size:
                results.senders.popleft().set()
            return result
        while not buffer:
            if results.closed:
                self._end()
            wake = results.wake = anyio.Event()
            await wake.wait()
        return results.take()

    def _end(self) -> NoReturn:
        error, self._failure.error = self._failure.error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    def ready(self) -> list[TaskResult]:
        """The results that have finished but were not taken yet, without waiting.

        Useful when the run is being cancelled: whatever finished can still be saved.
        """
        results = self._results
        taken = list(results.buffer)
        results.buffer.clear()
        while results.senders:  # their results are taken: room for them all
            results.senders.popleft().set()
        return taken
