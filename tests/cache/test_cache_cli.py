"""``llmfanout run --cache`` and ``llmfanout cache stats|clear``, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.fake_llm_server import fake_llm_server_in_thread

KEY = "sk-cli-cache-key-0123456789"


def llmfanout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "llmfanout", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_second_run_sends_nothing_and_writes_the_same(tmp_path: Path, backend: str) -> None:
    prompts = [{"id": i, "prompt": f"question {i}"} for i in range(30)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    with fake_llm_server_in_thread() as server:
        common = ["--provider", "openai", "--model", "m-1", "--base-url", server.openai_base_url]
        common += ["--cache", "c.db", "--backend", backend]
        first = llmfanout("run", "in.jsonl", "-o", "one.jsonl", *common, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "cache: 0 hits, 30 misses" in first.stderr
        second = llmfanout("run", "in.jsonl", "-o", "two.jsonl", *common, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "cache: 30 hits, 0 misses" in second.stderr
        assert len(server.requests) == 30
    one = {r["id"]: r for r in rows(tmp_path / "one.jsonl")}
    two = {r["id"]: r for r in rows(tmp_path / "two.jsonl")}
    assert {r["cached"] for r in one.values()} == {False}
    assert {r["cached"] for r in two.values()} == {True}
    assert {i: r["content"] for i, r in one.items()} == {i: r["content"] for i, r in two.items()}
    for file in tmp_path.iterdir():
        assert KEY.encode() not in file.read_bytes()

    stats = llmfanout("cache", "stats", "c.db", cwd=tmp_path)
    assert stats.returncode == 0
    assert "30 cached answers" in stats.stdout
    cleared = llmfanout("cache", "clear", "c.db", cwd=tmp_path)
    assert "removed 30 cached answers" in cleared.stdout
    assert "0 cached answers" in llmfanout("cache", "stats", "c.db", cwd=tmp_path).stdout


def test_cache_errors_speak_flags(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "hi"}\n')
    (tmp_path / "junk.db").write_text("not a database " * 100)
    bad = llmfanout("run", "in.jsonl", "-o", "out.jsonl", "--cache", "junk.db", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--cache: SQLiteCache: cannot use" in bad.stderr
    missing = llmfanout("cache", "stats", "nowhere.db", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no cache file" in missing.stderr
