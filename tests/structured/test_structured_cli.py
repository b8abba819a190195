"""``llmfanout run --schema / --max-reasks / --max-cost`` end to end, in a subprocess,
against the loopback fake server, on asyncio and trio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.fake_llm_server import Fault, RecordedRequest, fake_llm_server_in_thread

KEY = "sk-test-structured-cli-0123456789"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
}


def environment(**extra: str) -> dict[str, str]:
    unset = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FORCE_COLOR")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def llmfanout(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llmfanout", *map(str, args)]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=env or environment(), timeout=60
    )


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def first_prompt(request: RecordedRequest) -> str:
    return str(request.json["messages"][0]["content"])


def rows(path: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_schema_rows_carry_parsed_and_failures_their_errors(tmp_path: Path, backend: str) -> None:
    source, output, schema = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    own = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    lines = [
        {"id": "ok", "prompt": "ok"},
        {"id": "fixed", "prompt": "fixed"},
        {"id": "never", "prompt": "never"},
        {"id": "own", "prompt": "own", "params": {"response_schema": own}},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    script = {
        "ok": [json.dumps({"label": "ham"})],
        "fixed": ["{label: spam}", json.dumps({"label": "spam"})],
        "never": [json.dumps({"label": "eggs"})] * 3,
        "own": [json.dumps({"n": 4})],
    }
    sent: list[RecordedRequest] = []

    def answer(request: RecordedRequest) -> Fault:
        sent.append(request)
        return Fault.ok(script[first_prompt(request)].pop(0))

    with fake_llm_server_in_thread() as server:
        server.fault_for = answer
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--backend", backend, "--schema", schema,
            "--max-reasks", "1", "--quiet", cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY),
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = rows(output)
    assert out["ok"]["parsed"] == {"label": "ham"} and out["ok"]["reasks"] == 0
    assert out["fixed"]["parsed"] == {"label": "spam"} and out["fixed"]["reasks"] == 1
    assert out["own"]["parsed"] == {"n": 4}
    never = out["never"]
    assert never["success"] is False and never["parsed"] is None
    assert never["error"]["type"] == "ValidationFailed"
    assert never["error"]["validation_errors"] == ["label: 'eggs' is not one of ['spam', 'ham']"]
    # Named by the row's id, not by the executor's internal tag (its position, "2").
    assert never["error"]["message"].startswith("row 'never': no answer matched the schema")
    assert "task " not in never["error"]["message"]
    assert never["usage"]["total_tokens"] > 0 and never["attempts"] == 2
    by_prompt = {first_prompt(r): r.json["response_format"] for r in sent}
    assert by_prompt["own"]["json_schema"]["schema"]["properties"] == own["properties"]
    assert "response_schema" not in sent[0].json
    assert len(sent) == 1 + 2 + 2 + 1


def test_max_cost_stops_at_the_cap_and_resume_sends_exactly_the_rest(
    tmp_path: Path, backend: str
) -> None:
    source, output, prices = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "p.json"
    ids = [f"r{i}" for i in range(10)]
    source.write_text("".join(json.dumps({"id": i, "prompt": i}) + "\n" for i in ids))
    prices.write_text(json.dumps({"m": {"input": 1000, "output": 1000}}))
    seen: list[str] = []

    def answer(request: RecordedRequest) -> Fault:
        seen.append(request.prompt)
        return Fault.ok("ok")

    args = [
        "run", source, "-o", output, "--provider", "openai", "--model", "m",
        "--params", '{"max_tokens": 10}', "--prices", prices, "--concurrency", "1",
        "--backend", backend,
    ]  # fmt: skip
    env = environment(OPENAI_API_KEY=KEY)
    with fake_llm_server_in_thread() as server:
        server.fault_for = answer
        base = ["--base-url", server.openai_base_url]
        # $0.018 reserved a call, $0.002 spent: 7 calls fit under $0.031.
        first = llmfanout(*args, *base, "--max-cost", "0.031", cwd=tmp_path, env=env)
        assert first.returncode == 1, first.stderr
        assert "the spend cap was reached (--max-cost 0.031 USD)" in first.stderr
        assert "3 rows were not written" in first.stderr and "--resume" in first.stderr
        assert sorted(rows(output)) == ids[:7]
        assert seen == ids[:7]
        second = llmfanout(*args, *base, "--max-cost", "1", "--resume", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert seen == ids  # the rest, once each
    assert sorted(rows(output)) == ids


def test_max_cost_needs_prices(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "x"}\n')
    done = llmfanout("run", source, "-o", tmp_path / "o.jsonl", "--max-cost", "1", cwd=tmp_path)
    assert done.returncode == 2 and "--max-cost needs --prices" in done.stderr


def test_a_bad_schema_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    source, schema = tmp_path / "in.jsonl", tmp_path / "s.json"
    source.write_text('{"id": 1, "prompt": "x"}\n')
    schema.write_text('{"type": 5}')
    done = llmfanout("run", source, "-o", tmp_path / "o.jsonl", "--schema", schema, cwd=tmp_path)
    assert done.returncode == 2
    assert "--schema:" in done.stderr and "is not a valid JSON Schema" in done.stderr
