"""The executor's telemetry hook: a span per task, a child span per attempt, the metrics.

:class:`Telemetry` is made by ``ParallelLLMExecutor(telemetry=True)`` and by nothing
else, so this module (and OpenTelemetry with it) is imported only then. It hands the
executor two things: :meth:`Telemetry.provider`, a provider whose every ``complete()``
(one attempt) is a GenAI client span, and :meth:`Telemetry.tasks`, its ``_run_task``
wrapped in a span per task. Both use the global tracer and meter providers of the
OpenTelemetry API, resolved at each call (a provider the application sets after the
executor was made still receives everything).

Parenting: OpenTelemetry keeps the current span in a ``contextvars`` context. Every
task anyio starts (``start_soon`` on asyncio and on trio) and every thread
``anyio.to_thread`` runs gets a copy of its starter's context, so the workers a run
starts see the caller's current span: each task span is its child. The task's state (a
contextvar set in the worker) carries the task span's context, which each attempt span
names as its parent; the task span itself is made current (attached and detached in
that same task) only around a function task, whose own code may trace. The attempt
span is current while the provider runs, so whatever the provider itself traces (an
HTTP client's instrumentation) is the attempt's.

Cost: what every attempt at a model shares is made once (:class:`_Model`: the span
name, the span and metric attributes, the counters' series), so an attempt builds no
dict it can reuse and a counter is a float addition; what is left per attempt is
mostly the SDK's (see benchmarks/bench_telemetry.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from time import perf_counter
from typing import Any, TypeVar, cast

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "telemetry=True needs the OpenTelemetry API; install it with: "
        "pip install 'llmfanout[otel]' (and an SDK and exporter to send it somewhere: "
        "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http)"
    ) from exc

from .._base._types import LLMMessage, LLMResponse
from .._base._version import VERSION
from . import _attributes as attrs_

SCOPE = "llmfanout"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92)  # fmt: skip
"""The bucket boundaries the GenAI conventions give for their two histograms."""

RunTask = TypeVar("RunTask", bound=Callable[..., Awaitable[Any]])

WAIT_FLOOR = 0.001
"""Seconds: a wait before an attempt shorter than this is not recorded (scheduling noise)."""


class _TaskState:
    """One task's attempts so far, for the attempt spans (per worker, in a contextvar);
    ``context``: the task span's, which parents them."""

    __slots__ = ("attempts", "context", "failed", "last_end")

    def __init__(self, start: float, context: otel_context.Context) -> None:
        self.context = context
        self.attempts = 0
        self.last_end = start  # when the previous attempt ended (the task's start at first)
        self.failed: str | None = None  # error.type of the previous attempt, if it failed


_STATE: ContextVar[_TaskState | None] = ContextVar("llmfanout_telemetry_task", default=None)


class _Instruments:
    """The metric instruments, made once per meter (the SDK warns at a second making)."""

    def __init__(self, meter: metrics.Meter) -> None:
        def histogram(name: str, unit: str, description: str) -> metrics.Histogram:
            buckets = TOKEN_BUCKETS if unit == "{token}" else DURATION_BUCKETS
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        self.tokens = histogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used."
        )
        self.duration = histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration."
        )
        self.first_chunk = histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            "Time to the first chunk of a streamed answer.",
        )
        self.waits = histogram(
            "llmfanout.client.wait.duration",
            "s",
            "Time a task waited before an attempt: for the rate limit, pacing and the cap "
            "before its first (admission), for backoff and Retry-After before a retry "
            "(backoff). Waits under 1 ms are not recorded.",
        )
        # The counters are observed at collection time from plain running totals (_Series:
        # a float addition per attempt, not an SDK measurement): only the histograms are
        # recorded per call.
        for name, unit, description in _COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[_observer(name)], unit=unit, description=description
            )
        meter.create_observable_up_down_counter(
            "llmfanout.client.active_requests",
            callbacks=[_observer("llmfanout.client.active_requests")],
            unit="{request}",
            description="Calls to the provider in flight.",
        )
        meter.create_observable_gauge(
            "llmfanout.client.concurrency",
            callbacks=[_observe_concurrency],
            unit="{request}",
            description="Calls each executor keeps in flight now (the AIMD window: fewer than "
            "max_concurrency while the server answers overload).",
        )
        meter.create_observable_gauge(
            "llmfanout.client.rate_limit.limit",
            callbacks=[_observe_limits],
            unit="{request}/min",
            description="Requests per minute the server last advertised, by provider and "
            "model: the rate the pacer paces by.",
        )


_COUNTERS = (
    (
        "llmfanout.client.requests",
        "{request}",
        "Calls to the provider (attempts) by outcome: error.type absent for a success, else "
        "the HTTP status or the error's class.",
    ),
    ("llmfanout.client.retries", "{retry}", "Attempts after a task's first."),
    ("llmfanout.tasks", "{task}", "Tasks finished, by llmfanout.task.outcome."),
    ("llmfanout.client.cost", "USD", "Cost of successful answers from the run's price table."),
    (
        "llmfanout.client.cache_hits",
        "{task}",
        "Tasks answered from llmfanout's response cache (nothing sent).",
    ),
    (
        "llmfanout.client.prompt_cache_hits",
        "{request}",
        "Answers that read prompt tokens from the provider's own prompt cache.",
    ),
)

Key = tuple[tuple[str, Any], ...]


class _Series:
    """One counter's running total for one attribute set, observed at collection."""

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = dict(attributes)
        self.value: float = 0


_SERIES: dict[str, dict[Key, _Series]] = {
    name: {} for name in (*(c[0] for c in _COUNTERS), "llmfanout.client.active_requests")
}
"""Cumulative counts per metric and attribute set, for every executor of the process."""


def _series(name: str, attributes: Mapping[str, Any]) -> _Series:
    """The running total of ``name`` for ``attributes`` (made at its first use: a hot
    path holds it and adds to ``.value``, a float addition)."""
    table = _SERIES[name]
    key = tuple(attributes.items())
    found = table.get(key)
    if found is None:
        found = table[key] = _Series(attributes)
    return found


def _observer(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    table = _SERIES[name]

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(series.value, series.attributes) for series in list(table.values())]

    return observe


_INSTRUMENTS: dict[int, _Instruments] = {}
_LIVE: weakref.WeakSet[Telemetry] = weakref.WeakSet()


def _instruments() -> _Instruments:
    meter = metrics.get_meter(SCOPE, VERSION, schema_url=SCHEMA_URL)
    made = _INSTRUMENTS.get(id(metrics.get_meter_provider()))
    if made is None:
        made = _INSTRUMENTS[id(metrics.get_meter_provider())] = _Instruments(meter)
    return made


def _observe_concurrency(options: CallbackOptions) -> Iterable[Observation]:
    for hook in list(_LIVE):
        if hook.concurrency is not None:
            yield Observation(hook.concurrency(), hook.base)


def _observe_limits(options: CallbackOptions) -> Iterable[Observation]:
    for hook in list(_LIVE):
        for model, limit in list(hook.limits.items()):
            yield Observation(limit, {**hook.base, "gen_ai.request.model": model})


class _Model:
    """What every attempt at one model shares, made at its first attempt: the span name,
    the span and metric attributes, the counters' series (so an attempt builds no dict
    it can reuse, and adds to counters by a float addition)."""

    __slots__ = ("_answers", "_attempts", "_errors", "active", "name", "point", "series")

    def __init__(self, hook: Telemetry, model: str) -> None:
        self.name = f"{attrs_.OPERATION} {model}"
        self.point: dict[str, Any] = {**hook.base, "gen_ai.request.model": model}
        self.active = _series(ACTIVE, self.point)
        self.series = {name: _series(name, self.point) for name in _PER_MODEL}
        self._attempts: dict[int, dict[str, Any]] = {}
        self._answers: dict[str | None, _Labels] = {}
        self._errors: dict[str, tuple[_Series, dict[str, Any]]] = {}

    def attempt(self, number: int) -> dict[str, Any]:
        """The attempt span's attributes at its start (``llmfanout.attempt`` = number)."""
        found = self._attempts.get(number)
        if found is None:
            found = {**self.point, "llmfanout.attempt": number}
            if number <= _KEPT_ATTEMPTS:
                self._attempts[number] = found
        return found

    def answered(self, response_model: str | None) -> _Labels:
        """The metric attributes of an answer: duration, input tokens, output tokens."""
        found = self._answers.get(response_model)
        if found is None:
            labels = self.point
            if response_model is not None:
                labels = {**labels, "gen_ai.response.model": response_model}
            found = (
                labels,
                {**labels, "gen_ai.token.type": "input"},
                {**labels, "gen_ai.token.type": "output"},
            )
            if len(self._answers) < _KEPT_LABELS:
                self._answers[response_model] = found
        return found

    def failed(self, kind: str) -> tuple[_Series, dict[str, Any]]:
        """The requests counter's series and the duration's attributes of a failure."""
        found = self._errors.get(kind)
        if found is None:
            labels = {**self.point, "error.type": kind}
            found = (_series(REQUESTS, labels), labels)
            if len(self._errors) < _KEPT_LABELS:
                self._errors[kind] = found
        return found


_Labels = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
ACTIVE = "llmfanout.client.active_requests"
REQUESTS = "llmfanout.client.requests"
_PER_MODEL = (
    REQUESTS,
    "llmfanout.client.retries",
    "llmfanout.client.prompt_cache_hits",
    "llmfanout.client.cost",
)
_KEPT_ATTEMPTS = 16
_KEPT_LABELS = 256
"""Bounds on what a model keeps made (attempt numbers, response models, error types):
past them the attributes are made per attempt, as they would be without the cache."""


class Telemetry:
    """Spans and metrics for one executor (see the module's docstring).

    ``capture_content``: record the messages sent and the answer on each attempt span
    (``gen_ai.input.messages``, ``gen_ai.output.messages``); off by default, as the
    conventions require. ``concurrency``: reads the executor's current window, for the
    ``llmfanout.client.concurrency`` gauge. ``price``: USD for an answer (set by a row
    job that has a price table), for ``llmfanout.client.cost``.
    """

    __slots__ = (
        "__weakref__",
        "_instruments",
        "_labels",
        "_tracer",
        "base",
        "capture_content",
        "concurrency",
        "limits",
        "models",
        "price",
        "redact",
    )

    def __init__(
        self,
        provider: object,
        *,
        capture_content: bool = False,
        concurrency: Callable[[], int] | None = None,
    ) -> None:
        self.capture_content = capture_content
        self.concurrency = concurrency
        self.base = attrs_.base(provider)
        self.redact = attrs_.redactor(provider)
        self.price: Callable[[LLMResponse], float | None] | None = None
        self.limits: dict[str, int] = {}
        self.models: dict[str, _Model] = {}
        self._labels: dict[str, str] = {}
        self._tracer = trace.get_tracer(SCOPE, VERSION, schema_url=SCHEMA_URL)
        self._instruments = _instruments()
        _LIVE.add(self)

    def model(self, model: str) -> _Model:
        """What the attempts at ``model`` share (made once per model)."""
        found = self.models.get(model)
        if found is None:
            found = self.models[model] = _Model(self, model)
        return found

    def label(self, text: str) -> str:
        """``text`` (a model name, a finish reason: few distinct values) through the
        provider's redactor, remembered."""
        found = self._labels.get(text)
        if found is None:
            found = self.redact(text)
            if len(self._labels) < _KEPT_LABELS:
                self._labels[text] = found
        return found

    def provider(self, provider: Any) -> TracedProvider:
        """``provider`` with a span and the metrics around each ``complete()``."""
        return TracedProvider(provider, self)

    def tasks(self, run_task: RunTask, *, runs_code: tuple[type, ...] = ()) -> RunTask:
        """The executor's ``_run_task(tag, task, threads)`` in a span per task.

        ``runs_code``: the task types that run the caller's code (a function task), for
        which the task span is made current, so what that code traces is its child."""
        tracer = self._tracer
        tasks = {
            outcome: _series("llmfanout.tasks", {**self.base, "llmfanout.task.outcome": outcome})
            for outcome in ("ok", "failed", "aborted")
        }
        cache_hits = _series("llmfanout.client.cache_hits", self.base)

        async def traced(tag: str, task: object, threads: object = None) -> Any:
            span = tracer.start_span(
                "llmfanout.task", kind=SpanKind.INTERNAL, attributes={"llmfanout.task.tag": tag}
            )
            # The task span parents its attempts through the task's state (no need to
            # make it current for them: attach and detach cost every task).
            context = trace.set_span_in_context(span)
            token = otel_context.attach(context) if isinstance(task, runs_code) else None
            attempts = _TaskState(perf_counter(), context)
            state = _STATE.set(attempts)
            outcome = "aborted"
            ended: dict[str, Any] = {}
            try:
                result = await run_task(tag, task, threads)
                outcome = "ok" if result.success else "failed"
                attempts.attempts = result.attempts
                if not result.success:
                    kind = ended["error.type"] = attrs_.error_type(result.error)
                    span.set_status(Status(StatusCode.ERROR, kind))
                else:
                    metadata = getattr(result.value, "metadata", None)
                    if metadata and metadata.get("cached"):
                        ended["llmfanout.cache_hit"] = True
                        cache_hits.value += 1
                return result
            except BaseException:  # cancelled (noqa: cancellation-ok): recorded, re-raised
                ended["error.type"] = "cancelled"
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
                raise
            finally:
                ended["llmfanout.task.outcome"] = outcome
                ended["llmfanout.task.attempts"] = attempts.attempts
                span.set_attributes(ended)
                _STATE.reset(state)
                if token is not None:
                    otel_context.detach(token)
                span.end()
                tasks[outcome].value += 1

        return cast(RunTask, traced)


class TracedProvider:
    """A provider whose each call is a GenAI client span, and counted in the metrics.

    Everything but ``complete`` is the wrapped provider's own (``model``, ``base_url``,
    ``release_loop``...).
    """

    __slots__ = ("_hook", "_provider")

    def __init__(self, provider: Any, hook: Telemetry) -> None:
        self._provider = provider
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    def __repr__(self) -> str:
        return repr(self._provider)

    # Alike in shape only (_flow/_spend.py): the complete() signature of a wrapping provider.
    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        hook = self._hook
        provider = self._provider
        requested = attrs_.request_model(provider, config_overrides)
        model = hook.models.get(requested) or hook.model(requested)
        state = _STATE.get()
        start = perf_counter()
        if state is not None:
            state.attempts += 1
            attributes = model.attempt(state.attempts)
            parent: otel_context.Context | None = state.context
        else:  # called outside a task's span: the current span is the parent
            attributes = model.point
            parent = None
        if config_overrides:
            asked = attrs_.request(config_overrides)
            if asked:
                attributes = {**attributes, **asked}
        if hook.capture_content:
            attributes = {
                **attributes,
                "gen_ai.input.messages": attrs_.input_messages(messages, hook.redact),
            }
        span = hook._tracer.start_span(
            model.name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        if state is not None and (state.attempts > 1 or start - state.last_end >= WAIT_FLOOR):
            _record_wait(span, hook._instruments, state, start, model)
        # Current while the provider runs, so what it traces itself (an HTTP client's
        # instrumentation) is this attempt's child.
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        model.active.value += 1
        failed: str | None = "cancelled"
        try:
            answer: LLMResponse = await provider.complete(
                messages, config_overrides=config_overrides
            )
            failed = None
        except Exception as exc:
            failed = attrs_.error_type(exc)
            found: dict[str, Any] = {"error.type": failed}
            status = attrs_.status_code(exc)
            if status is not None:
                found["http.response.status_code"] = status
            retry_after = getattr(exc, "retry_after", None)
            if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
                found["llmfanout.retry_after_s"] = float(retry_after)
            span.set_attributes(found)
            _note_limits(hook, requested, getattr(exc, "rate_limits", None))
            span.set_status(Status(StatusCode.ERROR, failed))
            raise
        except BaseException:  # cancelled (noqa: cancellation-ok): recorded, re-raised
            span.set_attribute("error.type", "cancelled")
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            raise
        else:
            _record_answer(hook, span, model, answer, perf_counter() - start)
            return answer
        finally:
            end = perf_counter()
            otel_context.detach(token)
            model.active.value -= 1
            if failed is None:
                model.series[REQUESTS].value += 1
            else:
                requests, labels = model.failed(failed)
                requests.value += 1
                if failed != "cancelled":
                    hook._instruments.duration.record(end - start, labels)
            span.end()
            if state is not None:
                state.last_end = end
                state.failed = failed


def _record_wait(
    span: trace.Span, instruments: _Instruments, state: _TaskState, start: float, model: _Model
) -> None:
    """The wait before this attempt: an event on its span, a point in the histogram."""
    if state.attempts > 1:
        model.series["llmfanout.client.retries"].value += 1
    waited = start - state.last_end
    if waited < WAIT_FLOOR:
        return
    reason = "admission" if state.attempts == 1 else "backoff"
    event: dict[str, Any] = {"llmfanout.wait.reason": reason, "llmfanout.wait.duration_s": waited}
    if state.failed is not None:
        event["llmfanout.wait.after"] = state.failed  # the previous attempt's error.type
    span.add_event("llmfanout.wait", event)
    instruments.waits.record(waited, {**model.point, "llmfanout.wait.reason": reason})


def _record_answer(
    hook: Telemetry, span: trace.Span, model: _Model, answer: LLMResponse, seconds: float
) -> None:
    instruments = hook._instruments
    found = attrs_.response(answer, hook.label)
    if hook.capture_content:
        found["gen_ai.output.messages"] = attrs_.output_messages(answer, hook.redact)
    metadata = getattr(answer, "metadata", None)
    first = metadata.get("time_to_first_token_s") if metadata else None
    if isinstance(first, int | float) and not isinstance(first, bool):
        found["gen_ai.response.time_to_first_chunk"] = float(first)
    else:
        first = None
    span.set_attributes(found)
    labels, inputs, outputs = model.answered(found.get("gen_ai.response.model"))
    instruments.duration.record(seconds, labels)
    if first is not None:
        instruments.first_chunk.record(float(first), labels)
    count = found.get("gen_ai.usage.input_tokens")
    if count is not None:
        instruments.tokens.record(count, inputs)
    count = found.get("gen_ai.usage.output_tokens")
    if count is not None:
        instruments.tokens.record(count, outputs)
    if found.get("gen_ai.usage.cache_read.input_tokens"):
        model.series["llmfanout.client.prompt_cache_hits"].value += 1
    if hook.price is not None:
        usd = hook.price(answer)
        if usd:
            model.series["llmfanout.client.cost"].value += usd
    limits = getattr(answer, "rate_limits", None)
    if limits is not None:
        _note_limits(hook, model.point["gen_ai.request.model"], limits)


def _note_limits(hook: Telemetry, model: str, limits: object) -> None:
    requests = getattr(limits, "requests", None)
    limit = getattr(requests, "limit", None)
    if isinstance(limit, int):
        hook.limits[model] = limit
