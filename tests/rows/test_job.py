"""The batch job as a library: JobSpec, run_rows (sync) and arun_rows (async), both backends."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import JobError, JobSpec, arun_rows, run_rows
from llmfanout._rows._job import Job, _limiter_for
from llmfanout._rows._spec import scrubber

from support.fake_llm_server import fake_llm_server_in_thread

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_FIELDS = {
    "id", "success", "content", "error", "usage", "attempts", "duration_ms", "model",
    "finish_reason",
}  # fmt: skip


def prompts(count: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"say {i}"} for i in range(count)]


# -- JobSpec --------------------------------------------------------------------------------


def test_spec_is_frozen_picklable_and_keyword_only() -> None:
    spec = JobSpec(provider="openai", model="m", params={"temperature": 0}, rpm=600)
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        JobSpec("openai")  # type: ignore[misc]
    assert spec.key_variable == "OPENAI_API_KEY"
    assert JobSpec(provider="anthropic", api_key_env="MY_KEY").key_variable == "MY_KEY"


def test_the_spec_never_holds_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-the-spec")
    spec = JobSpec(provider="openai", model="m")
    assert "sk-never" not in repr(spec)
    assert b"sk-never" not in pickle.dumps(spec)


@given(pacing=st.booleans(), adaptive=st.booleans())
def test_pacing_and_adaptive_travel_with_the_spec(pacing: bool, adaptive: bool) -> None:
    """Shipped to a worker (pickled, as Ray does), the spec keeps both switches apart, and
    the executor a worker builds from it gets them."""
    spec = JobSpec(pacing=pacing, adaptive=adaptive)
    shipped = pickle.loads(pickle.dumps(spec))
    assert shipped == spec
    assert (shipped.pacing, shipped.adaptive) == (pacing, adaptive)
    assert attrs.evolve(spec).adaptive is adaptive
    governor = Job(shipped).executor()._governor
    if pacing or adaptive:
        assert governor is not None
        assert (governor.pacing, governor.adaptive) == (pacing, adaptive)
    else:
        assert governor is None


@pytest.mark.parametrize("field", ["pacing", "adaptive"])
def test_the_switches_take_only_booleans(field: str) -> None:
    with pytest.raises(TypeError, match=f"'{field}' must be <class 'bool'>"):
        JobSpec(**{field: 1})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"provider": "cohere"}, "provider is 'cohere'; give one of echo, openai, anthropic"),
        ({"concurrency": 0}, "concurrency is 0; give a whole number >= 1"),
        ({"max_attempts": True}, "max_attempts is True"),
        ({"timeout": 0}, "timeout is 0; give a number > 0"),
        ({"rpm": float("inf")}, "rpm is inf"),
        ({"echo_latency": -1}, "echo_latency is -1; give a number >= 0"),
        ({"backend": "curio"}, "backend is 'curio'"),
        ({"model": ""}, "model is ''; give a non-empty string"),
        ({"params": [1]}, "params is list; give a mapping"),
        ({"provider": "openai", "echo_latency": 1}, "echo_latency applies to provider 'echo'"),
        ({"shared_limit": "redis://h:1/0"}, "shared_limit needs rpm or tpm"),
    ],
)
def test_a_bad_spec_names_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="JobSpec: ") as caught:
        JobSpec(**fields)
    assert message in str(caught.value)


def test_a_shared_limit_without_the_limits_module_is_a_clear_error() -> None:
    spec = JobSpec(shared_limit="redis://127.0.0.1:6379/0", rpm=600)
    try:
        import llmfanout.limits  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(JobError, match=r"shared_limit needs llmfanout\.limits"):
            _limiter_for(spec)
    else:  # the shared budget has landed: the spec builds it
        assert type(_limiter_for(spec)).__name__ == "RedisRateLimit"


# -- run_rows -------------------------------------------------------------------------------


def test_run_rows_yields_one_row_per_input_row() -> None:
    rows = prompts(50)
    out = list(run_rows(rows, JobSpec(concurrency=8)))
    assert Counter(row["id"] for row in out) == Counter(row["id"] for row in rows)
    assert all(set(row) == OUTPUT_FIELDS and row["success"] for row in out)
    by_id = {row["id"]: row for row in out}
    assert by_id["r7"]["content"] == "Echo: say 7"
    assert by_id["r7"]["model"] == "echo"


def test_bad_rows_become_failed_rows_naming_the_problem() -> None:
    rows: list[Any] = [
        {"id": "good", "prompt": "x"},
        {"id": "no-prompt"},
        "not a mapping",
        {"custom_id": "b", "body": {"messages": [{"role": "robot", "content": "x"}]}},
        {"id": True, "prompt": "x"},
    ]
    out = {row["line"]: row for row in run_rows(rows, JobSpec()) if not row["success"]}
    assert sorted(out) == [2, 3, 4, 5]  # positions, from 1
    assert out[2]["id"] == "no-prompt"
    assert 'no "prompt" or "messages"' in out[2]["error"]["message"]
    assert out[3]["id"] is None and "not an object" in out[3]["error"]["message"]
    assert "body.messages[0].role is 'robot'" in out[4]["error"]["message"]
    assert '"id" is true' in out[5]["error"]["message"]
    assert {row["error"]["type"] for row in out.values()} == {"InvalidInput"}
    assert all(row["attempts"] == 0 for row in out.values())


def test_run_rows_reads_rows_lazily() -> None:
    """Rows are taken as calls free up: an endless input is fine if you stop reading."""
    taken = 0

    def endless() -> Iterator[dict[str, Any]]:
        nonlocal taken
        while True:
            taken += 1
            yield {"id": taken, "prompt": "x"}

    out = run_rows(endless(), JobSpec(concurrency=4))
    first = [next(out) for _ in range(10)]
    out.close()  # cancels what is in flight
    assert len(first) == 10
    # What was handed out, plus at most: a batch (the buffer and the results of workers
    # waiting for room: 3 x 4), the buffer refilled (2 x 4), the calls in flight.
    assert taken <= 10 + 6 * 4


def test_run_rows_from_threads_and_on_trio() -> None:
    results: dict[str, list[dict[str, Any]]] = {}

    def work(backend: str) -> None:
        results[backend] = list(run_rows(prompts(30), JobSpec(backend=backend)))

    threads = [threading.Thread(target=work, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {b: len(rows) for b, rows in results.items()} == {"asyncio": 30, "trio": 30}


async def test_run_rows_from_a_thread_of_a_running_event_loop() -> None:
    out = await anyio.to_thread.run_sync(lambda: list(run_rows(prompts(20), JobSpec())))
    assert sorted(row["id"] for row in out) == sorted(f"r{i}" for i in range(20))


def test_run_rows_in_a_plain_script(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import json, llmfanout\n"
        "rows = ({'id': i, 'prompt': f'p{i}'} for i in range(100))\n"
        "spec = llmfanout.JobSpec(concurrency=10, echo_latency=0.001)\n"
        "out = list(llmfanout.run_rows(rows, spec))\n"
        "print(json.dumps(sorted(r['id'] for r in out if r['success'])))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(list(range(100))).replace(" ", " ")


def test_run_rows_refuses_before_sending_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JobError, match="needs an API key in the OPENAI_API_KEY"):
        run_rows(prompts(1), JobSpec(provider="openai", model="m"))
    with pytest.raises(TypeError, match="spec must be a JobSpec"):
        run_rows(prompts(1), {"provider": "echo"})  # type: ignore[arg-type]


def test_against_a_real_server_with_the_key_read_where_the_job_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-job-key/with+odd=chars"
    monkeypatch.setenv("JOB_KEY", key)
    with fake_llm_server_in_thread() as server:
        spec = JobSpec(
            provider="openai",
            base_url=server.openai_base_url,
            api_key_env="JOB_KEY",
            params={"temperature": 0},
            max_attempts=1,
        )
        rows = [
            {"id": 1, "prompt": "hello", "params": {"model": "row-model"}},
            {"id": 2, "prompt": "world"},  # no model: the spec names none either
        ]
        out = {row["id"]: row for row in run_rows(rows, spec)}
        assert len(server.requests) == 1
        sent = server.requests[0]
    assert out[1]["success"] and out[1]["model"] == "row-model"
    assert sent.json["model"] == "row-model" and sent.json["temperature"] == 0
    assert sent.headers["authorization"] == f"Bearer {key}"
    assert not out[2]["success"] and "no model" in out[2]["error"]["message"]


def test_a_refusal_names_the_variable_the_key_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_KEY", "sk-job-key-0123456789")
    job = Job(JobSpec(provider="openai", model="m", api_key_env="JOB_KEY"))
    assert job.provider._credential() == "the API key (JOB_KEY)"  # type: ignore[attr-defined]
    assert "sk-job-key" not in repr(vars(job.provider))


def test_the_scrubber_blanks_every_encoding_of_the_key() -> None:
    key = "sk-abc/def+1"
    scrub = scrubber(key)
    for leaked in (key, "sk-abc\\/def+1", "sk-abc%2Fdef%2B1"):
        assert scrub(f"bad key {leaked}!") == "bad key [redacted]!"
    assert scrubber(None)("text") == "text"


# -- arun_rows ------------------------------------------------------------------------------


async def test_arun_rows_on_both_backends() -> None:
    seen = []
    async with arun_rows(prompts(40), JobSpec(concurrency=5)) as out:
        async for row in out:
            seen.append(row["id"])
    assert sorted(seen) == sorted(f"r{i}" for i in range(40))


async def test_arun_rows_takes_an_async_iterable() -> None:
    async def rows() -> AsyncIterator[Any]:
        for i in range(10):
            yield {"id": i, "prompt": "x"}
        yield ["bad"]

    async with arun_rows(rows(), JobSpec()) as out:
        got = [row async for row in out]
    assert sorted(row["id"] for row in got if row["success"]) == list(range(10))
    assert [row["line"] for row in got if not row["success"]] == [11]


async def test_leaving_arun_rows_early_cancels_the_calls_in_flight() -> None:
    spec = JobSpec(concurrency=10, echo_latency=30)  # nothing would finish on its own
    with anyio.fail_after(10):
        async with arun_rows(prompts(100), spec) as out:
            with anyio.move_on_after(0.05):
                async for _ in out:
                    pytest.fail("a 30 s call finished")


async def test_cancelling_arun_rows_from_outside() -> None:
    spec = JobSpec(concurrency=10, echo_latency=30)
    with anyio.fail_after(10):
        with anyio.CancelScope() as scope:
            async with arun_rows(prompts(100), spec) as out:
                scope.cancel()
                async for _ in out:
                    pass
    assert scope.cancelled_caught


@given(st.lists(st.one_of(st.integers(0, 30), st.none(), st.just("bad")), max_size=40))
def test_every_input_row_gets_exactly_one_output_row(ids: list[int | str | None]) -> None:
    """Good, bad and repeated rows alike: as many rows out as in, none dropped."""
    rows: list[Any] = []
    for value in ids:
        if value is None:
            rows.append({"prompt": "no id"})
        elif value == "bad":
            rows.append(7)
        else:
            rows.append({"id": value, "prompt": "x"})
    out = list(run_rows(rows, JobSpec(concurrency=3)))
    assert len(out) == len(rows)
    good = Counter(v for v in ids if isinstance(v, int))
    assert Counter(row["id"] for row in out if row["success"]) == good


async def test_a_job_runs_once() -> None:
    """Its bookkeeping follows one executor run's count of tasks: a second run is refused."""
    job = Job(JobSpec())
    async with job.run([]) as out:
        assert [row async for row in out] == []
    with pytest.raises(RuntimeError, match="make a new Job"):
        async with job.run([]):
            pass


async def test_async_for_over_arun_rows_says_how_to_write_it() -> None:
    with pytest.raises(TypeError, match=r"async with arun_rows\(rows, spec\) as out"):
        async for _ in arun_rows([{"id": 1, "prompt": "hi"}], JobSpec()):  # type: ignore[attr-defined]
            pass
    async with arun_rows([{"id": 1, "prompt": "hi"}], JobSpec()) as out:
        assert [row["id"] async for row in out] == [1]


def test_trio_without_trio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from llmfanout import EchoProvider, LLMTask, ParallelLLMExecutor

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trio" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'llmfanout\[trio\]'"):
        run_rows([{"id": 1, "prompt": "hi"}], JobSpec(backend="trio"))
    executor = ParallelLLMExecutor(EchoProvider())
    with pytest.raises(ImportError, match=r"pip install 'llmfanout\[trio\]'"):
        executor.execute_sync({"a": LLMTask([{"role": "user", "content": "hi"}])}, backend="trio")
