"""``llmfanout run`` with the real providers, against the loopback fake LLM server."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from llmfanout._cli._main import main
from llmfanout.testing import set_testing

from support.fake_llm_server import Fault, RecordedRequest, fake_llm_server_in_thread
from test_cli import (
    BAD_INPUT,
    DEADLINE,
    EXAMPLE_IDS,
    EXAMPLES,
    PROMPTS,
    assert_each_once,
    environment,
    llmfanout,
    started,
    write_prompts,
)

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_real_provider_needs_a_model(tmp_path: Path) -> None:
    output, env = tmp_path / "o.jsonl", environment(OPENAI_API_KEY=KEY)
    done = llmfanout("run", PROMPTS, "-o", output, "--provider", "openai", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "--model is not given and input line 1 names no model" in done.stderr


def test_bad_input_is_reported_and_nothing_is_sent(tmp_path: Path, backend: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(BAD_INPUT) + "\n")
    output = tmp_path / "o.jsonl"
    with fake_llm_server_in_thread() as server:
        env = environment(OPENAI_API_KEY=KEY)
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--backend", backend, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert server.requests == []
    assert done.returncode == 2
    name = str(source)
    for number, reason in [
        (2, "not valid JSON"),
        (3, 'no "id"'),
        (4, 'no "prompt" or "messages"'),
        (5, 'duplicate id "a" (first used on line 1)'),
        (6, "messages[0].role is 'robot'"),
    ]:
        assert f"{name}:{number}: {reason}" in done.stderr
    assert f"{name}:1:" not in done.stderr and f"{name}:7:" not in done.stderr
    assert "5 bad input lines; nothing was sent" in done.stderr
    assert not output.exists()


def test_sigint_cancels_the_calls_in_flight(tmp_path: Path, backend: str) -> None:
    """Calls that would hang for a minute (the read timeout) stop at once."""
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 6)
    arrived = threading.Event()

    def hang(request: RecordedRequest) -> Fault:
        if request.index == 2:
            arrived.set()
        return Fault.hang()

    with fake_llm_server_in_thread() as server:
        server.fault_for = hang
        args = [
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--concurrency", "3", "--backend", backend,
        ]  # fmt: skip
        with started(*args, cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY)) as process:
            assert arrived.wait(DEADLINE), "three calls never reached the server"
            interrupted_at = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=DEADLINE)
            assert time.monotonic() - interrupted_at < 10  # not the 60 s read timeout
        assert process.returncode == 130, stderr
        assert "0 rows are safely in" in stderr and "--resume" in stderr
        assert len(server.requests) == 3
        server.fault_for = None
        done = llmfanout(
            *args, "--resume", "--quiet", cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY)
        )
    assert done.returncode == 0, done.stderr
    assert_each_once(output, ids)


def test_openai_against_the_fake_server_with_faults(tmp_path: Path, backend: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 8)
    attempts: Counter[str] = Counter()
    plan: dict[str, Callable[[int], Fault | None]] = {
        "say row-1": lambda n: Fault.status(500) if n == 1 else None,
        "say row-2": lambda n: Fault.status(429, retry_after="0.05") if n == 1 else None,
        "say row-3": lambda n: Fault.drop() if n == 1 else None,
        "say row-4": lambda n: Fault.status(400, message="bad key {api_key}"),
    }

    def faults(request: RecordedRequest) -> Fault | None:
        attempts[request.prompt] += 1
        rule = plan.get(request.prompt)
        return rule(attempts[request.prompt]) if rule else None

    with fake_llm_server_in_thread() as server:
        server.fault_for = faults
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "fake-1",
            "--base-url", server.openai_base_url, "--backend", backend, cwd=tmp_path,
            env=environment(OPENAI_API_KEY=KEY),
        )  # fmt: skip
        assert {r.api_key for r in server.requests} == {KEY}
    assert done.returncode == 1  # row-4 failed
    found = {row["id"]: row for row in assert_each_once(output, ids)}
    assert [found[f"row-{i}"]["attempts"] for i in range(5)] == [1, 2, 2, 2, 1]
    assert found["row-2"]["content"] == "echo: say row-2"
    assert found["row-2"]["model"] == "fake-1"
    assert found["row-2"]["usage"]["total_tokens"] > 0
    assert found["row-4"]["success"] is False
    assert found["row-4"]["error"]["type"] == "BadRequestError"
    assert KEY not in output.read_text() and KEY not in done.stderr


def test_anthropic_against_the_fake_server(tmp_path: Path, backend: str) -> None:
    output = tmp_path / "o.jsonl"
    with fake_llm_server_in_thread() as server:
        done = llmfanout(
            "run", PROMPTS, "-o", output, "--provider", "anthropic",
            "--model", "claude-test", "--base-url", server.anthropic_base_url,
            "--backend", backend, "--quiet", cwd=tmp_path, env=environment(ANTHROPIC_API_KEY=KEY),
        )  # fmt: skip
        paths = {r.path for r in server.requests}
    assert done.returncode == 0, done.stderr
    assert paths == {"/v1/messages"}
    found = {row["id"]: row for row in assert_each_once(output, EXAMPLE_IDS)}
    assert found["capital-fr"]["content"] == (
        "echo: What is the capital of France? Answer in one word."
    )


def test_openai_batch_file_against_the_fake_server(tmp_path: Path) -> None:
    output = tmp_path / "o.jsonl"
    with fake_llm_server_in_thread() as server:
        done = llmfanout(
            "run", EXAMPLES / "openai_batch.jsonl", "-o", output, "--provider", "openai",
            "--base-url", server.openai_base_url, "--quiet", cwd=tmp_path,
            env=environment(OPENAI_API_KEY=KEY),
        )  # fmt: skip
        bodies = {json.dumps(r.json["messages"][-1]["content"]): r.json for r in server.requests}
    assert done.returncode == 0, done.stderr
    # Content parts go out as the batch file gave them.
    parts = [{"type": "text", "text": "Good morning, "}, {"type": "text", "text": "how are you?"}]
    assert json.dumps(parts) in bodies
    assert bodies['"Name three uses of a paperclip."']["max_tokens"] == 100
    assert bodies['"What is 17 times 23?"']["temperature"] == 0
    assert {body["model"] for body in bodies.values()} == {"gpt-4o-mini"}
    assert_each_once(output, ["request-1", "request-2", "request-3"])


def test_resume_retry_failed_sends_failed_rows_again(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 4)
    with fake_llm_server_in_thread() as server:
        server.fault_for = lambda r: Fault.status(400) if r.prompt == "say row-1" else None
        args = [
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--quiet",
        ]  # fmt: skip
        env = environment(OPENAI_API_KEY=KEY)
        assert llmfanout(*args, cwd=tmp_path, env=env).returncode == 1
        assert llmfanout(*args, "--resume", cwd=tmp_path, env=env).returncode == 1  # still failed
        server.fault_for = None
        sent = len(server.requests)
        done = llmfanout(*args, "--resume", "--retry-failed", cwd=tmp_path, env=env)
        assert len(server.requests) == sent + 1  # only the failed row went again
    assert done.returncode == 0, done.stderr
    assert all(row["success"] for row in assert_each_once(output, ids))


def test_timeout_and_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each attempt of a hung row reaches the server and times out; then the row fails.

    In process, with retry waits made instant. The time limit is generous: each attempt
    must reach the server before it runs out, which a busy machine still manages, and
    nothing but the request (no import, no client setup) may be charged to it.
    """
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 3)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with fake_llm_server_in_thread() as server, set_testing(True):
        server.fault_for = lambda r: Fault.hang() if r.prompt == "say row-0" else None
        status = main([
            "run", str(source), "-o", str(output), "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--timeout", "1.5", "--max-attempts", "2",
            "--quiet",
        ])  # fmt: skip
        hung_requests = len(server.requests_for("say row-0"))
    assert status == 1, capsys.readouterr().err
    found = {row["id"]: row for row in assert_each_once(output, ids)}
    hung = found["row-0"]
    assert (hung["success"], hung["attempts"]) == (False, 2)
    assert hung_requests == 2  # every attempt was a request: nothing else used its time
    assert hung["error"]["type"] in ("TimeoutError", "APITimeoutError")
    assert found["row-1"]["success"] and found["row-2"]["success"]


def test_rpm_paces_the_requests(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 60)
    with fake_llm_server_in_thread() as server:
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--rpm", "1200", "--concurrency", "60",
            "--quiet", cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY),
        )  # fmt: skip
        times = sorted(r.time for r in server.requests)
    assert done.returncode == 0, done.stderr
    assert_each_once(output, ids)
    # 20 a second with one second of burst: 20 at once, then one every 50 ms, so the 60th
    # is admitted 39 gaps (1.95 s) after the first. On the server's clock the last arrives
    # after that; the first may arrive late (connecting on a busy machine), which only
    # shortens the span, by well under the 0.75 s of slack. Unpaced, all 60 arrive together.
    assert times[-1] - times[0] >= 1.2
