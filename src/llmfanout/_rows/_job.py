"""The batch job as a library: input rows in, one output row per input row out.

:class:`JobSpec` describes a job (one field per ``llmfanout run`` flag) and travels well: it
is frozen and picklable and holds no secret, so a distributed engine can ship it to its
workers. :func:`arun_rows` runs it in an event loop; :func:`run_rows` runs it from plain
synchronous code (a script, a thread, a worker function), with the event loop in a thread
of its own. The ``llmfanout run`` command is argument parsing and display over
:class:`Job`, the engine both share.
"""

from __future__ import annotations

from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread

from .._base._checks import need_backend
from .._base._types import AsyncLLMProvider
from .._cache._front import Cache
from .._cache._open import open_cache
from .._core._executor import ParallelLLMExecutor
from .._core._retry import BackoffStrategy, RetryConfig
from .._core._run import ResultStream
from .._core._tasks import LLMTask, TaskResult
from .._deploy._build import build_pool, deployment_keys
from .._flow._limiter import Limiter
from .._flow._ratelimit import RateLimit
from .._report._stats import RunStats, pricer
from .._report._summary import SummaryAccumulator
from ..providers._echo import EchoProvider
from ._input_rows import Bad, ParsedRow, aparse_rows, parse_rows
from ._output_rows import bad_row, result_row
from ._spec import (
    JobError,
    JobSpec,
    read_key,
    scrubber,
)
from ._structured_rows import row_schema, structured_fields
from ._tasks import task_for

_PER_ROW = "(per row)"  # the provider's model when every row names its own


def _provider_for(spec: JobSpec, model: str, key: str | None) -> AsyncLLMProvider:
    if spec.provider == "echo":
        return EchoProvider(latency=spec.echo_latency, model=model, record_calls=False)
    # httpx imports httpcore (and trio with it: 0.3 s, seconds on a busy machine) when its
    # first client is made, which is inside the first call's time limit: a first attempt
    # could time out before its request left. Pay for the import here, before any clock.
    import httpcore  # noqa: F401

    from ..providers import AnthropicProvider, GeminiProvider, OpenAIProvider

    options: dict[str, Any] = {
        "max_connections": spec.concurrency,
        "api_key": key,
        "api_key_env": spec.key_variable,  # for a refusal to name (never the key)
    }
    if spec.base_url:
        options["base_url"] = spec.base_url
    if spec.timeout:
        options["timeout"] = spec.timeout
    classes = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}
    try:
        provider: AsyncLLMProvider = classes[spec.provider](model, **options)
    except (ValueError, TypeError) as exc:  # a bad base_url or model, or an unusable key
        raise JobError(str(exc)) from None
    return provider


def _pool_for(job: Job, spec: JobSpec) -> AsyncLLMProvider:
    """The spec's deployments as one pool; the job's scrubber blanks every key."""
    assert spec.deployments is not None
    try:
        keys = deployment_keys(spec.deployments)
        pool = build_pool(
            spec.deployments,
            keys=keys,
            max_connections=spec.concurrency,
            timeout=spec.timeout,
            shared_limit=spec.shared_limit,
            hedge_after=spec.hedge_after,
            echo_latency=spec.echo_latency,
            pacing=spec.pacing,
            adaptive=spec.adaptive,
        )
    except (ValueError, ImportError) as exc:
        raise JobError(str(exc)) from None
    scrubs = [scrubber(k) for k in keys.values()]

    def scrub(text: str) -> str:
        for one in scrubs:
            text = one(text)
        return text

    job.scrub = scrub
    job._needs_model = False  # every deployment names its model
    return pool


def _limiter_for(spec: JobSpec) -> Limiter | None:
    """The job's pacing: its own :class:`RateLimit`, or a budget shared through ``shared_limit``.

    Even with no limits set, a limiter makes a 429's Retry-After pause every new call, not
    only the retry of the call that got it.
    """
    if spec.deployments is not None:
        return None  # each deployment keeps its own budget (in Redis with shared_limit)
    if spec.shared_limit is None:
        if spec.provider == "echo" and spec.rpm is None and spec.tpm is None:
            return None  # nothing to pace, and no server to answer 429
        return RateLimit(spec.rpm, spec.tpm)
    from .._flow._redislimit import RedisRateLimit, split_key

    # The provider's limits are per model: without ?key= in the URL, jobs on one model
    # share a budget and jobs on another do not.
    key = None if split_key(spec.shared_limit)[1] else f"{spec.provider}:{spec.model or 'any'}"
    try:
        return RedisRateLimit(
            spec.shared_limit, requests_per_minute=spec.rpm, tokens_per_minute=spec.tpm, key=key
        )
    except (ValueError, ImportError) as exc:  # a bad URL, or no redis client installed
        raise JobError(f"shared_limit: {exc}") from None


def _cache_for(spec: JobSpec) -> Cache | None:
    if spec.cache is None:
        return None
    try:
        return open_cache(spec.cache, spec.cache_namespace)
    except (ValueError, ImportError) as exc:  # an unusable file, or no redis client
        raise JobError(f"cache: {exc}") from None


class Job:
    """One run of a :class:`JobSpec`: rows to tasks, results to output rows, a running summary.

    ``model`` is the model the provider is made with when the spec names none (the CLI
    passes the first row's). ``provider``, when given, is used instead of making one: a
    long-lived worker (a Ray actor) runs many jobs over one provider and its connection
    pool. Raises :class:`JobError` when the job cannot start.
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        model: str | None = None,
        provider: AsyncLLMProvider | None = None,
    ) -> None:
        if not isinstance(spec, JobSpec):
            raise TypeError(f"give a JobSpec, not {type(spec).__name__}")
        self.spec = spec
        key = read_key(spec)
        self.scrub = scrubber(key)
        self.model = spec.model or model or ("echo" if spec.provider == "echo" else "")
        # Without a model for the provider, every row must bring its own.
        self._needs_model = not self.model
        self._pooled = spec.deployments is not None
        if self._pooled and provider is None:
            provider = _pool_for(self, spec)
        elif provider is None:
            provider = _provider_for(spec, self.model or _PER_ROW, key)
        self.provider = provider
        self._limiter = _limiter_for(spec)
        self.cache = _cache_for(spec)
        self.summary = SummaryAccumulator(prices=spec.prices)
        self.stats: RunStats | None = None  # per model and deployment, when asked for
        self.bad_rows = 0  # output rows for bad input rows (not in the summary: no task ran)
        self._ids: dict[str, object] = {}  # in flight: the executor's tag -> the row's id
        self._models: dict[str, str] = {}  # in flight: tag -> model, for rows naming one
        self._bad: deque[Bad] = deque()  # bad rows met, not yet handed out
        self._position = 0  # rows taken from the input
        self._tagged = 0  # tasks handed to the executor
        self._started = False
        self._running: ParallelLLMExecutor | None = None
        self._structured = spec.schema is not None  # rows carry "parsed"

    def executor(self) -> ParallelLLMExecutor:
        """A new executor for this job's spec: its cap, retries, timeout and limiter."""
        spec = self.spec
        retry = None
        if spec.max_attempts > 1 or spec.patience:
            retry = RetryConfig(
                max_attempts=spec.max_attempts,
                backoff_strategy=BackoffStrategy.JITTER,
                patience=spec.patience,
            )
        executor = ParallelLLMExecutor(
            self.provider,
            max_concurrency=spec.concurrency,
            default_retry=retry,
            default_config_overrides=spec.params,
            default_timeout=spec.timeout,
            rate_limit=self._limiter,
            pacing=spec.pacing,
            adaptive=spec.adaptive,
            cache=self.cache,
            telemetry=spec.telemetry,
            capture_content=spec.capture_content,
            prices=spec.prices,
            max_cost_usd=spec.max_cost_usd,
        )
        if executor._telemetry is not None and spec.prices:
            executor._telemetry.price = pricer(spec.prices)
        return executor

    @property
    def concurrency(self) -> int:
        """Calls kept in flight now: ``spec.concurrency``, or fewer while the server is
        overloaded."""
        executor = self._running
        return self.spec.concurrency if executor is None else executor.concurrency

    @property
    def cost_cap_reached(self) -> bool:
        """Whether ``max_cost_usd`` stopped the run (rows not sent are left for resume)."""
        return self._running is not None and self._running.cost_cap_reached

    # -- per row: keep this short ----------------------------------------------------------

    def _task(self, row: ParsedRow) -> LLMTask | None:
        """The task for ``row`` (None if it is bad), remembered until its result is in."""
        params = row.params
        model = params.get("model") if params else None
        if self._needs_model and not model:
            self._bad.append(
                Bad(self._position, row.key, 'no model; give "model" in params, or a JobSpec model')
            )
            return None
        schema = row_schema(params, self.spec.schema)
        if schema is None:
            task = task_for(row)
        else:
            try:
                task = task_for(row, schema=schema, max_reasks=self.spec.max_reasks)
            except (TypeError, ValueError) as exc:
                self._bad.append(Bad(self._position, row.key, f"params.response_schema: {exc}"))
                return None
            self._structured = True
        # The executor tags untagged tasks by position: only rows in flight are remembered.
        tag = str(self._tagged)
        self._tagged += 1
        self._ids[tag] = row.id
        if model:
            self._models[tag] = model
        return task

    def _take(self, row: ParsedRow | Bad) -> LLMTask | None:
        """Count one input row: its task, or None for a bad row (kept to be handed out)."""
        self._position += 1
        if type(row) is Bad:
            self._bad.append(row)
            return None
        assert isinstance(row, ParsedRow)
        return self._task(row)

    def tasks(self, rows: Iterable[ParsedRow | Bad]) -> Iterator[LLMTask]:
        """The executor's input: a task per good row; bad rows wait to be handed out."""
        for row in rows:
            if (task := self._take(row)) is not None:
                yield task

    async def atasks(self, rows: AsyncIterable[ParsedRow | Bad]) -> AsyncIterator[LLMTask]:
        """:meth:`tasks` for an async input."""
        async for row in rows:
            if (task := self._take(row)) is not None:
                yield task

    def row(self, result: TaskResult) -> dict[str, Any]:
        """The output row for ``result``, counted in the summary."""
        tag = result.tag
        row_id = self._ids.pop(tag)
        model = self._models.pop(tag, self.model) if self._models else self.model
        self.summary.add(result)
        if self.stats is not None:
            self.stats.add(result, model or _PER_ROW)
        row = result_row(result, row_id, model or _PER_ROW, self.scrub)
        if self.cache is not None:
            row["cached"] = result.success and result.value.metadata.get("cached") is True
        if self._pooled:  # which deployment answered
            row["deployment"] = getattr(result.value, "metadata", {}).get("deployment")
        return structured_fields(row, result, self.scrub) if self._structured else row

    def bad(self) -> dict[str, Any] | None:
        """The output row for the next bad input row not yet handed out, if any."""
        if not self._bad:
            return None
        self.bad_rows += 1
        return bad_row(self._bad.popleft())

    # -- the whole run ---------------------------------------------------------------------

    @asynccontextmanager
    async def run(
        self,
        rows: Iterable[ParsedRow | Bad] | AsyncIterable[ParsedRow | Bad],
        *,
        executor: ParallelLLMExecutor | None = None,
    ) -> AsyncIterator[RowStream]:
        """Send the rows; hand out output rows as they complete (see :class:`RowStream`).

        ``executor``, when given (one from :meth:`executor`, kept by a long-lived worker),
        runs the calls, sharing its cap and its limiter with every other run on it; the
        provider is then left open for the worker to keep. Leaving the block early cancels
        the calls in flight, leaving nothing running. A job runs once (its bookkeeping
        follows the executor's count of tasks): make another for the next run.
        """
        if self._started:
            raise RuntimeError("this Job has run already; make a new Job for another run")
        self._started = True
        tasks: Iterable[LLMTask] | AsyncIterable[LLMTask]
        tasks = self.atasks(rows) if isinstance(rows, AsyncIterable) else self.tasks(rows)
        own = executor is None
        if executor is None:
            executor = self.executor()
        self._running = executor
        async with AsyncExitStack() as stack:
            if own and hasattr(self.provider, "__aenter__"):
                await stack.enter_async_context(self.provider)  # type: ignore[arg-type]
            if own and self.cache is not None and hasattr(self.cache, "close"):
                stack.callback(self.cache.close)
            async with executor.stream(tasks, max_errors=self.spec.max_errors) as results:
                yield RowStream(self, results)


class RowStream:
    """Output rows as they complete: an async iterator, and :meth:`ready` to take many."""

    __slots__ = ("_job", "_results")

    def __init__(self, job: Job, results: ResultStream) -> None:
        self._job = job
        self._results = results

    def __aiter__(self) -> RowStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        job = self._job
        bad = job.bad()
        if bad is not None:
            return bad
        try:
            result = await self._results.__anext__()
        except StopAsyncIteration:
            bad = job.bad()  # bad rows after the last task
            if bad is None:
                raise
            return bad
        return job.row(result)

    def ready(self) -> list[dict[str, Any]]:
        """The rows finished but not yet taken, without waiting (possibly none)."""
        job = self._job
        rows = [job.row(result) for result in self._results.ready()]
        while (bad := job.bad()) is not None:
            rows.append(bad)
        return rows

    async def batch(self) -> list[dict[str, Any]]:
        """At least one row (waiting for it), with every other one ready; [] at the end."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        rows = self.ready()
        rows.insert(0, first)
        return rows


def arun_rows(
    rows: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]], spec: JobSpec
) -> AbstractAsyncContextManager[RowStream]:
    """Run a job in this event loop, handing out output rows as they complete.

    ``async with arun_rows(rows, spec) as out: async for row in out: ...``

    ``rows`` (an iterable or async iterable of input-row mappings, in any of the CLI's
    three formats) is read lazily as calls free up; each input row gets exactly one output
    row (a dict in the CLI's output schema), handed out as it completes, so memory stays
    proportional to ``spec.concurrency``. A row that cannot run becomes a failed row
    (error type ``InvalidInput``, ``line`` its position from 1) naming the problem; ids are
    not checked for uniqueness (that would take memory growing with the input).

    Works on asyncio and trio (``spec.backend`` is for :func:`run_rows`). Raises
    :class:`JobError` on entry when the job cannot start (no API key, say). Leaving the
    block early (``break``, an exception, cancellation) cancels the calls in flight and
    leaves nothing running. ``async for row in arun_rows(...)`` without the ``async with``
    raises a ``TypeError`` showing this form: the block is what owns the calls in flight.
    """
    return _RowsRun(_arun_rows(rows, spec))


@asynccontextmanager
async def _arun_rows(
    rows: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]], spec: JobSpec
) -> AsyncIterator[RowStream]:
    job = Job(spec)
    parsed = aparse_rows(rows) if isinstance(rows, AsyncIterable) else parse_rows(rows)
    async with job.run(parsed) as stream:
        yield stream


class _RowsRun(AbstractAsyncContextManager[RowStream]):
    """What :func:`arun_rows` returns: an async context manager that says how to iterate."""

    __slots__ = ("_manager",)

    def __init__(self, manager: AbstractAsyncContextManager[RowStream]) -> None:
        self._manager = manager

    async def __aenter__(self) -> RowStream:
        return await self._manager.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._manager.__aexit__(*exc_info)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        # An async for alone could not cancel the calls in flight when the loop is left
        # early (an abandoned async generator is closed whenever the collector gets to it).
        raise TypeError(
            "arun_rows(...) is an async context manager, so that leaving early cancels the "
            "calls in flight; write: async with arun_rows(rows, spec) as out: "
            "async for row in out: ..."
        )


def run_rows(rows: Iterable[Mapping[str, Any]], spec: JobSpec) -> Iterator[dict[str, Any]]:
    """Run a job from synchronous code; yield one output row per input row as each completes.

    The synchronous twin of :func:`arun_rows` (same rows in, same rows out): the event
    loop (``spec.backend``) runs in a thread of its own, so this works in a plain script,
    in a worker thread and in a distributed engine's worker function, even beside a running
    event loop. ``rows`` is read lazily from that thread. Raises :class:`JobError` here,
    before anything is sent, when the job cannot start. Stopping early (``break``, closing
    the generator) cancels the calls in flight.
    """
    if not isinstance(spec, JobSpec):
        raise TypeError(f"run_rows: spec must be a JobSpec, not {type(spec).__name__}")
    if isinstance(rows, AsyncIterable) or not isinstance(rows, Iterable):
        raise TypeError(
            f"run_rows: rows must be an iterable of mappings, not {type(rows).__name__}"
            + ("; use arun_rows for an async iterable" if isinstance(rows, AsyncIterable) else "")
        )
    need_backend(spec.backend, "run_rows")
    read_key(spec)  # fail here, not at the first next()
    if spec.shared_limit is not None:
        _limiter_for(spec)  # a bad URL or a missing redis client fails here, not mid-run
    return _run_rows(rows, spec)


def _run_rows(rows: Iterable[Mapping[str, Any]], spec: JobSpec) -> Iterator[dict[str, Any]]:
    with (
        anyio.from_thread.start_blocking_portal(spec.backend) as portal,
        portal.wrap_async_context_manager(arun_rows(rows, spec)) as stream,
    ):
        # A batch per crossing between threads: the crossing costs more than a row.
        while batch := portal.call(stream.batch):
            yield from batch
