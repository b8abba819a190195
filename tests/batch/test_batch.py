"""The batch library against the loopback fake of both providers' batch endpoints.

Batches move only when a test moves them (``server.advance``, ``finish``, ``expire``) or,
with ``advance_on_poll``, one step per poll: never on a timer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import AnthropicProvider, LLMMessage, LLMTask, OpenAIProvider
from llmfanout._batch._api import (
    AnthropicBatchAPI,
    BatchAPI,
    BatchRequestCancelled,
    BatchRequestError,
    BatchRequestExpired,
    OpenAIBatchAPI,
    _seconds,
)
from llmfanout._batch._http import BatchHTTP
from llmfanout._batch._jobs import BatchJob, Polling
from llmfanout._batch._plan import plan_parts
from llmfanout._batch._state import BatchStateError, Part, State, load, save
from llmfanout._batch._submit import submit_batch
from llmfanout.errors import BadRequestError, ProviderError, RateLimitError, ServerError
from llmfanout.providers._http import HTTPProvider

from support.fake_batch_server import FakeBatchServer, serve_fake_batches
from support.fake_llm_server import Fault

pytestmark = pytest.mark.anyio

KEY = "sk-batch-secret-0123456789"
FAST = Polling(interval=0.001, max_interval=0.002, retry_wait=0.001)


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    async with serve_fake_batches() as server:
        yield server


@pytest.fixture(params=["openai", "anthropic"])
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def provider(server: FakeBatchServer, wire: str) -> AsyncIterator[HTTPProvider]:
    async with make(wire, server) as provider:
        yield provider


async def submit(
    provider: HTTPProvider,
    tmp_path: Path,
    count: int,
    fail: tuple[int, ...] = (),
    **options: Any,
) -> BatchJob:
    """A job of ``count`` tasks with the state file at tmp_path/s.json."""
    state = tmp_path / "s.json"
    return await submit_batch(provider, tasks(count, fail), state=state, polling=FAST, **options)


def make(wire: str, server: FakeBatchServer) -> HTTPProvider:
    if wire == "openai":
        return OpenAIProvider("gpt-test", base_url=server.openai_base_url, api_key=KEY)
    return AnthropicProvider("claude-test", base_url=server.anthropic_base_url, api_key=KEY)


def tasks(count: int, fail: tuple[int, ...] = ()) -> list[LLMTask]:
    return [
        LLMTask([LLMMessage("user", f"q{i}" + (" FAIL" if i in fail else ""))], tag=f"t{i}")
        for i in range(count)
    ]


def batches(server: FakeBatchServer, wire: str) -> list[str]:
    return [b.id for b in server.batches.values() if b.wire == wire]


async def collect(job: BatchJob, provider: HTTPProvider) -> dict[str, Any]:
    results = [r async for r in job.results(provider)]
    counts = Counter(r.tag for r in results)
    assert all(n == 1 for n in counts.values()), counts
    return {r.tag: r for r in results}


async def test_every_task_gets_one_result_across_parts(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    server.advance_on_poll = True
    job = await submit(provider, tmp_path, 10, fail=(3,), max_requests=4)
    assert [p.rows for p in job.parts] == [4, 4, 2]
    assert len(batches(server, wire)) == 3
    results = await collect(job, provider)
    assert sorted(results) == sorted(f"t{i}" for i in range(10))
    assert results["t0"].value.content == "echo: q0"
    assert results["t0"].value.usage["total_tokens"] > 0
    failed = results["t3"]
    assert not failed.success
    assert isinstance(failed.error, BadRequestError)
    assert "asked to fail" in str(failed.error)


async def test_states_move_as_the_test_says(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 4)
    (batch_id,) = batches(server, wire)
    first = await job.refresh(provider)
    assert (first.done, first.parts_ended) == (0, 0)
    server.advance(batch_id)
    half = await job.refresh(provider)
    assert (half.done, half.parts_ended) == (2, 0)
    assert job.parts[0].status == "in_progress"
    server.finish(batch_id)
    done = await job.refresh(provider)
    assert (done.done, done.succeeded, done.parts_ended) == (4, 4, 1)
    assert done.finished


async def test_an_expired_batch_keeps_what_was_done(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 4)
    server.advance()  # half done
    server.expire()
    results = await collect(job, provider)
    assert [results[f"t{i}"].success for i in range(4)] == [True, True, False, False]
    error = results["t3"].error
    assert isinstance(error, BatchRequestExpired)
    assert error.retryable
    assert "--retry-failed" in str(error)
    assert results["t3"].attempts == 0


async def test_an_openai_batch_that_fails_validation_fails_every_row(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    server.fail_validation = "the model gpt-test does not support batches"
    async with make("openai", server) as provider:
        job = await submit(provider, tmp_path, 3)
        server.advance()
        results = await collect(job, provider)
    assert job.parts[0].status == "failed"
    for result in results.values():
        assert not result.success
        assert isinstance(result.error, BatchRequestError)
        assert "does not support batches" in str(result.error)


async def test_cancel_leaves_done_requests_and_fails_the_rest(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 4)
    server.advance()
    await job.cancel(provider)
    assert job.cancelled
    server.advance()  # the provider finishes cancelling
    results = await collect(job, provider)
    assert [results[f"t{i}"].success for i in range(4)] == [True, True, False, False]
    assert isinstance(results["t2"].error, BatchRequestCancelled)


async def test_server_errors_while_polling_are_waited_out(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    server.advance_on_poll = True
    server.add_fault("get", Fault.status(500), Fault.status(503, retry_after="0"))
    server.add_fault("results", Fault.status(502))
    job = await submit(provider, tmp_path, 3)
    results = await collect(job, provider)
    assert all(r.success for r in results.values())
    assert not server.faults["get"] and not server.faults["results"]


async def test_a_retry_after_is_honoured_while_polling(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 2)
    server.finish()
    server.add_fault("get", Fault.status(429, retry_after_ms="300"))
    await job.wait(provider)
    gets = [r for r in server.requests if r.method == "GET" and "/batches/" in r.path]
    # On the server's clock: the poll after the 429 came no sooner than it asked.
    assert gets[1].time - gets[0].time >= 0.3


async def test_a_failure_that_is_not_retryable_stops_the_wait(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 2)
    server.add_fault("get", Fault.status(401, message="bad key {api_key}"))
    with pytest.raises(ProviderError) as caught:
        await job.wait(provider)
    assert caught.value.status_code == 401
    assert KEY not in str(caught.value)


async def test_a_lost_create_answer_is_reconciled_not_repeated(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    # The server creates the batch, then drops the connection: the client cannot know.
    server.add_fault("create", Fault.drop())
    job = await submit(provider, tmp_path, 5, max_requests=2)
    assert len(batches(server, wire)) == 3
    assert sorted(p.batch_id for p in job.parts) == sorted(batches(server, wire))


async def test_a_submit_stopped_while_creating_carries_on_without_a_duplicate(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    server.add_fault("create", Fault.drop())
    one_try = Polling(interval=0.001, retry_wait=0.001, max_failures=1)
    with pytest.raises(ProviderError):
        await submit_batch(provider, tasks(3), state=state, polling=one_try)
    recorded = json.loads(state.read_text())
    assert recorded["parts"][0]["phase"] == "creating"
    assert len(batches(server, wire)) == 1  # created, but its id was never recorded
    server.advance_on_poll = True
    job = await submit(provider, tmp_path, 3)
    results = await collect(job, provider)
    assert len(batches(server, wire)) == 1
    assert job.parts[0].batch_id == batches(server, wire)[0]
    assert len(results) == 3


async def stopped_while_creating(
    provider: HTTPProvider, state: Path, server: FakeBatchServer, count: int, fault: Fault
) -> None:
    """A submit that stops with its one part saved as ``creating``, as a crash leaves it."""
    server.add_fault("create", fault)
    one_try = Polling(interval=0.001, retry_wait=0.001, max_failures=1)
    with pytest.raises(ProviderError):
        await submit_batch(provider, tasks(count), state=state, polling=one_try)
    assert json.loads(state.read_text())["parts"][0]["phase"] == "creating"


async def test_a_lean_list_still_reconciles(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    # No metadata and no counts in the list: OpenAI matches the uploaded file's id,
    # Anthropic asks for each candidate's counts.
    server.lean_list = True
    state = tmp_path / "s.json"
    await stopped_while_creating(provider, state, server, 3, Fault.drop())
    job = await submit(provider, tmp_path, 3)
    assert batches(server, wire) == [job.parts[0].batch_id]


async def test_anthropic_never_takes_another_jobs_batch_of_the_same_size(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    async with make("anthropic", server) as provider:
        # Another job's batch of 3, ended (its results carry that job's custom ids)...
        other = await submit_batch(provider, tasks(3), state=tmp_path / "a.json", polling=FAST)
        server.finish()
        # ...and one of 3, still running, made long before ours.
        old = await submit_batch(provider, tasks(3), state=tmp_path / "b.json", polling=FAST)
        server.batches[old.parts[0].batch_id].created_at -= 3600
        # Ours never reached the server: nothing may be taken for it.
        state = tmp_path / "c.json"
        await stopped_while_creating(provider, state, server, 3, Fault.status(500))
        assert len(server.batches) == 2
        ours = await submit_batch(provider, tasks(3), state=state, polling=FAST)
        assert len(server.batches) == 3
        assert ours.parts[0].batch_id not in (other.parts[0].batch_id, old.parts[0].batch_id)
        # And when ours did reach it, that is the one taken, beside the ended one.
        state = tmp_path / "d.json"
        await stopped_while_creating(provider, state, server, 3, Fault.drop())
        created = list(server.batches)[-1]
        found = await submit_batch(provider, tasks(3), state=state, polling=FAST)
    assert found.parts[0].batch_id == created
    assert len(server.batches) == 4


async def test_results_url_on_another_host_is_read_from_the_documented_path(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    server.results_base = "http://elsewhere.invalid:1"
    async with make("anthropic", server) as provider:
        job = await submit(provider, tmp_path, 2)
        server.finish()
        results = await collect(job, provider)
    assert all(r.success for r in results.values())
    assert not any("elsewhere" in r.path for r in server.requests)


async def test_a_submit_cancelled_from_outside_carries_on_without_a_duplicate(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    server.hold.add("create")  # created, but the answer never comes
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(submit_batch, provider, tasks(3), state=state, polling=FAST))
        await server.created.wait()
        tg.cancel_scope.cancel()
    assert json.loads(state.read_text())["parts"][0]["phase"] == "creating"
    assert not (tmp_path / "s.json.parts").exists()
    server.hold.clear()
    job = await submit(provider, tmp_path, 3)
    assert batches(server, wire) == [job.parts[0].batch_id]


async def test_a_second_submit_of_a_finished_job_creates_nothing(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    await submit(provider, tmp_path, 3)
    before = len(server.requests)
    job = await submit(provider, tmp_path, 3)
    assert len(server.requests) == before
    assert job.submitted


async def test_other_tasks_on_an_existing_state_are_refused(
    provider: HTTPProvider, tmp_path: Path
) -> None:
    await submit(provider, tmp_path, 3)
    with pytest.raises(BatchStateError, match="differ"):
        await submit(provider, tmp_path, 4)


async def test_a_bad_task_is_refused_before_anything_is_sent(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    bad = [*tasks(2), LLMTask([LLMMessage("user", "x")], {"stream": True}, tag="s")]
    with pytest.raises(ValueError, match=r"'s'.*stream"):
        await submit_batch(provider, bad, state=tmp_path / "s.json", polling=FAST)
    with pytest.raises(ValueError, match="twice"):
        await submit_batch(provider, tasks(2) * 2, state=tmp_path / "s.json", polling=FAST)
    assert server.requests == []
    assert not (tmp_path / "s.json").exists()


async def test_the_state_file_never_holds_the_key(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    server.advance_on_poll = True
    job = await submit(provider, tmp_path, 3)
    await job.wait(provider)
    job.mark_collected(0)
    assert KEY not in state.read_text()
    assert KEY not in repr(job)
    assert [name for name in os.listdir(tmp_path) if name != "s.json"] == []  # no spool left


async def test_a_restored_handle_waits_and_reads_results(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    await submit(provider, tmp_path, 3)
    server.finish()
    job = BatchJob.load(state, polling=FAST)
    results = await collect(job, provider)
    assert sorted(results) == ["t0", "t1", "t2"]


async def test_a_provider_for_another_server_is_refused(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    await submit(provider, tmp_path, 1)
    other = OpenAIProvider("m", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    with pytest.raises(BatchStateError, match="submitted to"):
        await BatchJob.load(state).refresh(other)


async def test_wait_cancelled_from_outside_leaves_a_usable_state(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    job = await submit(provider, tmp_path, 2)
    with anyio.CancelScope() as scope:
        await job.wait(provider, on_progress=lambda progress: scope.cancel())
    assert scope.cancelled_caught
    server.finish()
    results = await collect(BatchJob.load(state, polling=FAST), provider)
    assert len(results) == 2


async def test_a_results_download_that_breaks_is_restarted_without_repeats(
    server: FakeBatchServer, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 4)
    server.finish()
    server.add_fault("results", Fault.drop())
    results = await collect(job, provider)
    assert len(results) == 4


async def test_results_from_another_host_are_not_fetched_with_the_key(
    server: FakeBatchServer,
) -> None:
    async with make("anthropic", server) as provider:
        http = BatchHTTP(provider)
        with pytest.raises(BadRequestError, match="another host"):
            http.url("https://evil.example/v1/messages/batches/x/results")
        assert http.url(server.base_url + "/x") == server.base_url + "/x"


# -- planning: a pure step, checked for every split --------------------------------------


class _Sized(BatchAPI):
    """Lines of a chosen size, to test the split without a provider."""

    name = "openai"
    max_requests = 10
    max_bytes = 10_000

    def __init__(self) -> None:
        pass

    def body(self, messages: Any, overrides: Any) -> dict[str, Any]:
        return {"text": messages[0].content}

    def line(self, custom_id: str, body: Any) -> bytes:
        return json.dumps({"custom_id": custom_id, **body}).encode() + b"\n"


@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    max_requests=st.integers(1, 8),
    max_bytes=st.integers(1200, 3000),
)
def test_the_split_keeps_order_and_limits(
    lengths: list[int], max_requests: int, max_bytes: int, tmp_path_factory: Any
) -> None:
    folder = str(tmp_path_factory.mktemp("plan"))
    given_tasks = [
        LLMTask([LLMMessage("user", "x" * (n + 1))], tag=f"t{i}") for i, n in enumerate(lengths)
    ]
    parts = plan_parts(_Sized(), given_tasks, "run1", folder, max_requests, max_bytes)
    assert [tag for part in parts for tag in part.tags] == [t.tag for t in given_tasks]
    for part in parts:
        path = os.path.join(folder, f"llmfanout-run1-part{part.index}.jsonl")
        data = Path(path).read_bytes()
        assert len(data) == part.size <= max_bytes
        assert part.rows <= max_requests
        assert hashlib.sha256(data).hexdigest() == part.digest
        ids = [json.loads(line)["custom_id"] for line in data.splitlines()]
        assert ids == [f"run1-{part.index}-{i}" for i in range(part.rows)]
    # As few parts as the limits allow: a part ends only when the next line would not
    # fit (give or take the digits of its custom id, which grow with its position).
    for a, b in itertools.pairwise(parts):
        assert a.rows == max_requests or a.size + b.size + 8 > max_bytes - 64


@given(
    interval=st.floats(0.001, 100),
    cap=st.floats(0.001, 1000),
    growth=st.floats(1, 4),
)
def test_poll_waits_grow_to_the_cap(interval: float, cap: float, growth: float) -> None:
    delays = list(itertools.islice(Polling(interval, cap, growth).delays(), 60))
    assert delays[0] == min(interval, cap)
    assert all(0 < d <= cap for d in delays)
    assert delays == sorted(delays)
    if interval * growth**57 >= cap:  # one step of slack for rounding
        assert delays[-2:] == [cap, cap]  # reached, and held there


def test_polling_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        Polling(interval=0)
    with pytest.raises(ValueError, match="growth"):
        Polling(growth=0.5)


def test_a_request_larger_than_a_batch_is_refused(tmp_path: Path) -> None:
    big = [LLMTask([LLMMessage("user", "x" * 5000)], tag="big")]
    with pytest.raises(ValueError, match=r"'big'.*bytes"):
        plan_parts(_Sized(), big, "r", str(tmp_path), 10, 2000)


def test_openai_lines_are_batch_api_requests() -> None:
    provider = OpenAIProvider("gpt-test", api_key=KEY, default_params={"temperature": 0})
    api = OpenAIBatchAPI(provider)
    body = api.body((LLMMessage("user", "hi"),), {"max_tokens": 5})
    line = json.loads(api.line("r-0-0", body))
    assert line == {
        "custom_id": "r-0-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-test",
            "temperature": 0,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }


# -- reading result lines ----------------------------------------------------------------


def openai_outcome(line: dict[str, Any]) -> Any:
    api = OpenAIBatchAPI(OpenAIProvider("gpt-test", api_key=KEY))
    return api._outcome(json.dumps(line).encode(), "openai batch batch_1")


def test_openai_result_lines_become_outcomes() -> None:
    answer = {"model": "gpt-x", "choices": [{"message": {"content": "hi"}}]}
    ok = openai_outcome({"custom_id": "a", "response": {"status_code": 200, "body": answer}})
    assert ok.response.content == "hi" and ok.error is None and ok.answered
    lenient = openai_outcome({"custom_id": "b", "response": {"body": answer}})
    assert lenient.response.content == "hi"
    limited = openai_outcome(
        {
            "custom_id": "c",
            "response": {
                "status_code": 429,
                "request_id": "req_9",
                "body": {"error": {"message": f"slow down, {KEY}", "type": "requests"}},
            },
        }
    )
    assert isinstance(limited.error, RateLimitError)
    assert KEY not in str(limited.error) and "req_9" in str(limited.error)
    expired = openai_outcome(
        {"custom_id": "d", "response": None, "error": {"code": "batch_expired", "message": "x"}}
    )
    assert isinstance(expired.error, BatchRequestExpired) and not expired.answered
    assert openai_outcome({"no": "custom id"}) is None


def test_anthropic_result_lines_become_outcomes() -> None:
    api = AnthropicBatchAPI(AnthropicProvider("claude-test", api_key=KEY))

    def outcome(result: dict[str, Any]) -> Any:
        return api._outcome(json.dumps({"custom_id": "a", "result": result}).encode(), "where")

    message = {"model": "c", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}
    assert outcome({"type": "succeeded", "message": message}).response.content == "hi"
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert isinstance(outcome({"type": "errored", "error": error}).error, ServerError)
    assert isinstance(outcome({"type": "canceled"}).error, BatchRequestCancelled)
    assert isinstance(outcome({"type": "expired"}).error, BatchRequestExpired)
    assert isinstance(outcome({"type": "succeeded", "message": "?"}).error, ProviderError)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1711471533, 1711471533.0),
        ("1711471533", 1711471533.0),
        ("2024-09-24T18:37:24Z", 1727203044.0),
        ("2024-09-24T18:37:24.100435+00:00", 1727203044.100435),
        ("2024-09-24T18:37:24.100435123Z", 1727203044.100435),
        (None, 0.0),  # unknown: reconciliation then leans on the other signs
        ("yesterday", 0.0),
    ],
)
def test_timestamps_in_either_spelling(value: object, seconds: float) -> None:
    assert _seconds(value) == pytest.approx(seconds)


def test_part_files_are_the_request_bodies_as_sent(tmp_path: Path) -> None:
    given = tasks(5)
    anthropic = AnthropicBatchAPI(AnthropicProvider("claude-test", api_key=KEY))
    parts = plan_parts(anthropic, given, "run1", str(tmp_path), 3, 10_000)
    body = json.loads((tmp_path / "llmfanout-run1-part1.jsonl").read_bytes())
    assert [r["custom_id"] for r in body["requests"]] == ["run1-1-0", "run1-1-1"]
    assert body["requests"][0]["params"]["messages"] == [{"role": "user", "content": "q3"}]
    assert [p.rows for p in parts] == [3, 2]
    openai = OpenAIBatchAPI(OpenAIProvider("gpt-test", api_key=KEY))
    plan_parts(openai, given, "run2", str(tmp_path), 10, 10_000)
    form = (tmp_path / "llmfanout-run2-part0.jsonl").read_bytes()
    head, tail = openai.framing("llmfanout-run2-part0.jsonl")
    assert form.startswith(head) and form.endswith(tail)
    lines = form[len(head) : -len(tail)].splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == [f"run2-0-{i}" for i in range(5)]


# -- the state file ----------------------------------------------------------------------


def a_state() -> State:
    part = Part(index=0, tags=['"a"', "7"], size=10, digest="d", phase="creating")
    return State(
        run_id="r1",
        provider="openai",
        base_url="http://x/v1",
        model="m",
        created_at=1.5,
        max_requests=10,
        max_bytes=2048,
        parts=[part],
    )


def test_the_state_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "o.batch.json"
    save(a_state(), path)
    assert load(path) == a_state()
    assert os.listdir(tmp_path) == ["o.batch.json"]


def test_a_failed_save_keeps_the_old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.batch.json"
    save(a_state(), path)
    changed = a_state()
    changed.parts[0].phase = "submitted"

    def full_disk(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        save(changed, path)
    assert load(path).parts[0].phase == "creating"
    assert os.listdir(tmp_path) == ["o.batch.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "submit the batch first"),
        ("{not json", "not JSON"),
        ('{"version": 99}', "version 99"),
        ('{"version": 1, "parts": []}', "not an llmfanout batch state file"),
    ],
)
def test_an_unusable_state_file_says_what_to_do(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "o.batch.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(BatchStateError, match=message):
        load(path)


# -- hostile servers: ids, custom ids, URLs, a batch that reopens (issue 23, 22) ---------------


@pytest.mark.parametrize("form", ["absolute", "path", "relative", "upper"])
@pytest.mark.parametrize("prefix", ["", "/anthropic"])
async def test_a_results_url_is_resolved_by_the_url_standard(
    server: FakeBatchServer, tmp_path: Path, form: str, prefix: str
) -> None:
    server.prefix, server.results_form = prefix, form
    base = server.anthropic_base_url + prefix
    async with AnthropicProvider("claude-test", base_url=base, api_key=KEY) as provider:
        job = await submit(provider, tmp_path, 3)
        server.finish()
        results = await collect(job, provider)
    assert sorted(results) == ["t0", "t1", "t2"]
    assert all(r.success for r in results.values())
    (read,) = [r.path for r in server.requests if r.path.endswith("/results")]
    assert read == f"/v1/messages/batches/{job.parts[0].batch_id}/results"


async def test_openai_batches_behind_a_path_prefix(server: FakeBatchServer, tmp_path: Path) -> None:
    server.prefix = "/openai"
    base = server.base_url + "/openai/v1"
    async with OpenAIProvider("gpt-test", base_url=base, api_key=KEY) as provider:
        job = await submit(provider, tmp_path, 3, fail=(1,))
        server.finish()
        results = await collect(job, provider)
    assert [results[t].success for t in ("t0", "t1", "t2")] == [True, False, True]
    assert not any(r.path.startswith("/outside") for r in server.requests)


@pytest.mark.parametrize("batch_id", ["b\r\nX-Injected: 1", "bätch", "b/../files", "b c", ""])
async def test_a_batch_id_that_could_not_be_a_path_segment_is_a_provider_error(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path, batch_id: str
) -> None:
    server.batch_ids.append(batch_id)
    with pytest.raises(ProviderError, match="batch") as caught:
        await submit(provider, tmp_path, 2)
    assert not isinstance(caught.value, UnicodeError)
    assert not any("X-Injected" in r.headers for r in server.requests)
    assert not any("X-Injected" in str(r.headers) for r in server.requests)


async def test_foreign_and_duplicate_custom_ids_are_warned_about_and_ignored(
    server: FakeBatchServer,
    wire: str,
    provider: HTTPProvider,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = await submit(provider, tmp_path, 4)
    prefix = f"{job.run_id}-0-"
    # Row 1's answer comes under ids that normalise to another row's; row 3's twice.
    server.result_ids = {0: prefix + "\u0661", 1: prefix + "02", 2: prefix + "\u00b2"}
    server.extra_results = [prefix + "3", prefix + "3"]
    server.finish()
    with caplog.at_level("WARNING", logger="llmfanout"):
        results = await collect(job, provider)
    assert sorted(results) == ["t0", "t1", "t2", "t3"]
    # Nobody's answer is taken for rows 0-2: they got none of their own.
    assert [results[t].success for t in ("t0", "t1", "t2")] == [False] * 3
    assert results["t3"].success
    text = caplog.text
    assert "not this job's" in text and "more than once" in text


@given(st.text(max_size=6))
def test_only_the_exact_ids_we_sent_are_positions(suffix: str) -> None:
    from llmfanout._batch._jobs import position_of

    i = position_of("abc-0-" + suffix, "abc-0-", 1000)
    if i is not None:
        assert "abc-0-" + str(i) == "abc-0-" + suffix


async def test_a_batch_that_ends_then_reopens_is_a_provider_error(
    server: FakeBatchServer, wire: str, provider: HTTPProvider, tmp_path: Path
) -> None:
    job = await submit(provider, tmp_path, 2)
    server.finish()
    await job.wait(provider)
    server.reopen_after = 0
    with pytest.raises(ProviderError, match="ended") as caught:
        [r async for r in job.part_results(provider, 0)]
    assert not isinstance(caught.value, BatchStateError)
