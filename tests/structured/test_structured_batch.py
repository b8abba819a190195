"""``llmfanout batch submit --schema``: the native structured request goes in each batch
line, and answers that do not match come out as failed rows with their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.fake_batch_server import fake_batch_server_in_thread

KEY = "sk-structured-batch-0123456789"
VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
SCHEMA = {
    "title": "Label",
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_batch_sends_the_native_request_and_reports_invalid_answers(
    tmp_path: Path, wire: str, backend: str
) -> None:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    lines = [
        {"id": "good", "prompt": "JSON " + json.dumps({"label": "ham"})},
        {"id": "bad", "prompt": "JSON " + json.dumps({"label": "eggs"})},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}
    env[VARIABLES[wire]] = KEY
    with fake_batch_server_in_thread() as server:
        server.advance_on_poll = True
        base = server.openai_base_url if wire == "openai" else server.anthropic_base_url
        command = [
            sys.executable, "-m", "llmfanout", "batch", "submit", "in.jsonl", "-o",
            "out.jsonl", "--provider", wire, "--model", "m", "--base-url", base,
            "--poll-interval", "0.01", "--max-poll-interval", "0.05", "--wait",
            "--schema", "s.json", "--backend", backend,
        ]  # fmt: skip
        done = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        [batch] = server.batches.values()
        bodies = [body for _, body in batch.requests]
    assert done.returncode == 1, done.stderr
    for body in bodies:
        if wire == "openai":
            assert body["response_format"]["type"] == "json_schema"
            assert body["response_format"]["json_schema"]["name"] == "Label"
        else:
            assert body["tool_choice"] == {"type": "tool", "name": "Label"}
            assert body["tools"][0]["input_schema"]["required"] == ["label"]
    written = (tmp_path / "out.jsonl").read_text().splitlines()
    out = {row["id"]: row for row in map(json.loads, written)}
    assert out["good"]["success"] and out["good"]["parsed"] == {"label": "ham"}
    bad = out["bad"]
    assert not bad["success"] and bad["parsed"] is None
    assert bad["error"]["type"] == "ValidationFailed"
    assert bad["error"]["validation_errors"] == ["label: 'eggs' is not one of ['spam', 'ham']"]
    assert "--retry-failed" in bad["error"]["message"]
