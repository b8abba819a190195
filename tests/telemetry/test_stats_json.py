"""``llmfanout run --stats-json FILE``: the summary as JSON, whole at every moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmfanout._report._stats import write_atomically


def test_a_reader_never_sees_a_torn_document(tmp_path: Path) -> None:
    path = str(tmp_path / "stats.json")
    write_atomically(path, {"n": -1})
    done = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not done.is_set():
            with open(path, encoding="utf-8") as file:
                seen.append(json.load(file)["n"])  # raises on a torn document

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            write_atomically(path, {"n": n, "padding": "x" * (n * 50)})
    finally:
        done.set()
        reader.join()
    assert seen and seen == sorted(seen)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary left


def _run(tmp_path: Path, *extra: str, rows: int = 20) -> subprocess.Popen[str]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": {i}, "prompt": "p{i}"}}\n' for i in range(rows)))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmfanout",
            "run",
            str(source),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--stats-json",
            str(tmp_path / "stats.json"),
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_stats_agree_with_the_summary_and_the_output(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"echo": {"input": 1, "output": 2}}')
    process = _run(tmp_path, "--prices", str(prices))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert stats["state"] == "finished"
    assert stats["total"] == stats["ok"] == len(rows) == 20
    assert stats["attempts"] == sum(row["attempts"] for row in rows)
    assert stats["total_tokens"] == sum(row["usage"]["total_tokens"] for row in rows)
    assert f"tasks: {stats['ok']} ok" in stderr
    assert f"= {stats['total_tokens']} total" in stderr
    assert f"p50 {stats['p50_ms']:,.1f} ms" in stderr
    latency = stats["latency_ms"]
    assert latency["count"] == 20 and latency["p50"] <= latency["p90"] <= latency["p99"]
    assert stats["cost_usd"] == pytest.approx(
        sum(r["usage"]["prompt_tokens"] * 1 + r["usage"]["completion_tokens"] * 2 for r in rows)
        / 1e6
    )
    (model,) = stats["by_model"]
    assert model["model"] == "echo" and model["deployment"] == "llmfanout.echo"
    assert model["ok"] == 20 and model["total_tokens"] == stats["total_tokens"]


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9 is POSIX")
def test_after_kill_9_mid_run_the_file_is_valid_json(tmp_path: Path) -> None:
    process = _run(
        tmp_path,
        "--echo-latency",
        "0.05",
        "--concurrency",
        "2",
        "--stats-interval",
        "0.02",
        rows=2000,
    )
    path = tmp_path / "stats.json"
    try:
        deadline = time.monotonic() + 60
        # Wait until the run is under way and has rewritten the file with some rows done.
        while time.monotonic() < deadline:
            if path.exists() and json.loads(path.read_text())["ok"] >= 5:
                break
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        assert process.stderr is not None
        process.stderr.close()
    stats = json.loads(path.read_text())
    assert stats["state"] == "running" and 5 <= stats["ok"] < 2000
