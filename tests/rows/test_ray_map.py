"""llmfanout.ray.map_rows on a local Ray (2 CPUs, 2 actors) against the fake LLM server:
every row once, CLI columns, calls in flight across batches, an actor killed mid-job and
a re-run from the checkpoint, and a budget shared through Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmfanout import JobSpec
from llmfanout._rows._output_rows import merge, shard_files

from support.fake_llm_server import FakeLLMServer, fake_llm_server_in_thread
from support.redis_server import running_redis

if os.environ.get("CI"):
    import ray  # under CI a missing Ray must fail, not skip
else:
    ray = pytest.importorskip("ray", reason="needs Ray: pip install -e '.[test]'")
import ray.data

from llmfanout.ray import map_rows

# Ray's own modules warn about their deprecations and resources as they run.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

CLI_COLUMNS = {
    "id",
    "success",
    "content",
    "error",
    "usage",
    "attempts",
    "duration_ms",
    "model",
    "finish_reason",
    "line",
}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    os.environ.setdefault("OPENAI_API_KEY", "test-key")  # the actors inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with fake_llm_server_in_thread() as server:
        yield server


@pytest.fixture
def server(llm: FakeLLMServer) -> FakeLLMServer:
    llm.requests.clear()
    llm.latency = 0.0
    llm.peak_connections = llm.open_connections
    return llm


def spec_for(server: FakeLLMServer, **fields: Any) -> JobSpec:
    options: dict[str, Any] = {"provider": "openai", "model": "m", "concurrency": 16}
    options.update(base_url=server.openai_base_url, **fields)
    return JobSpec(**options)


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"row {i}"} for i in range(start, start + count)]


def test_bad_arguments_are_refused_before_ray_runs() -> None:
    ds: Any = object()
    with pytest.raises(TypeError, match="spec must be a JobSpec"):
        map_rows(ds, {"provider": "echo"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actors is 0; give a whole number >= 1"):
        map_rows(ds, JobSpec(), actors=0)
    with pytest.raises(ValueError, match=r"batch_size is 2\.5"):
        map_rows(ds, JobSpec(), batch_size=2.5)  # type: ignore[arg-type]


def test_every_row_comes_back_once_with_the_cli_columns(
    local_ray: None, server: FakeLLMServer
) -> None:
    server.latency = 0.2  # slow enough that batches overlap
    out = map_rows(ray.data.from_items(rows(240)), spec_for(server), batch_size=10).take_all()
    assert Counter(row["id"] for row in out) == Counter(range(240))
    assert set(out[0]) == CLI_COLUMNS
    by_id = {row["id"]: row for row in out}
    assert by_id[7]["success"] and by_id[7]["content"] == "echo: row 7"
    assert by_id[7]["usage"]["total_tokens"] > 0
    assert by_id[7]["error"] is None and by_id[7]["model"] == "m"
    # Two actors with batches of 10 that each waited on their slowest call would never
    # have more than 20 calls open at once: the actors keep calls in flight across batches.
    assert server.peak_connections > 20


def test_bad_rows_fail_alone_and_absent_params_stay_absent(
    local_ray: None, server: FakeLLMServer
) -> None:
    given = [
        {"id": 1, "prompt": "warm", "params": {"temperature": 0.5}},
        {"id": 2, "prompt": "short", "params": {"max_tokens": 5}},
        {"id": 3, "prompt": None},
    ]
    out = map_rows(ray.data.from_items(given), spec_for(server), actors=1).take_all()
    by_id = {row["id"]: row for row in out}
    assert by_id[1]["success"] and by_id[2]["success"]
    assert by_id[3]["success"] is False
    assert by_id[3]["error"]["type"] == "InvalidInput"
    assert 'no "prompt" or "messages"' in by_id[3]["error"]["message"]
    # Arrow gave every row both params, one of them null: a null is not sent.
    sent = {r.prompt: r.json for r in server.requests}
    assert sent["warm"]["temperature"] == 0.5 and "max_tokens" not in sent["warm"]
    assert sent["short"]["max_tokens"] == 5 and "temperature" not in sent["short"]


def test_an_actor_killed_mid_job_then_a_rerun_leaves_every_id_once(
    local_ray: None, server: FakeLLMServer, tmp_path: Path
) -> None:
    server.latency = 0.1
    total, concurrency = 400, 8
    ds = ray.data.from_items(rows(total))
    spec = spec_for(server, concurrency=concurrency)
    outcome: dict[str, Any] = {}

    def first_run() -> None:
        try:
            outcome["rows"] = map_rows(ds, spec, batch_size=20, checkpoint_dir=tmp_path).take_all()
        except Exception as exc:  # the job may fail with its actor, or Ray may retry it
            outcome["error"] = exc

    runner = threading.Thread(target=first_run)
    runner.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and runner.is_alive():
        for shard in shard_files(tmp_path):
            if Path(shard).read_bytes().count(b"\n") >= 40:
                victim = int(Path(shard).name.split("-")[-2])  # shard-<host>-<pid>-<id>
                break
        time.sleep(0.05)  # polling a directory another process writes: no event to wait on
    assert victim is not None, outcome
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()

    map_rows(ds, spec, batch_size=20, checkpoint_dir=tmp_path).take_all()
    merged = merge(tmp_path, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    ids = Counter(json.loads(line)["id"] for line in lines)
    assert ids == Counter(range(total))
    assert merged.failed == 0
    # Paid for about once: beyond the rows, at most the killed actor's calls in flight
    # (and the batch Ray sent again to an actor that had not yet seen the shard).
    assert len(server.requests) <= total + 2 * concurrency + 20


def test_actors_share_one_redis_budget(local_ray: None, server: FakeLLMServer) -> None:
    """The short form of benchmarks/bench_ray.py: never faster than the shared limit."""
    count, rpm = 300, 3000
    with running_redis() as redis_server:
        spec = spec_for(server, rpm=rpm, shared_limit=redis_server.url)
        out = map_rows(ray.data.from_items(rows(count)), spec, batch_size=50).take_all()
    assert Counter(row["id"] for row in out) == Counter(range(count))
    assert all(row["success"] for row in out)
    times = sorted(r.time for r in server.requests)
    rate = rpm / 60
    allowed = (count - rate) / rate  # one second of burst, then 50 a second
    assert times[-1] - times[0] >= 0.95 * allowed
