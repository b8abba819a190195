"""OpenTelemetry spans and metrics, collected with the SDK's in-memory exporter and reader.

The SDK's providers are set as the global ones once, for this module (the API allows one
each per process); every test clears the exporter and reads the metrics as deltas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmfanout import (
    EchoProvider,
    LLMMessage,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    RetryConfig,
    summarize,
)
from llmfanout._telemetry import _attributes, _hook
from llmfanout.testing import set_testing

from support.fake_llm_server import Fault, RecordedRequest, serve_fake_llm

KEY = "sk-test-SECRETKEY-0123456789abcdef"

EXPORTER = InMemorySpanExporter()
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_tracer_provider)
DELTA = AggregationTemporality.DELTA
# Histograms as deltas (each read resets them); the counters are observed cumulative
# tallies, so each test subtracts what they held when it started (BEFORE).
READER = InMemoryMetricReader(preferred_temporality={Histogram: DELTA})
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
CALLER = trace.get_tracer("tests")


@pytest.fixture(autouse=True)
def fresh_telemetry() -> Iterator[None]:
    """Each test sees only its own spans and metric points."""
    EXPORTER.clear()
    BEFORE.clear()
    for name, points in collected().items():  # this read also resets the histograms
        for point in points:
            if not hasattr(point, "count"):
                BEFORE[name, frozenset(point.attributes.items())] = point.value
    with set_testing(True):
        yield


BEFORE: dict[tuple[str, frozenset[Any]], float] = {}


def collected() -> dict[str, list[Any]]:
    """Metric name -> its data points since the last read."""
    points: dict[str, list[Any]] = {}
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def total(points: dict[str, list[Any]], name: str, **where: Any) -> float:
    """Sum (counters) or sum of values (histograms) of ``name``'s points matching ``where``."""
    found = 0.0
    for point in points.get(name, []):
        attributes = dict(point.attributes)
        if all(attributes.get(k.replace("__", ".")) == v for k, v in where.items()):
            if hasattr(point, "sum"):
                found += point.sum
            else:
                found += point.value - BEFORE.get((name, frozenset(attributes.items())), 0)
    return found


def count(points: dict[str, list[Any]], name: str) -> int:
    return sum(point.count for point in points.get(name, []))


def spans() -> tuple[list[ReadableSpan], list[ReadableSpan], list[ReadableSpan]]:
    """(caller spans, task spans, attempt spans) finished so far."""
    finished = list(EXPORTER.get_finished_spans())
    tasks = [s for s in finished if s.name == "llmfanout.task"]
    attempts = [s for s in finished if s.name.startswith("chat ")]
    callers = [s for s in finished if s not in tasks and s not in attempts]
    return callers, tasks, attempts


def faults_by_prompt(request: RecordedRequest, seen: dict[str, int]) -> Fault | None:
    """Task i: 429 first (every 7th), 500 first (every 5th), else a normal answer."""
    prompt = request.prompt
    n = seen[prompt] = seen.get(prompt, 0) + 1
    index = int(prompt.split()[-1])
    if n == 1 and index % 7 == 3:
        return Fault.status(429, retry_after="0")
    if n == 1 and index % 5 == 4:
        return Fault.status(500)
    return None


@pytest.mark.anyio
async def test_a_run_with_faults_matches_the_server_and_the_summary() -> None:
    tasks = {f"t{i}": LLMTask([LLMMessage("user", f"prompt {i}")]) for i in range(200)}
    seen: dict[str, int] = {}
    async with serve_fake_llm() as server:
        server.fault_for = lambda r: faults_by_prompt(r, seen)
        async with OpenAIProvider("gpt-test", base_url=server.openai_base_url, api_key=KEY) as p:
            executor = ParallelLLMExecutor(
                p, max_concurrency=16, default_retry=RetryConfig(max_attempts=3), telemetry=True
            )
            with CALLER.start_as_current_span("caller") as caller:
                results = await executor.execute(tasks, max_errors=None)
        sent = list(server.requests)
    summary = summarize(results)
    assert summary.ok == 200 and summary.attempts == len(sent) > 200

    callers, task_spans, attempt_spans = spans()
    assert [s.name for s in callers] == ["caller"]
    root = caller.get_span_context()
    assert len(task_spans) == 200 and len(attempt_spans) == len(sent)
    assert all(s.parent is not None and s.parent.span_id == root.span_id for s in task_spans)
    assert {s.context.trace_id for s in task_spans + attempt_spans} == {root.trace_id}
    by_id = {s.context.span_id: s for s in task_spans}
    per_task: dict[str, list[ReadableSpan]] = {}
    for span in attempt_spans:
        assert span.parent is not None and span.parent.span_id in by_id
        tag = by_id[span.parent.span_id].attributes["llmfanout.task.tag"]
        per_task.setdefault(str(tag), []).append(span)
    for task in task_spans:
        tag = str(task.attributes["llmfanout.task.tag"])
        own = sorted(per_task[tag], key=lambda s: s.attributes["llmfanout.attempt"])
        assert task.attributes["llmfanout.task.attempts"] == results[tag].attempts == len(own)
        assert task.attributes["llmfanout.task.outcome"] == "ok"
        assert [s.attributes["llmfanout.attempt"] for s in own] == list(range(1, len(own) + 1))
    # What the server refused, the attempt spans say, with the status as error.type.
    refused = [s for s in attempt_spans if s.status.status_code is StatusCode.ERROR]
    assert sorted(str(s.attributes["error.type"]) for s in refused) == sorted(
        str(code)
        for code in (429,) * sum(i % 7 == 3 for i in range(200))
        + (500,) * sum(i % 5 == 4 and i % 7 != 3 for i in range(200))
    )
    assert all(s.attributes["http.response.status_code"] in (429, 500) for s in refused)
    answer = next(s for s in attempt_spans if s.status.status_code is not StatusCode.ERROR)
    assert answer.kind is SpanKind.CLIENT and answer.name == "chat gpt-test"
    assert {
        k: answer.attributes[k]
        for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")
    } == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-test",
    }
    assert answer.attributes["server.address"] == "127.0.0.1"
    assert answer.attributes["server.port"] == server.port
    assert answer.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "gen_ai.response.model" in answer.attributes
    # Usage on the spans sums to the summary's.
    ok_spans = [s for s in attempt_spans if s.status.status_code is not StatusCode.ERROR]
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in ok_spans) == summary.prompt_tokens
    assert (
        sum(s.attributes["gen_ai.usage.output_tokens"] for s in ok_spans)
        == summary.completion_tokens
    )

    points = collected()
    assert total(points, "llmfanout.client.requests") == len(sent)
    assert total(points, "llmfanout.client.requests", error__type="429") == sum(
        i % 7 == 3 for i in range(200)
    )
    assert total(points, "llmfanout.client.retries") == summary.attempts - summary.total
    assert total(points, "llmfanout.tasks", llmfanout__task__outcome="ok") == summary.ok
    usage = "gen_ai.client.token.usage"
    assert total(points, usage, gen_ai__token__type="input") == summary.prompt_tokens
    assert total(points, usage, gen_ai__token__type="output") == summary.completion_tokens
    assert count(points, "gen_ai.client.operation.duration") == len(sent)
    assert total(points, "llmfanout.client.active_requests") == 0
    assert points["llmfanout.client.concurrency"]  # the gauge reports the executor's window
    for point in [p for found in points.values() for p in found]:
        assert "llmfanout.task.tag" not in point.attributes  # low cardinality only


@pytest.mark.anyio
async def test_a_failed_task_has_error_status_and_error_type() -> None:
    async with serve_fake_llm() as server:
        server.add_faults(Fault.status(500), Fault.status(500), Fault.status(400))
        async with OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as p:
            executor = ParallelLLMExecutor(
                p, default_retry=RetryConfig(max_attempts=2), telemetry=True
            )
            results = await executor.execute_sequential(
                [LLMTask([LLMMessage("user", "a")]), LLMTask([LLMMessage("user", "b")])]
            )
    assert [r.success for r in results] == [False, False]
    _, task_spans, attempt_spans = spans()
    assert [s.status.status_code for s in task_spans] == [StatusCode.ERROR] * 2
    assert [s.attributes["error.type"] for s in task_spans] == ["500", "400"]
    assert [s.attributes["llmfanout.task.attempts"] for s in task_spans] == [2, 1]
    assert [s.attributes["error.type"] for s in attempt_spans] == ["500", "500", "400"]
    points = collected()
    assert total(points, "llmfanout.tasks", llmfanout__task__outcome="failed") == 2
    assert total(points, "gen_ai.client.operation.duration") > 0


@pytest.mark.anyio
@pytest.mark.parametrize("capture", [False, True])
async def test_content_only_when_opted_in_and_never_the_key(capture: bool) -> None:
    async with serve_fake_llm() as server:
        server.add_faults(
            Fault.status(500, message="bad request from key {api_key}"),
            Fault.ok(content=f"the key you sent is {KEY}"),
        )
        provider = OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY)
        async with provider:
            executor = ParallelLLMExecutor(
                provider,
                default_retry=RetryConfig(max_attempts=2),
                telemetry=True,
                capture_content=capture,
            )
            result = await executor.execute({"x": LLMTask([LLMMessage("user", "hello there")])})
    assert result["x"].success and result["x"].attempts == 2
    _, task_spans, attempt_spans = spans()
    recorded = json.dumps(
        [
            {
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "resource": dict(s.resource.attributes),
                "status": s.status.description,
            }
            for s in task_spans + attempt_spans
        ],
        default=str,
    )
    assert KEY not in recorded and "SECRETKEY" not in recorded
    assert ("hello there" in recorded) is capture
    assert ("gen_ai.input.messages" in recorded) is capture
    if capture:
        output = json.loads(attempt_spans[-1].attributes["gen_ai.output.messages"])
        assert output[0]["role"] == "assistant" and "***" in output[0]["parts"][0]["content"]
    points = collected()
    assert KEY not in json.dumps([dict(p.attributes) for f in points.values() for p in f])


@pytest.mark.anyio
async def test_the_wait_before_a_retry_is_an_event_on_the_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Retry waits are instant in testing mode: record every wait, however short.
    monkeypatch.setattr(_hook, "WAIT_FLOOR", 0.0)
    async with serve_fake_llm() as server:
        server.add_faults(Fault.status(500))
        async with OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as p:
            executor = ParallelLLMExecutor(
                p, default_retry=RetryConfig(max_attempts=3), telemetry=True
            )
            await executor.execute({"x": LLMTask([LLMMessage("user", "hi")])})
    _, _, attempt_spans = spans()
    first, second = sorted(attempt_spans, key=lambda s: s.attributes["llmfanout.attempt"])
    assert first.attributes["error.type"] == "500"
    (event,) = [e for e in second.events if e.name == "llmfanout.wait"]
    assert event.attributes["llmfanout.wait.reason"] == "backoff"
    assert event.attributes["llmfanout.wait.after"] == "500"
    assert event.attributes["llmfanout.wait.duration_s"] >= 0
    assert count(collected(), "llmfanout.client.wait.duration") == 2  # admission, backoff


@pytest.mark.anyio
async def test_cancelled_from_outside_the_spans_end_and_say_so() -> None:
    started = anyio.Event()
    gate = anyio.Event()

    class Slow(EchoProvider):
        async def complete(self, messages: Any, config_overrides: Any = None) -> Any:
            started.set()
            await gate.wait()
            raise AssertionError("never released")

    executor = ParallelLLMExecutor(Slow(), telemetry=True)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(executor.execute, {"x": LLMTask([LLMMessage("user", "hi")])})
            await started.wait()
            scope.cancel()
    _, task_spans, attempt_spans = spans()
    assert [s.attributes["error.type"] for s in task_spans + attempt_spans] == ["cancelled"] * 2
    assert total(collected(), "llmfanout.client.active_requests") == 0


@pytest.mark.anyio
async def test_a_row_job_with_telemetry_records_its_cost() -> None:
    from llmfanout import JobSpec, arun_rows

    spec = JobSpec(telemetry=True, prices={"echo": {"input": 1e6, "output": 2e6}})
    async with arun_rows([{"id": i, "prompt": "hi"} for i in range(5)], spec) as rows:
        out = [row async for row in rows]
    assert len(out) == 5
    _, task_spans, attempt_spans = spans()
    assert len(task_spans) == len(attempt_spans) == 5
    # EchoProvider: 1 prompt and 2 completion tokens an answer.
    assert total(collected(), "llmfanout.client.cost") == pytest.approx(5 * (1 + 2 * 2))


def test_capture_content_needs_telemetry() -> None:
    with pytest.raises(ValueError, match="capture_content=True needs telemetry=True"):
        ParallelLLMExecutor(EchoProvider(), capture_content=True)
    with pytest.raises(TypeError, match="telemetry is 'yes'"):
        ParallelLLMExecutor(EchoProvider(), telemetry="yes")  # type: ignore[arg-type]


def _python(*parts: str) -> subprocess.CompletedProcess[str]:
    code = "\n".join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


BLOCK_OTEL = """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
"""


def test_off_opentelemetry_is_never_imported() -> None:
    done = _python(
        """
        import sys, anyio
        from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor, JobSpec
        from llmfanout import run_rows
        ex = ParallelLLMExecutor(EchoProvider())
        r = anyio.run(ex.execute, {"a": LLMTask([LLMMessage("user", "hi")])})
        assert r["a"].success
        assert len(list(run_rows([{"id": 1, "prompt": "x"}], JobSpec()))) == 1
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_telemetry_names_what_to_install() -> None:
    done = _python(
        BLOCK_OTEL,
        """
        import anyio
        from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor
        ex = ParallelLLMExecutor(EchoProvider())
        assert anyio.run(ex.execute, {"a": LLMTask([LLMMessage("user", "hi")])})["a"].success
        try:
            ParallelLLMExecutor(EchoProvider(), telemetry=True)
        except ImportError as exc:
            print(exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'llmfanout[otel]'" in done.stdout


def test_cli_otel_without_the_sdk_says_what_to_install(tmp_path: Any) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "hi"}\n')
    done = _python(
        BLOCK_OTEL.replace('name == "opentelemetry" or ', "").replace(
            '"opentelemetry."', '"opentelemetry.sdk"'
        ),
        f"""
        from llmfanout._cli._main import main
        raise SystemExit(main(["run", {str(source)!r}, "-o", {str(tmp_path / "o.jsonl")!r},
                              "--otel"]))
        """,
    )
    assert done.returncode == 2, done.stderr
    assert "--otel needs the OpenTelemetry SDK" in done.stderr
    assert "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http" in done.stderr


class Keyed:
    def __init__(self, base_url: str, model: str = "m") -> None:
        self.base_url = base_url
        self.model = model
        self.provider_name = "openai"


@given(
    user=st.text(min_size=1, max_size=12, alphabet="abcdefgh"),
    # Upper case first: a password of digits alone could be part of the port's digits.
    password=st.text(min_size=3, max_size=19, alphabet="ABCDEFGH0123456789").map("K".__add__),
    port=st.integers(1, 65535),
)
def test_a_provider_is_described_by_host_and_port_never_its_credentials(
    user: str, password: str, port: int
) -> None:
    described = _attributes.base(Keyed(f"https://{user}:{password}@api.example:{port}/v1"))
    assert described["server.address"] == "api.example" and described["server.port"] == port
    assert password not in json.dumps(described)


@given(message=st.text(min_size=1), status=st.one_of(st.none(), st.integers(100, 599)))
def test_error_type_is_never_the_message(message: str, status: int | None) -> None:
    error = RuntimeError(message)
    error.status_code = status  # type: ignore[attr-defined]
    kind = _attributes.error_type(error)
    assert kind == (str(status) if status is not None else "RuntimeError")


@given(
    overrides=st.dictionaries(
        st.text(max_size=20), st.one_of(st.text(), st.floats(), st.integers())
    )
)
def test_request_attributes_carry_only_the_numbers_the_conventions_name(
    overrides: dict[str, Any],
) -> None:
    found = _attributes.request(overrides)
    assert set(found) <= {
        "gen_ai.request.max_tokens",
        "gen_ai.request.temperature",
        "gen_ai.request.top_p",
        "gen_ai.request.seed",
    }
    assert all(isinstance(v, int | float) for v in found.values())


@pytest.mark.anyio
async def test_a_cache_hit_is_a_task_span_with_no_attempt_and_is_counted(tmp_path: Any) -> None:
    from llmfanout.cache import SQLiteCache

    cache = SQLiteCache(tmp_path / "cache.sqlite")
    tasks = {f"t{i}": LLMTask([LLMMessage("user", f"cached {i}")]) for i in range(3)}
    executor = ParallelLLMExecutor(EchoProvider(), cache=cache, telemetry=True)
    first = await executor.execute(tasks)
    assert all(r.success for r in first.values())
    EXPORTER.clear()
    before = total(collected(), "llmfanout.client.cache_hits")
    again = await executor.execute(tasks)
    assert all(r.value.metadata["cached"] is True for r in again.values())
    _, task_spans, attempt_spans = spans()
    assert len(task_spans) == 3
    assert not attempt_spans  # nothing was sent
    assert all(span.attributes["llmfanout.cache_hit"] is True for span in task_spans)
    assert total(collected(), "llmfanout.client.cache_hits") - before == 3
