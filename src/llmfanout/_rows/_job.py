"""The batch job as a library: input rows in, one output row per input row out.

:class:`JobSpec` describes a job (one field per ``llmfanout run`` flag) and travels well: it
is frozen and picklable and holds no secret, so a distributed engine can ship it to its
workers. :func:`arun_rows` runs it in an event loop; :func:`run_rows` runs it from plain
synchronous code (a script, a thread, a worker function), with the event loop in a thread
of its own. The ``llmfanout run`` command is argument parsing and display over
:class:`Job`, the engine both share.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import attrs

from .._base._checks import need_backend
from .._base._types import AsyncLLMProvider
from .._cache._front import Cache
from .._cache._open import open_cache
from .._core._executor import ParallelLLMExecutor, ResultStream
from .._core._retry import BackoffStrategy, RetryConfig
from .._core._tasks import LLMTask, TaskResult
from .._deploy._build import build_pool, deployment_keys
from .._deploy._spec import DeploymentSpec, parse_deployments
from .._flow._limiter import Limiter
from .._flow._ratelimit import RateLimit
from .._flow._redislimit import redact
from .._report._cost import Price, check_prices
from .._report._stats import RunStats, pricer
from .._report._summary import SummaryAccumulator
from .._structured._spec import DEFAULT_MAX_REASKS
from ..providers._echo import EchoProvider
from ._input_rows import Bad, ParsedRow, aparse_rows, parse_rows
from ._output_rows import bad_row, result_row
from ._structured_rows import check_job_schema, row_schema, structured_fields
from ._tasks import task_for

PROVIDERS = ("echo", "openai", "anthropic")
BACKENDS = ("asyncio", "trio")
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_PER_ROW = "(per row)"  # the provider's model when every row names its own


class JobError(ValueError):
    """A job that cannot start: a missing key, an unusable option. Nothing was sent."""


def _whole(
    name: str, *, none: bool = False, zero: bool = False
) -> Callable[[Any, Any, object], None]:
    least = 0 if zero else 1

    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None and none:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            wanted = f"a whole number >= {least}" + (", or None" if none else "")
            raise ValueError(f"JobSpec: {name} is {value!r}; give {wanted}")

    return check


def _seconds(name: str, *, zero: bool = False) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None and not zero:
            return
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (value >= 0 if zero else value > 0)
            or not math.isfinite(value)
        ):
            wanted = "a number >= 0" if zero else "a number > 0, or None"
            raise ValueError(f"JobSpec: {name} is {value!r}; give {wanted}")

    return check


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value not in choices:
            raise ValueError(f"JobSpec: {name} is {value!r}; give one of {', '.join(choices)}")

    return check


def _text(name: str) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"JobSpec: {name} is {value!r}; give a non-empty string, or None")

    return check


def _params(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            f"JobSpec: params is {type(value).__name__}; give a mapping of parameter names "
            "to values (temperature, max_tokens, ...), or None"
        )
    return dict(value) or None


def _prices(value: object) -> dict[str, Price] | None:
    return None if value is None else check_prices(value, "JobSpec.prices")


def _place(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _shown_place(value: str | None) -> str:
    return repr(redact(value) if value and "://" in value else value)


def _deployments(value: object) -> tuple[DeploymentSpec, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple) and all(isinstance(v, DeploymentSpec) for v in value) and value:
        return value
    try:
        return parse_deployments(value, "JobSpec.deployments")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


@attrs.frozen(kw_only=True)
class JobSpec:
    """What a batch job does: one field per ``llmfanout run`` flag. Frozen and picklable.

    - ``provider``: ``"echo"`` (local, no network), ``"openai"`` or ``"anthropic"``.
    - ``model``: the model; a row's own (``params.model``) wins. Without it, every row
      of an HTTP provider must name one (rows that do not become failed rows).
    - ``base_url``: the provider's API base URL (an OpenAI-compatible server, a proxy).
    - ``api_key_env``: the name of the environment variable holding the key (default
      ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``). The key is read where the job runs and
      is never stored in the spec.
    - ``params``: default request parameters, under each row's own.
    - ``concurrency``: calls in flight at once; ``max_attempts``: attempts per row;
      ``timeout``: seconds per attempt (None: the provider's default).
    - ``rpm``, ``tpm``: requests and tokens per minute; ``shared_limit``: a URL
      (``redis://host:port/db``) of a budget shared by every worker, with ``rpm``/``tpm``.
    - ``patience``: seconds a row keeps waiting out rate-limit and overload answers (429,
      529, 503 with Retry-After) before it fails, apart from ``max_attempts``; 0: no
      patience (such an answer is an attempt like any other).
    - ``pacing``: pace by the rate limits the server advertises in its headers, and keep
      fewer calls in flight while it answers overload (False: only ``rpm``/``tpm``).
    - ``max_errors``: stop after this many failed rows (None: never); rows not sent then
      come out as failed with ``TaskAborted``. An answer refusing the key (401, 403) always
      stops the run.
    - ``backend``: the event loop :func:`run_rows` starts (``"asyncio"`` or ``"trio"``).
    - ``echo_latency``: seconds the echo provider waits per call (demos, benchmarks).
    - ``prices``: a price table (model -> :class:`~llmfanout.Price` or its mapping), for
      the summary's ``cost_usd``.
    - ``cache``: where answers are cached: the path of a SQLite file, or a Redis URL
      (``redis://host:port/db``) shared by every worker; each output row then says
      whether it was ``cached``. ``cache_namespace`` is mixed into every key: a new one
      starts afresh. See docs/cache.md.
    - ``telemetry``: OpenTelemetry spans and metrics (``ParallelLLMExecutor(telemetry=True)``,
      with ``llmfanout.client.cost`` from ``prices``); ``capture_content``: record the
      messages and answers on the spans too (needs ``telemetry``).
    - ``deployments``: a list of deployments (the objects of a deployments file) to send
      to as one :class:`~llmfanout.Pool` instead of ``provider``; each names its key's
      environment variable. With ``shared_limit``, each one's ``rpm``/``tpm`` budget is
      its own key in Redis. ``hedge_after``: the pool's (seconds; None: no hedging).
    - ``schema``: a JSON Schema every answer must match (a row's ``params`` may carry its
      own as ``response_schema``); output rows then carry ``parsed``, the validated
      object. ``max_reasks``: follow-up turns for an answer that fails it (default 2).
    - ``max_cost_usd``: stop sending once the spend (and the cost in flight) would pass
      this many USD; needs ``prices``. Rows not sent come out with ``TaskAborted``.

    Raises ``ValueError`` naming the field for a value that cannot work.
    """

    provider: str = attrs.field(default="echo", validator=_one_of("provider", PROVIDERS))
    model: str | None = attrs.field(default=None, validator=_text("model"))
    base_url: str | None = attrs.field(default=None, validator=_text("base_url"))
    api_key_env: str | None = attrs.field(default=None, validator=_text("api_key_env"))
    params: dict[str, Any] | None = attrs.field(default=None, converter=_params)
    concurrency: int = attrs.field(default=16, validator=_whole("concurrency"))
    max_attempts: int = attrs.field(default=3, validator=_whole("max_attempts"))
    timeout: float | None = attrs.field(default=None, validator=_seconds("timeout"))
    rpm: float | None = attrs.field(default=None, validator=_seconds("rpm"))
    tpm: float | None = attrs.field(default=None, validator=_seconds("tpm"))
    shared_limit: str | None = attrs.field(
        default=None, validator=_text("shared_limit"), repr=_shown_place
    )
    patience: float = attrs.field(default=600.0, validator=_seconds("patience", zero=True))
    pacing: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    max_errors: int | None = attrs.field(default=None, validator=_whole("max_errors", none=True))
    backend: str = attrs.field(default="asyncio", validator=_one_of("backend", BACKENDS))
    echo_latency: float = attrs.field(default=0.0, validator=_seconds("echo_latency", zero=True))
    prices: dict[str, Price] | None = attrs.field(default=None, converter=_prices)
    cache: str | None = attrs.field(
        default=None, converter=_place, validator=_text("cache"), repr=_shown_place
    )
    cache_namespace: str | None = attrs.field(default=None, validator=_text("cache_namespace"))
    telemetry: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    capture_content: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    deployments: tuple[DeploymentSpec, ...] | None = attrs.field(
        default=None, converter=_deployments
    )
    hedge_after: float | None = attrs.field(default=None, validator=_seconds("hedge_after"))
    schema: dict[str, Any] | None = attrs.field(default=None, validator=check_job_schema)
    max_reasks: int = attrs.field(
        default=DEFAULT_MAX_REASKS, validator=_whole("max_reasks", zero=True)
    )
    max_cost_usd: float | None = attrs.field(default=None, validator=_seconds("max_cost_usd"))

    def __attrs_post_init__(self) -> None:
        if self.max_cost_usd is not None and not self.prices:
            raise ValueError("JobSpec: max_cost_usd needs prices (a price table) to count cost")
        if self.echo_latency and self.provider != "echo":
            raise ValueError(
                f"JobSpec: echo_latency applies to provider 'echo' only, not {self.provider!r}"
            )
        if self.deployments is not None:
            if self.shared_limit is not None and not any(d.rpm or d.tpm for d in self.deployments):
                raise ValueError(
                    "JobSpec: shared_limit needs an rpm or tpm on some deployment: the budget "
                    "to share"
                )
        elif self.hedge_after is not None:
            raise ValueError("JobSpec: hedge_after applies to deployments only")
        elif self.shared_limit is not None and self.rpm is None and self.tpm is None:
            raise ValueError("JobSpec: shared_limit needs rpm or tpm: the budget to share")
        if self.capture_content and not self.telemetry:
            raise ValueError("JobSpec: capture_content needs telemetry=True")

    @property
    def key_variable(self) -> str | None:
        """The environment variable the key is read from (None for the echo provider)."""
        if self.provider == "echo":
            return None
        return self.api_key_env or KEY_VARIABLES[self.provider]


def read_key(spec: JobSpec) -> str | None:
    """The API key from the environment; raises :class:`JobError` when it is missing."""
    variable = spec.key_variable
    if variable is None or spec.deployments is not None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise JobError(
            f"provider {spec.provider!r} needs an API key in the {variable} environment "
            "variable where the job runs; set it (a local server that needs no key accepts "
            "any value, e.g. none)"
        )
    return key


def scrubber(secret: str | None) -> Callable[[str], str]:
    """A function blanking ``secret`` out of a text: raw, JSON-escaped or URL-encoded."""
    if not secret:
        return _same
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}
    forms.add(json.dumps(secret, ensure_ascii=True).replace("/", "\\/")[1:-1])
    ordered = sorted(forms, key=len, reverse=True)

    def scrub(text: str) -> str:
        for form in ordered:
            if form in text:
                text = text.replace(form, "[redacted]")
        return text

    return scrub


def _same(text: str) -> str:
    return text


def _provider_for(spec: JobSpec, model: str, key: str | None) -> AsyncLLMProvider:
    if spec.provider == "echo":
        return EchoProvider(latency=spec.echo_latency, model=model, record_calls=False)
    # httpx imports httpcore (and trio with it: 0.3 s, seconds on a busy machine) when its
    # first client is made, which is inside the first call's time limit: a first attempt
    # could time out before its request left. Pay for the import here, before any clock.
    import httpcore  # noqa: F401

    from ..providers import AnthropicProvider, OpenAIProvider

    options: dict[str, Any] = {"max_connections": spec.concurrency, "api_key": key}
    if spec.base_url:
        options["base_url"] = spec.base_url
    if spec.timeout:
        options["timeout"] = spec.timeout
    cls = OpenAIProvider if spec.provider == "openai" else AnthropicProvider
    try:
        return cls(model, **options)
    except (ValueError, TypeError) as exc:  # a bad base_url or model, or an unusable key
        raise JobError(str(exc)) from None


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
            adaptive=spec.pacing,
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
