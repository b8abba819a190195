"""The scheduler: a bounded pool of workers pulling tasks from the input.

One worker task per concurrency slot, not one task per input: at 100k inputs that is the
difference between flat and growing cost per task. Each worker holds one slot of the
executor's cap (``_cap.py``) for its life, so concurrent calls on one executor share
``max_concurrency``, in one event loop or several; a worker hands its slot on after an
item whenever another worker is queued for one, so no call starves.

The module is long (under 800 lines) because ``ParallelLLMExecutor`` is one piece: its
entry points (``execute``, ``execute_mixed``, ``execute_sequential``, ``stream``) share one
worker loop and its per-task fast path, which stays in one place so the hot path reads
on one screen; a run's state and its result stream are in ``_run``.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from .._base._checks import unwrap_group, whole_number
from .._base._perloop import PerLoop
from .._base._prices import Price, check_prices, price_for
from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse, a_kind
from .._cache._front import Cache, CacheFront, check_cache, mark
from .._flow._governor import Governor
from .._flow._limiter import Limiter, check_limiter
from .._flow._spend import CappedProvider, SpendCap
from ._attempt import NO_RETRY, run_function, run_llm, shared_cooldown
from ._cap import Cap, Lease, give_back, holding, lend, release_context, take
from ._checked import run_checked
from ._inputs import (
    AsyncItems,
    InputFailure,
    Invalid,
    Tagger,
    TaskSource,
    check_mapping,
    prepare,
)
from ._outcome import Failed, Ok
from ._retry import RetryConfig
from ._run import (
    OnResult,
    Results,
    ResultStream,
    _aborted,
    _check_max_errors,
    _Run,
)
from ._sync import run_sync
from ._tasks import DeterministicTask, LLMTask, Task, TaskResult, answered, check_timeout

if TYPE_CHECKING:
    from .._telemetry._hook import Telemetry

logger = logging.getLogger("llmfanout")


class ParallelLLMExecutor:
    """Runs LLM tasks and plain functions concurrently, never more than ``max_concurrency``.

    Each task's ``Exception`` is caught into its own :class:`TaskResult`: one failure never
    disturbs another task. Cancellation (a cancelled scope, ``anyio.move_on_after``,
    Ctrl-C) is never caught: it stops every attempt and retry wait, and propagates out of
    the call with nothing left running. Works on asyncio and trio alike.

    ``default_retry`` applies to LLM tasks without their own ``retry``;
    ``default_config_overrides`` are merged under each task's; ``default_timeout`` bounds
    every attempt (seconds) of tasks without their own ``timeout``; ``rate_limit`` (a
    :class:`RateLimit`, shareable between executors, or any :class:`Limiter`) paces LLM
    calls.

    By default the executor also paces itself by the rate limits its provider's answers
    advertise (``pacing``; the stricter of those and ``rate_limit`` applies), keeps fewer
    calls in flight while the server answers overload with no limits advertised
    (``adaptive``; see :attr:`concurrency`), and stops a run at the first answer refusing
    the credentials, HTTP 401 or 403 (``stop_on_auth_error``: the tasks not yet started
    get :class:`~llmfanout.errors.TaskAborted`). Neither pacing nor adaptation costs
    anything until the server reports limits or overload.

    ``cache`` (:class:`~llmfanout.cache.SQLiteCache`, :class:`~llmfanout.cache.RedisCache`
    or any :class:`~llmfanout.cache.Cache`) answers a call made before from the cache
    (``response.metadata["cached"] is True``, no attempt made, nothing sent), sends
    identical calls in flight at once only once, and stores every successful answer;
    ``LLMTask(cache=False)`` opts a task out. See docs/cache.md.

    ``telemetry=True`` records an OpenTelemetry span per task and per attempt, in the
    GenAI semantic conventions, and the GenAI client metrics, through the global tracer
    and meter providers (``pip install 'llmfanout[otel]'``; raises ``ImportError`` naming
    it when missing). Each task span is a child of the span current where the run was
    called. ``capture_content=True`` also records the messages and answers (off by
    default: they may hold personal data); no API key is ever recorded. Off, nothing of
    OpenTelemetry is imported. See docs/telemetry.md.

    ``prices`` (model -> :class:`~llmfanout.Price` or its mapping) prices tasks'
    ``cost_budget``; ``max_cost_usd`` (needs ``prices``) caps what this executor spends:
    no call starts once the cost spent plus the cost in flight (each call's prompt and
    ``max_tokens`` at the table's price) would pass it, and the tasks not sent get
    :class:`~llmfanout.errors.TaskAborted` (see :attr:`spent_usd`).
    """

    def __init__(
        self,
        provider: AsyncLLMProvider,
        max_concurrency: int = 5,
        default_retry: RetryConfig | None = None,
        default_config_overrides: Mapping[str, Any] | None = None,
        *,
        default_timeout: float | None = None,
        rate_limit: Limiter | None = None,
        pacing: bool = True,
        adaptive: bool = True,
        stop_on_auth_error: bool = True,
        cache: Cache | None = None,
        telemetry: bool = False,
        capture_content: bool = False,
        prices: Mapping[str, Price | Mapping[str, float]] | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        if not callable(getattr(provider, "complete", None)):
            raise TypeError(
                f"provider is {a_kind(provider)} with no complete() method; give an "
                "object with `async def complete(messages, config_overrides=None)`"
            )
        whole_number(max_concurrency, "max_concurrency")
        if default_retry is not None and not isinstance(default_retry, RetryConfig):
            raise TypeError(
                f"default_retry must be a RetryConfig, not {type(default_retry).__name__}"
            )
        if default_config_overrides is not None and not isinstance(
            default_config_overrides, Mapping
        ):
            raise TypeError("default_config_overrides must be a mapping or None")
        check_timeout("ParallelLLMExecutor", default_timeout)
        rate_limit = check_limiter(rate_limit, "ParallelLLMExecutor")
        self.provider = provider
        self.max_concurrency = max_concurrency
        self.default_retry = default_retry
        self.default_config_overrides = (
            dict(default_config_overrides) if default_config_overrides else None
        )
        self.default_timeout = default_timeout
        self.rate_limit = rate_limit
        for name, flag in (
            ("pacing", pacing),
            ("adaptive", adaptive),
            ("stop_on_auth_error", stop_on_auth_error),
            ("telemetry", telemetry),
            ("capture_content", capture_content),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"ParallelLLMExecutor: {name} is {flag!r}; give True or False")
        self.stop_on_auth_error = stop_on_auth_error
        self.prices = None if prices is None else check_prices(prices, "ParallelLLMExecutor")
        self._spend: SpendCap | None = None
        # What calls go to: the provider, traced with telemetry, under the spend cap.
        self._llm: AsyncLLMProvider = provider
        if max_cost_usd is not None:
            if not self.prices:
                raise ValueError(
                    "ParallelLLMExecutor: max_cost_usd needs prices= (a price table) to "
                    "count what calls cost"
                )
            self._spend = SpendCap(max_cost_usd, self.prices)
            self._llm = CappedProvider(provider, self._spend)
        self._governor = (
            Governor(
                provider,
                max_concurrency,
                pacing=pacing,
                adaptive=adaptive,
                stop_on_auth=stop_on_auth_error,
            )
            # A provider that paces itself (llmfanout.Pool: each deployment its own) is
            # left to do so: one figure for all its deployments would be wrong for each.
            if (pacing or adaptive) and not getattr(provider, "paces_itself", False)
            else None
        )
        # The cap holds across every event loop (thread) this executor serves.
        self._cap = Cap(max_concurrency)
        # anyio's limiters belong to one event loop: one per loop this executor runs in.
        self._threads_per_loop = PerLoop[anyio.CapacityLimiter]()
        cache = check_cache(cache, "ParallelLLMExecutor")
        self._cache = None if cache is None else CacheFront(cache, provider)
        self._telemetry: Telemetry | None = None
        if telemetry:
            self._instrument(capture_content)
        elif capture_content:
            raise ValueError("ParallelLLMExecutor: capture_content=True needs telemetry=True")
        # The worker may make a plain call itself, sparing _run_task's coroutine: not
        # with the cache (asked first) nor telemetry (which wraps _run_task).
        self._direct = self._cache is None and self._telemetry is None

    def _instrument(self, capture_content: bool) -> None:
        """Telemetry on: a span per task and per attempt, the metrics (``_telemetry``).

        Nothing of it is on the per-task path when off: the hook replaces ``_run_task``
        on this instance and the provider the attempts call.
        """
        from .._telemetry._hook import Telemetry  # OpenTelemetry is imported only here

        hook = Telemetry(
            self.provider, capture_content=capture_content, concurrency=lambda: self.concurrency
        )
        self._telemetry = hook
        traced = hook.provider(self.provider)
        # The cap outermost: a call it refuses was never sent, so it is no attempt span.
        self._llm = traced if self._spend is None else CappedProvider(traced, self._spend)
        self._run_task = hook.tasks(  # type: ignore[method-assign]
            self._run_task, runs_code=(DeterministicTask,)
        )

    def _threads(self) -> anyio.CapacityLimiter:
        threads = self._threads_per_loop.get(None)
        if threads is None:
            # The workers bound the live threads (each waits for its own), not anyio's
            # default of 40. A thread abandoned on timeout runs on to its end; on trio it
            # keeps its limiter token till then, and with a bounded limiter a later task
            # would time out waiting for a slot it was never given: this one never runs out.
            threads = anyio.CapacityLimiter(math.inf)
            self._threads_per_loop.set(threads)
        return threads

    @property
    def concurrency(self) -> int:
        """How many calls the executor keeps in flight now: ``max_concurrency``, or fewer
        while the server answers overload (see ``adaptive``)."""
        governor = self._governor
        return self.max_concurrency if governor is None else governor.current

    @property
    def spent_usd(self) -> float | None:
        """USD spent under ``max_cost_usd`` so far (None without a cap)."""
        return None if self._spend is None else self._spend.spent

    @property
    def cost_cap_reached(self) -> bool:
        """Whether ``max_cost_usd`` refused a call: nothing more will be sent."""
        return self._spend is not None and self._spend.reached

    def _cost(self, model: str, usage: Mapping[str, int] | None) -> float | None:
        price = price_for(model, self.prices) if self.prices else None
        return None if price is None or not usage else price.cost(usage)

    def __repr__(self) -> str:
        return (
            f"ParallelLLMExecutor({type(self.provider).__name__}, "
            f"max_concurrency={self.max_concurrency})"
        )

    # -- public calls ------------------------------------------------------------------

    async def execute(
        self,
        tasks: Mapping[str, LLMTask],
        *,
        max_errors: int | None = None,
        on_result: OnResult | None = None,
    ) -> dict[str, TaskResult]:
        """Run LLM tasks concurrently; return ``{tag: TaskResult}`` in the input's order.

        Raises ``TypeError`` before any work if an item is not an ``LLMTask`` (use
        :meth:`execute_mixed` for functions). See :meth:`stream` for ``max_errors`` and
        ``on_result``.
        """
        return await self._execute_mapping(tasks, "execute", True, max_errors, on_result)

    async def execute_mixed(
        self,
        tasks: Mapping[str, LLMTask | DeterministicTask],
        *,
        max_errors: int | None = None,
        on_result: OnResult | None = None,
    ) -> dict[str, TaskResult]:
        """Like :meth:`execute`, with ``DeterministicTask`` functions beside LLM tasks.

        Both kinds share the same ``max_concurrency`` slots.
        """
        return await self._execute_mapping(tasks, "execute_mixed", False, max_errors, on_result)

    async def execute_sequential(
        self, tasks: Sequence[LLMTask], pass_result: bool = False
    ) -> list[TaskResult]:
        """Run LLM tasks one after another; return their results in order.

        A task with no tag gets ``step_<index>``. With ``pass_result``, a task that follows
        a successful one is sent its own messages plus the previous response's content as
        an ``assistant`` message; a failed step does not stop the chain.
        """
        if isinstance(tasks, Mapping) or not isinstance(tasks, Sequence):
            raise TypeError(
                f"execute_sequential() takes a sequence of LLMTask, not {type(tasks).__name__}"
            )
        for index, task in enumerate(tasks):
            if not isinstance(task, LLMTask):
                tag = getattr(task, "tag", "") or f"step_{index}"
                raise TypeError(
                    f"execute_sequential: task {tag!r} is {a_kind(task)}; give an LLMTask"
                )
        results: list[TaskResult] = []
        previous: TaskResult | None = None
        async with lend(self._cap):
            lease = Lease(self._cap)
            token = holding(lease)
            try:
                await take(lease)
                for index, task in enumerate(tasks):
                    if pass_result and previous is not None and previous.success:
                        reply = LLMMessage("assistant", _content(previous.value))
                        task = attrs.evolve(task, messages=(*task.messages, reply))
                    previous = await self._run_task(task.tag or f"step_{index}", task)
                    results.append(previous)
            finally:
                give_back(lease)
                release_context(token)
        return results

    @asynccontextmanager
    async def stream(
        self,
        tasks: TaskSource,
        *,
        max_errors: int | None = None,
        on_result: OnResult | None = None,
    ) -> AsyncIterator[ResultStream]:
        """Run tasks and hand out each :class:`TaskResult` as it completes.

        ``async with executor.stream(tasks) as results: async for r in results: ...``

        ``tasks`` is a mapping of tag to task, an iterable or an async iterable of tasks
        (LLM and deterministic mixed). Input is read lazily as workers free up, so memory
        stays proportional to ``max_concurrency``. A task from an iterable with no tag is
        tagged with its position (``"0"``, ``"1"``...); a repeated tag gives a failed result
        with a ``ValueError`` and the run goes on.

        ``max_errors``: once that many tasks have failed (after retries), nothing new starts,
        in-flight tasks are cancelled, and each unfinished task gets a failed result holding
        :class:`~llmfanout.errors.TaskAborted`: every task still gets exactly one result.
        ``on_result(result)`` (sync or async) is called once per result as it completes;
        an exception it raises ends the run and propagates.

        Leaving the block early (``break``, an exception, cancellation) cancels the work
        in flight promptly and leaves nothing running.
        """
        max_errors = _check_max_errors(max_errors)
        failure = InputFailure()
        items, count = prepare(tasks, failure)
        # Room for two rounds of every worker finishing: the consumer may run last in
        # the event loop's round after the one that woke it (trio shuffles a round), and
        # a worker that finds the buffer full pays a wait of its own.
        results = Results(2 * self.max_concurrency)
        run = _Run(items, results.put, results.room, max_errors, on_result, self.stop_on_auth_error)
        run.buffer = results

        async def drive() -> None:
            try:
                await self._drive(run, count)
            finally:
                results.close()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drive)
                try:
                    yield ResultStream(results, failure)
                finally:
                    results.left = True
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # re-raised, unwrapped (noqa: cancellation-ok)
            raise unwrap_group(group) from None
        finally:
            if isinstance(items, AsyncItems):
                with anyio.CancelScope(shield=True):
                    await items.aclose()

    # -- synchronous entry points (the machinery is in _sync.py) -------------------------

    def execute_sync(
        self,
        tasks: Mapping[str, LLMTask],
        *,
        max_errors: int | None = None,
        on_result: OnResult | None = None,
        backend: str = "asyncio",
    ) -> dict[str, TaskResult]:
        """:meth:`execute` from synchronous code: a script, or a notebook cell.

        Runs a fresh event loop of ``backend`` ("asyncio" or "trio"): on this thread, or,
        where a loop already runs here (Jupyter), on a new thread while this one waits.
        Our HTTP providers' connections for that loop are closed before it ends. Ctrl-C
        cancels the run and raises ``KeyboardInterrupt`` once nothing is left running.
        """
        return run_sync(
            functools.partial(self.execute, tasks, max_errors=max_errors, on_result=on_result),
            backend=backend,
            owner="execute_sync",
            close=self.provider,
        )

    def execute_mixed_sync(
        self,
        tasks: Mapping[str, LLMTask | DeterministicTask],
        *,
        max_errors: int | None = None,
        on_result: OnResult | None = None,
        backend: str = "asyncio",
    ) -> dict[str, TaskResult]:
        """:meth:`execute_mixed` from synchronous code (see :meth:`execute_sync`)."""
        return run_sync(
            functools.partial(
                self.execute_mixed, tasks, max_errors=max_errors, on_result=on_result
            ),
            backend=backend,
            owner="execute_mixed_sync",
            close=self.provider,
        )

    def execute_sequential_sync(
        self, tasks: Sequence[LLMTask], pass_result: bool = False, *, backend: str = "asyncio"
    ) -> list[TaskResult]:
        """:meth:`execute_sequential` from synchronous code (see :meth:`execute_sync`)."""
        return run_sync(
            functools.partial(self.execute_sequential, tasks, pass_result),
            backend=backend,
            owner="execute_sequential_sync",
            close=self.provider,
        )

    # -- the engine ----------------------------------------------------------------------

    async def _execute_mapping(
        self,
        tasks: Mapping[str, Task],
        method: str,
        llm_only: bool,
        max_errors: int | None,
        on_result: OnResult | None,
    ) -> dict[str, TaskResult]:
        max_errors = _check_max_errors(max_errors)
        # The run's copy of the input, in its order, becomes the results: each worker
        # puts a task's result in place of the task, which it has read already (the
        # values change under the iterator, the keys never do).
        results: dict[str, Any] = check_mapping(tasks, method, llm_only=llm_only)
        items = iter(results.items())
        run = _Run(items, _never, _never, max_errors, on_result, self.stop_on_auth_error)
        run.results = results
        await self._drive(run, len(results))
        return results

    async def _drive(self, run: _Run, count: int | None) -> None:
        workers = self.max_concurrency if count is None else min(self.max_concurrency, count)
        if workers == 0:
            return
        logger.debug("run starting: %s tasks, %d workers", count or "streamed", workers)
        run.scopes = [None] * workers
        run.threads = self._threads()
        try:
            async with lend(self._cap), anyio.create_task_group() as tg:
                for index in range(workers):
                    tg.start_soon(self._worker, run, index)
        except BaseExceptionGroup as group:  # re-raised, unwrapped (noqa: cancellation-ok)
            raise unwrap_group(group) from None

    async def _worker(self, run: _Run, index: int) -> None:
        """The per-task path: take an item, run it, hand the result on, maybe give the
        slot away; until the input ends."""
        lease = Lease(self._cap)
        holding(lease)  # this task's own context: nested calls find it
        # An async source is read under its lock; a plain iterator needs none.
        source = run.items if isinstance(run.items, AsyncItems) else None
        items = run.items if isinstance(run.items, Iterator) else iter(())
        tagger = run.items if type(run.items) is Tagger else None
        tasks: Iterator[Any] = iter(()) if tagger is None else tagger.tasks
        given: set[str] = set() if tagger is None else tagger.given
        results = run.results
        buffer = run.buffer  # stream()'s
        queue: deque[TaskResult] = deque() if buffer is None else buffer.buffer
        size = 0 if buffer is None else buffer.size
        # Nothing the executor wraps around a call (cache, telemetry, rate limit, time
        # limit, answer check): the worker makes a plain first attempt itself, as
        # _run_task's fast path does, sparing a coroutine per task.
        direct = self._direct and self.rate_limit is None and self.default_timeout is None
        if direct and self.default_retry is not None:
            direct = self.default_retry.retry_on_result is None
        governor, target, defaults = self._governor, self._llm, self.default_config_overrides
        spend, cap, notify, stop_on_auth = self._spend, lease.cap, run.notify, run.stop_on_auth
        try:
            await take(lease)
            while True:
                if tagger is not None:  # stream() of an iterable: tagged here
                    if tagger.ended:
                        return
                    try:
                        read: Any = next(tasks, tagger)
                    except Exception as exc:  # the user's iterator broke: end the input
                        tagger.end(exc)
                        return
                    kind = type(read)
                    fresh = False  # Tagger.__call__'s common case, done here: a new tag
                    if (
                        (kind is LLMTask or kind is DeterministicTask)
                        and (tag := read.tag)
                        and not (tagger.starts and tag.isdigit())
                    ):
                        known = len(given)
                        given.add(tag)  # added and found new in one probe of the set
                        fresh = len(given) > known
                    if fresh:
                        tagger.position += 1
                        task = read
                    elif read is tagger:
                        tagger.end()
                        return
                    else:  # a repeated tag is in the set already: the tagger refuses it
                        tag, task = tagger(read)
                else:
                    item = next(items, None) if source is None else await source.next()
                    if item is None:
                        return
                    tag, task = item
                if spend is not None and spend.reached and not run.aborted:
                    # Start nothing more; the calls in flight finish (their cost is counted).
                    run.aborted, run.reason = True, spend.reason
                if run.guarded:
                    result = await self._run_guarded(run, index, tag, task)
                elif run.aborted:
                    result = _aborted(tag, run.reason)
                elif (
                    direct
                    and type(task) is LLMTask
                    and task.structured is None
                    and task.timeout is None
                    and (task.retry is None or task.retry.retry_on_result is None)
                    and (governor is None or governor.quiet)
                ):
                    start = perf_counter()
                    overrides = self._overrides(task) if task.config_overrides else defaults
                    if governor is not None:
                        governor.unpaced += 1
                    try:
                        response = await target.complete(
                            task.messages,
                            config_overrides=None if overrides is None else dict(overrides),
                        )
                    except Exception as exc:
                        result = await self._first_failed(tag, task, overrides, exc, start)
                        if stop_on_auth and not result.success:
                            run.count_failure(result)
                    except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
                        if governor is not None:
                            governor.unpaced -= 1
                        raise
                    else:  # _first_answered, inline
                        if governor is not None:
                            governor.unpaced -= 1
                            governor.answered()
                            if getattr(response, "rate_limits", None) is not None:
                                governor.learn(overrides, response)
                        result = answered(tag, response, (perf_counter() - start) * 1000, 1)
                else:
                    result = await self._run_task(tag, task, run.threads)
                    if stop_on_auth and not result.success:
                        run.count_failure(result)
                if results is not None:
                    results[tag] = result
                elif buffer is not None and not buffer.left:  # Results.put, inline
                    queue.append(result)
                    if buffer.wake is not None:
                        buffer.wake_up()
                    if len(queue) > size:
                        await buffer.room(result)
                elif not run.put(result):
                    await run.emit(result)
                if notify is not None:
                    await notify(result)
                if cap.waiters or not lease.held:  # another call waits: take turns
                    give_back(lease)
                    await take(lease)
        finally:
            give_back(lease)

    async def _run_guarded(
        self, run: _Run, index: int, tag: str, task: Task | Invalid
    ) -> TaskResult:
        """A task under max_errors: cut off (TaskAborted) if the run stops meanwhile."""
        if run.aborted:
            return _aborted(tag, run.reason)
        start = perf_counter()
        result: TaskResult | None = None
        with anyio.CancelScope() as scope:
            run.scopes[index] = scope
            result = await self._run_task(tag, task, run.threads)
        run.scopes[index] = None
        if result is None:  # our scope caught its own cancellation: the run was stopped
            return _aborted(tag, run.reason, start)
        if not result.success:
            if run.aborted:
                # Its call ended in the instant the run stopped, before the cancellation
                # reached it (asyncio lets such a task run on; trio cancels it): counted
                # as cut off, so exactly max_errors tasks fail on either backend.
                return _aborted(tag, run.reason, start, result)
            run.count_failure(result)
        return result

    async def _run_task(
        self,
        tag: str,
        task: Task | Invalid,
        threads: anyio.CapacityLimiter | None = None,
        cached: bool = True,
    ) -> TaskResult:
        """One task, all its attempts: never raises but for cancellation.

        ``threads``: this loop's thread limiter, if the caller has it at hand; ``cached``:
        False when the cache has been asked already (or must not be).
        """
        start = perf_counter()
        if isinstance(task, LLMTask) and task.structured is not None:
            done = await run_checked(
                self._llm,
                tag,
                task,
                self._overrides(task),
                task.retry or self.default_retry or NO_RETRY,
                task.timeout or self.default_timeout,
                self.rate_limit,
                self._governor,
                self._cost if self.prices else None,
            )
            ms = (perf_counter() - start) * 1000
            ok = done.error is None
            reasks = done.reasks
            return TaskResult(tag, ok, done.value, done.error, ms, done.attempts, reasks=reasks)
        if isinstance(task, LLMTask):
            if self._cache is not None and cached and task.cache:
                return await self._through_cache(tag, task, threads)
            overrides = self._plain(task)
            if overrides is not _Wrapped.CALL:
                # The fast path (the worker has its own copy of these lines, to spare a
                # coroutine per task): the first attempt is a plain call; the retry
                # machinery is set up only if it fails.
                governor = self._governor
                if governor is not None:
                    governor.unpaced += 1  # for the first answer that reports limits
                try:
                    response = await self._llm.complete(
                        task.messages,
                        config_overrides=None if overrides is None else dict(overrides),
                    )
                except Exception as exc:
                    return await self._first_failed(tag, task, overrides, exc, start)
                except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
                    if governor is not None:
                        governor.unpaced -= 1
                    raise
                return self._first_answered(tag, response, overrides, start)
            outcome = await run_llm(
                self._llm,
                task,
                self._overrides(task),
                task.retry or self.default_retry or NO_RETRY,
                task.timeout or self.default_timeout,
                self.rate_limit,
                governor=self._governor,
            )
        elif isinstance(task, DeterministicTask):
            timeout = task.timeout or self.default_timeout
            outcome = await run_function(task, timeout, threads or self._threads())
        else:
            assert isinstance(task, Invalid)
            return _failed(tag, task.error, start, 0)
        return _settled(tag, outcome, start)

    def _plain(self, task: LLMTask) -> Mapping[str, Any] | _Wrapped | None:
        """The call's overrides if its first attempt may be a plain call (no time limit,
        rate limit, answer check, nor pacing yet), else ``_Wrapped.CALL``."""
        if self.rate_limit is not None or (task.timeout or self.default_timeout) is not None:
            return _Wrapped.CALL
        retry = task.retry or self.default_retry
        if retry is not None and retry.retry_on_result is not None:
            return _Wrapped.CALL
        governor = self._governor
        if governor is not None and not governor.idle():
            return _Wrapped.CALL
        overrides = task.config_overrides
        default = self.default_config_overrides
        if not overrides:
            return default
        return overrides if default is None else {**default, **overrides}

    def _first_answered(
        self, tag: str, response: Any, overrides: Mapping[str, Any] | None, start: float
    ) -> TaskResult:
        """A plain first attempt answered."""
        governor = self._governor
        if governor is not None:
            governor.unpaced -= 1
            governor.answered()
            if getattr(response, "rate_limits", None) is not None:
                governor.learn(overrides, response)
        return answered(tag, response, (perf_counter() - start) * 1000, 1)

    async def _first_failed(
        self,
        tag: str,
        task: LLMTask,
        overrides: Mapping[str, Any] | None,
        exc: Exception,
        start: float,
    ) -> TaskResult:
        """A plain first attempt raised ``exc``: the retry machinery takes over."""
        retry = task.retry or self.default_retry
        governor = self._governor
        held = True  # the first refusal's Retry-After: a pause the pacer keeps
        if governor is not None:
            governor.unpaced -= 1
            held = governor.learn(overrides, exc, cooldown=shared_cooldown(exc, retry))
        if retry is None or retry.trivial:
            return _failed(tag, exc, start, 1)
        outcome = await run_llm(
            self._llm,
            task,
            overrides,
            retry,
            None,
            None,
            first_error=exc,
            first_held=held,
            governor=governor,
        )
        return _settled(tag, outcome, start)

    async def _through_cache(
        self,
        tag: str,
        task: LLMTask,
        threads: anyio.CapacityLimiter | None,
    ) -> TaskResult:
        """A task with the cache on: a hit, another identical call's answer, or its own."""
        start = perf_counter()
        front = self._cache
        assert front is not None
        key = front.key(task.messages, self._overrides(task))
        if key is None:  # a value with no JSON form: the call goes uncached
            return await ParallelLLMExecutor._run_task(self, tag, task, threads, False)
        # The class's own _run_task, not the instance's: telemetry wraps the instance's in a
        # task span, and this task has its span already.
        call = functools.partial(ParallelLLMExecutor._run_task, self, tag, task, threads, False)
        policy = task.retry or self.default_retry
        check = None if policy is None else policy.retry_on_result
        # An answer the policy still rejects (its attempts ran out) is returned, not kept.
        out = await front.run(key, call, _answer if check is None else _accepted(check))
        if type(out) is TaskResult:
            if out.success and isinstance(out.value, LLMResponse):
                return attrs.evolve(out, value=mark(out.value, False))
            return out
        return TaskResult(tag, True, out, None, (perf_counter() - start) * 1000, 0)

    def _overrides(self, task: LLMTask) -> Mapping[str, Any] | None:
        own = task.config_overrides
        default = self.default_config_overrides
        if not own:
            return default
        if default is None:
            return own
        return {**default, **own}


class _Wrapped(enum.Enum):
    """``_plain``'s answer for a call that cannot take the plain fast path."""

    CALL = 0


def _settled(tag: str, outcome: Ok | Failed, start: float) -> TaskResult:
    if type(outcome) is Ok:
        ms = (perf_counter() - start) * 1000
        return TaskResult(tag, True, outcome.value, None, ms, outcome.attempts)
    assert isinstance(outcome, Failed)
    return _failed(tag, outcome.error, start, outcome.attempts)


def _never(result: TaskResult) -> Any:
    raise AssertionError("results go to the run's dict")


def _failed(tag: str, exc: Exception, start: float, attempts: int) -> TaskResult:
    logger.debug("task %r failed after %d attempt(s): %r", tag, attempts, exc)
    return TaskResult(tag, False, None, exc, (perf_counter() - start) * 1000, attempts)


def _answer(result: TaskResult) -> LLMResponse | None:
    """The good answer a result holds, to store and to share (None: nothing to keep)."""
    value = result.value
    return value if result.success and isinstance(value, LLMResponse) else None


def _accepted(check: Callable[[Any], bool]) -> Callable[[TaskResult], LLMResponse | None]:
    """:func:`_answer`, but only for an answer ``retry_on_result`` would not retry."""

    def answer(result: TaskResult) -> LLMResponse | None:
        value = _answer(result)
        try:
            return None if value is None or check(value) else value
        except Exception:
            return None

    return answer


def _content(value: Any) -> str:
    content = getattr(value, "content", value)
    return content if isinstance(content, str) else str(content)
