"""``llmfanout batch submit --schema``: the native structured request goes in each batch
line, and answers that do not match come out as failed rows with their errors; the schema
is recorded in the job's state file, so ``wait`` validates without ``--schema`` again and
refuses a different one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.fake_batch_server import FakeBatchServer, fake_batch_server_in_thread

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
    _inputs(tmp_path)
    with fake_batch_server_in_thread() as server:
        server.advance_on_poll = True
        base = server.openai_base_url if wire == "openai" else server.anthropic_base_url
        done = _cli(
            tmp_path, wire, "submit", "in.jsonl", "-o", "out.jsonl", "--provider", wire,
            "--model", "m", "--base-url", base, "--poll-interval", "0.01",
            "--max-poll-interval", "0.05", "--wait", "--schema", "s.json", "--backend", backend,
        )  # fmt: skip
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


def _inputs(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    lines = [
        {"id": "good", "prompt": "JSON " + json.dumps({"label": "ham"})},
        {"id": "bad", "prompt": "JSON " + json.dumps({"label": "eggs"})},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _cli(tmp_path: Path, wire: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}
    env[VARIABLES[wire]] = KEY
    return subprocess.run(
        [sys.executable, "-m", "llmfanout", "batch", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _submit(tmp_path: Path, server: FakeBatchServer, wire: str, backend: str) -> str:
    base = server.openai_base_url if wire == "openai" else server.anthropic_base_url
    submitted = _cli(
        tmp_path, wire, "submit", "in.jsonl", "-o", "out.jsonl", "--provider", wire,
        "--model", "m", "--base-url", base, "--schema", "s.json", "--backend", backend,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    return base


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_wait_validates_against_the_schema_recorded_at_submit(
    tmp_path: Path, wire: str, backend: str
) -> None:
    _inputs(tmp_path)
    with fake_batch_server_in_thread() as server:
        base = _submit(tmp_path, server, wire, backend)
        state = json.loads((tmp_path / "out.jsonl.batch.json").read_text())
        assert state["schema"] == SCHEMA
        assert state["schema_file"] == str(tmp_path / "s.json")
        (tmp_path / "s.json").unlink()  # the record is what counts, not the file
        status = _cli(tmp_path, wire, "status", "out.jsonl", "--base-url", base)
        assert status.returncode == 0, status.stderr
        assert "validated against the schema recorded at submit" in status.stdout
        server.finish()
        waited = _cli(tmp_path, wire, "wait", "out.jsonl", "--base-url", base, "--backend", backend)
    assert waited.returncode == 1, waited.stderr  # the bad row failed its schema
    out = {
        row["id"]: row for row in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    }
    assert out["good"]["success"] and out["good"]["parsed"] == {"label": "ham"}
    bad = out["bad"]
    assert not bad["success"] and bad["error"]["type"] == "ValidationFailed"
    assert bad["error"]["validation_errors"] == ["label: 'eggs' is not one of ['spam', 'ham']"]
    # The real-time re-ask the summary suggests carries the schema the batch asked for.
    assert f"--schema {tmp_path / 's.json'}" in waited.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_wait_refuses_a_schema_other_than_the_recorded_one(
    tmp_path: Path, wire: str, backend: str
) -> None:
    _inputs(tmp_path)
    other = {**SCHEMA, "properties": {"label": {"enum": ["spam", "ham", "eggs"]}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with fake_batch_server_in_thread() as server:
        base = _submit(tmp_path, server, wire, backend)
        server.finish()
        wait = ("wait", "out.jsonl", "--base-url", base, "--backend", backend)
        refused = _cli(tmp_path, wire, *wait, "--schema", "other.json")
        assert refused.returncode == 2
        assert "--schema other.json: differs from the schema this job was submitted with" in (
            refused.stderr
        )
        assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()
        # The same schema again (another file, equal content) is taken.
        (tmp_path / "same.json").write_text(json.dumps(SCHEMA, indent=2))
        waited = _cli(tmp_path, wire, *wait, "--schema", "same.json")
    assert waited.returncode == 1, waited.stderr
    out = {
        row["id"]: row for row in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    }
    assert out["good"]["parsed"] == {"label": "ham"}
    assert out["bad"]["error"]["type"] == "ValidationFailed"


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_carrying_on_a_submit_with_another_schema_is_refused(tmp_path: Path, wire: str) -> None:
    _inputs(tmp_path)
    (tmp_path / "other.json").write_text(json.dumps({**SCHEMA, "title": "Other"}))
    with fake_batch_server_in_thread() as server:
        base = _submit(tmp_path, server, wire, "asyncio")
        again = _cli(
            tmp_path, wire, "submit", "in.jsonl", "-o", "out.jsonl", "--provider", wire,
            "--model", "m", "--base-url", base, "--schema", "other.json",
        )  # fmt: skip
        assert again.returncode == 2
        assert "the schema differs from the one first submitted" in again.stderr
        assert len(server.batches) == 1
