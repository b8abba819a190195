"""``llmfanout run`` against rate-limited and overloaded servers, with default settings.

The issue's scenarios, scaled down (a faster limit, fewer rows) so the suite stays quick;
``benchmarks/bench_pacing.py`` runs them full size. Time is measured on the server's clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.fake_llm_server import FakeLLMServer, Fault, ServerLimit, fake_llm_server_in_thread
from test_cli import assert_each_once, environment, llmfanout, rows, write_prompts

KEY = "sk-test-0123456789abcdef"
WRONG = "sk-wrong-000000000000000"


def run(
    server: FakeLLMServer,
    tmp_path: Path,
    provider: str,
    *extra: str,
    key: str = KEY,
    count: int = 120,
) -> tuple[list[str], Path, str, int]:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    if not source.exists():
        write_prompts(source, count)
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    variable = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    done = llmfanout(
        "run", source, "-o", output, "--provider", provider, "--model", "m",
        "--base-url", base_url, "--concurrency", "64", *extra,
        cwd=tmp_path, env=environment(**{variable: key}),
    )  # fmt: skip
    ids = [json.loads(line)["id"] for line in source.read_text().splitlines()]
    return ids, output, done.stderr, done.returncode


def span(server: FakeLLMServer) -> float:
    times = [r.time for r in server.requests]
    return max(times) - min(times)


@pytest.mark.parametrize(
    ("provider", "limit"),
    [
        # 6,000 requests a minute (100 a second), enforced over one second.
        ("openai", ServerLimit(requests_per_minute=6000, burst=1.0)),
        ("anthropic", ServerLimit(requests_per_minute=6000, burst=1.0)),
        # 60,000 tokens a minute; a row costs about 13 (prompt + max_tokens 10): ~75 a second.
        ("openai", ServerLimit(tokens_per_minute=60_000, burst=1.0)),
        ("anthropic", ServerLimit(tokens_per_minute=60_000, burst=1.0)),
    ],
    ids=["openai-requests", "anthropic-requests", "openai-tokens", "anthropic-tokens"],
)
def test_a_rate_limited_key_loses_no_row_with_default_settings(
    tmp_path: Path, provider: str, limit: ServerLimit
) -> None:
    with fake_llm_server_in_thread() as server:
        server.limit = limit
        server.latency = 0.02
        ids, output, stderr, status = run(
            server, tmp_path, provider, "--params", '{"max_tokens": 10}', count=240
        )
        answered_429 = len(server.limited)
        took = span(server)
        sent = len(server.requests)
    assert status == 0, stderr
    assert all(row["success"] for row in assert_each_once(output, ids))
    assert answered_429 <= 0.05 * sent
    # Never faster than the limit allows (one second's burst, then the rate)...
    per_second = (limit.requests_per_minute or 0) / 60 or (limit.tokens_per_minute or 0) / 60 / 13
    assert took >= (240 - per_second) / per_second * 0.9
    # ...and no stall: far from a minute's wait (bench_pacing.py measures how close).
    assert took < 3 * 240 / per_second


def test_an_overloaded_server_without_headers_loses_no_row(tmp_path: Path) -> None:
    """vLLM-like: no limit headers, 429 without Retry-After once 20 are in flight."""
    with fake_llm_server_in_thread() as server:
        server.overload_after = 20
        server.latency = 0.05
        ids, output, stderr, status = run(server, tmp_path, "openai", count=150)
        refused = len(server.limited)
    assert status == 0, stderr
    assert all(row["success"] for row in assert_each_once(output, ids))
    # Halving on overload, the run settles near what the server takes.
    assert refused < 150


def test_a_wrong_key_stops_the_run_and_resume_sends_each_row_once(tmp_path: Path) -> None:
    with fake_llm_server_in_thread() as server:
        server.fault_for = lambda r: Fault.status(401) if r.api_key == WRONG else None
        ids, output, stderr, status = run(server, tmp_path, "openai", key=WRONG, count=300)
        refused = len(server.requests)
        assert refused == 1  # the first call goes alone: its answer stops the run
        assert status == 1
        assert "stopped early" in stderr and "HTTP 401" in stderr
        assert "check OPENAI_API_KEY" in stderr and "--resume" in stderr
        assert WRONG not in stderr
        assert not output.exists() or rows(output) == []  # nothing sent is recorded
        ids, output, stderr, status = run(server, tmp_path, "openai", "--resume")
        right = [r for r in server.requests if r.api_key == KEY]
    assert status == 0, stderr
    assert sorted(r.prompt for r in right) == sorted(f"say {i}" for i in ids)  # each once
    assert all(row["success"] for row in assert_each_once(output, ids))


def test_max_errors_stops_the_run_and_resume_sends_the_rest(tmp_path: Path) -> None:
    with fake_llm_server_in_thread() as server:
        broken = {"say row-3", "say row-5"}
        server.fault_for = lambda r: Fault.status(400) if r.prompt in broken else None
        server.latency = 0.01
        ids, output, stderr, status = run(server, tmp_path, "openai", "--max-errors", "1")
        assert status == 1
        assert "1 rows failed (--max-errors 1)" in stderr
        written = {row["id"] for row in rows(output)}
        assert len(written) < len(ids)
        # Requests, not prompts: a row may have been sent twice in the first run (retried).
        sent_before = len(server.requests)
        server.fault_for = None
        ids, output, stderr, status = run(server, tmp_path, "openai", "--resume")
        again = [r.prompt for r in server.requests[sent_before:]]
    assert status in (0, 1), stderr  # the failed row stays failed without --retry-failed
    assert sorted(again) == sorted(f"say {i}" for i in ids if i not in written)
    assert_each_once(output, ids)
