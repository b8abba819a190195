"""The scaling-out recipes without a cluster: run_rows in a plain script, and in worker
processes standing in for Dask's (the spec pickled to them, the key read there)."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from llmfanout import JobSpec, run_rows

from support.fake_llm_server import fake_llm_server_in_thread


def answer_partition(rows: list[dict[str, Any]], spec: JobSpec) -> list[dict[str, Any]]:
    """A Dask-style partition function: what bag.map_partitions would call on a worker."""
    return list(run_rows(rows, spec))


def test_a_spec_pickles_without_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    spec = JobSpec(provider="openai", model="m", rpm=600, shared_limit="redis://h:6379/0")
    assert b"sk-secret-value" not in pickle.dumps(spec)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_partitions_in_worker_processes_each_row_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "worker-key")  # the workers read it themselves
    partitions = [
        [{"id": p * 1000 + i, "prompt": f"p{p} row {i}"} for i in range(30)] for p in range(4)
    ]
    with fake_llm_server_in_thread() as server:
        spec = JobSpec(provider="openai", model="m", base_url=server.openai_base_url, concurrency=8)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            outputs = list(pool.map(answer_partition, partitions, [spec] * len(partitions)))
        keys = {request.api_key for request in server.requests}
    got = Counter(row["id"] for part in outputs for row in part)
    assert got == Counter(row["id"] for part in partitions for row in part)
    assert all(row["success"] for part in outputs for row in part)
    assert keys == {"worker-key"}


def test_run_rows_in_a_plain_script(tmp_path: Any) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            from llmfanout import JobSpec, run_rows

            rows = ({"id": i, "prompt": f"row {i}"} for i in range(200))
            seen = [row["id"] for row in run_rows(rows, JobSpec(concurrency=20))]
            assert sorted(seen) == list(range(200)), seen
            print(len(seen))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"
