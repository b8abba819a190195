"""``llmfanout run --provider gemini`` against the loopback fake of Gemini's API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fake_gemini_server import FakeGemini, gemini_server_in_thread
from support.processes import run_cli

KEY = "AIza-cli-run-secret-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with gemini_server_in_thread() as fake:
        yield fake


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_with_gemini(server: FakeGemini, backend: str, tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(20)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["GEMINI_API_KEY"] = KEY
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--provider", "gemini"]
    args += ["--model", "gemini-2.5-flash", "--base-url", server.gemini_url, "--backend", backend]
    done = run_cli(args, tmp_path, env)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in out) == list(range(20))
    for row in out:
        assert row["success"] and row["content"] == f"Echo: question {row['id']}"
        assert row["model"] == "gemini-2.5-flash" and row["finish_reason"] == "stop"
        assert row["usage"]["total_tokens"] > 0
    assert KEY not in done.stderr and KEY not in (tmp_path / "out.jsonl").read_text()
    assert all(KEY not in r.target for r in server.requests)
