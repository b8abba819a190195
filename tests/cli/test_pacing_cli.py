"""``llmfanout run`` against rate-limited and overloaded servers, with default settings.

The issue's scenarios, scaled down (a faster limit, fewer rows) so the suite stays quick;
``benchmarks/bench_pacing.py`` runs them full size. Time is measured on the server's clock.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from llmfanout import EchoProvider, Pool
from llmfanout._cli._main import build_parser
from llmfanout._cli._run import _check_options, _spec
from llmfanout._rows._input_rows import parse_rows
from llmfanout._rows._job import Job
from llmfanout._rows._spec import JobSpec
from llmfanout.testing import set_testing

from support.fake_llm_server import (
    FakeLLMServer,
    Fault,
    ServerLimit,
    fake_llm_server_in_thread,
    serve_fake_llm,
)
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
    ("provider", "limit", "flags"),
    [
        # 6,000 requests a minute (100 a second), enforced over one second.
        ("openai", ServerLimit(requests_per_minute=6000, burst=1.0), ()),
        ("anthropic", ServerLimit(requests_per_minute=6000, burst=1.0), ()),
        # 60,000 tokens a minute; a row costs about 13 (prompt + max_tokens 10): ~75 a second.
        ("openai", ServerLimit(tokens_per_minute=60_000, burst=1.0), ()),
        ("anthropic", ServerLimit(tokens_per_minute=60_000, burst=1.0), ()),
        # --no-adaptive leaves pacing by the advertised limits on.
        ("openai", ServerLimit(requests_per_minute=6000, burst=1.0), ("--no-adaptive",)),
    ],
    ids=[
        "openai-requests",
        "anthropic-requests",
        "openai-tokens",
        "anthropic-tokens",
        "openai-requests-no-adaptive",
    ],
)
def test_a_rate_limited_key_loses_no_row_with_default_settings(
    tmp_path: Path, provider: str, limit: ServerLimit, flags: tuple[str, ...]
) -> None:
    with fake_llm_server_in_thread() as server:
        server.limit = limit
        server.latency = 0.02
        ids, output, stderr, status = run(
            server, tmp_path, provider, "--params", '{"max_tokens": 10}', *flags, count=240
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


# -- --no-pacing and --no-adaptive: two separate switches -----------------------------------

FLAGS = {  # the flags given: (pacing, adaptive)
    (): (True, True),
    ("--no-pacing",): (False, True),
    ("--no-adaptive",): (True, False),
    ("--no-pacing", "--no-adaptive"): (False, False),
}


def parsed_spec(tmp_path: Path, *extra: str) -> JobSpec:
    """The JobSpec ``llmfanout run`` builds from these flags (in process, nothing sent)."""
    source = tmp_path / "in.jsonl"
    write_prompts(source, 1)
    args = build_parser().parse_args(["run", str(source), "-o", str(tmp_path / "o.jsonl"), *extra])
    _check_options(args)
    return _spec(args)


@pytest.mark.parametrize("flags", list(FLAGS), ids=lambda f: " ".join(f) or "defaults")
def test_each_flag_turns_off_its_own_switch_only(tmp_path: Path, flags: tuple[str, ...]) -> None:
    pacing, adaptive = FLAGS[flags]
    spec = parsed_spec(tmp_path, *flags)
    assert (spec.pacing, spec.adaptive) == (pacing, adaptive)
    governor = Job(spec).executor()._governor
    if pacing or adaptive:
        assert governor is not None
        assert (governor.pacing, governor.adaptive) == (pacing, adaptive)
    else:
        assert governor is None  # nothing but --rpm/--tpm holds calls back


@pytest.mark.parametrize("flags", list(FLAGS), ids=lambda f: " ".join(f) or "defaults")
def test_each_deployment_gets_the_same_switches(tmp_path: Path, flags: tuple[str, ...]) -> None:
    pacing, adaptive = FLAGS[flags]
    listing = tmp_path / "d.json"
    listing.write_text(
        json.dumps([{"name": "east", "provider": "echo"}, {"name": "west", "provider": "echo"}])
    )
    spec = parsed_spec(tmp_path, "--deployments", str(listing), *flags)
    pool = Job(spec).provider
    assert isinstance(pool, Pool)
    governors = [slot.governor for slot in pool._slots]
    assert [(g.pacing, g.adaptive) for g in governors] == [(pacing, adaptive)] * 2


@pytest.mark.parametrize("field", ["pacing", "adaptive"])
def test_a_pool_takes_only_booleans_for_the_switches(field: str) -> None:
    with pytest.raises(TypeError, match=f"Pool: {field} is 'no'; give True or False"):
        Pool([EchoProvider()], **{field: "no"})


@pytest.mark.anyio
@pytest.mark.parametrize("adaptive", [True, False])
async def test_without_pacing_aimd_still_backs_off_on_429(
    monkeypatch: pytest.MonkeyPatch, adaptive: bool
) -> None:
    """A server with no limit headers, 429 without Retry-After past 6 in flight:
    ``--no-pacing`` alone still cuts the figure; with ``--no-adaptive`` too it stays (and
    rows may run out of patience hammering it)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    async with serve_fake_llm() as server:
        server.overload_after = 6
        server.latency, server.latency_spread = 0.02, 0.2
        spec = JobSpec(
            provider="openai",
            model="m",
            base_url=server.openai_base_url,
            concurrency=32,
            pacing=False,
            adaptive=adaptive,
        )
        job = Job(spec)
        executor = job.executor()
        inputs = [{"id": f"r{i}", "prompt": f"say r{i}"} for i in range(200)]
        # Given an executor, the job leaves its provider open for the caller to close.
        async with job.provider:  # type: ignore[attr-defined]
            with set_testing(True):  # the retries' backoff is counted, not slept
                async with job.run(parse_rows(inputs), executor=executor) as out:
                    done = [row async for row in out]
        seen = server.in_flight_seen
    assert len(done) == 200
    settled = statistics.fmean(seen[len(seen) // 2 :])
    if adaptive:
        assert all(row["success"] for row in done)
        assert executor.concurrency < 32
        assert settled <= 6 * 1.5
    else:
        assert executor.concurrency == 32
        assert settled > 6 * 1.5
