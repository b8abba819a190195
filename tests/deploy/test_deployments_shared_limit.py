"""``llmfanout run --deployments FILE --shared-limit redis://...`` against a real redis-server.

Each deployment's budget is its own Redis key, and two runs started together share each
deployment's limit: the fake servers count what reached them, on their own clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfanout._deploy._build import build_pool
from llmfanout._deploy._spec import parse_deployments

from support.fake_llm_server import FakeLLMServer, fake_llm_server_in_thread
from support.redis_server import RedisServer, running_redis

sys.path.insert(0, str(Path(__file__).parent.parent / "cli"))
from test_cli import DEADLINE, assert_each_once, environment, write_prompts

redis = pytest.importorskip("redis")

KEYS = {"KEY_EAST": "sk-east-0123456789abcdef", "KEY_WEST": "sk-west-0123456789abcdef"}
RPM = {"east": 240, "west": 120}  # 4 and 2 requests a second, one second of burst


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running_redis() as started:
        yield started


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def most_allowed(rpm: float, fake: FakeLLMServer) -> float:
    """What a budget of ``rpm`` lets through over the span the server saw requests in:
    one second of burst, then ``rpm / 60`` a second; plus half a second's worth and one
    for the way from Redis's clock to the server's (a first request opens a connection).
    Two runs each pacing on its own would send twice that."""
    times = [r.time for r in fake.requests]
    span = max(times) - min(times) if times else 0.0
    return rpm / 60 * (1.5 + span) + 1


def test_two_runs_share_each_deployments_budget_in_redis(
    server: RedisServer, tmp_path: Path, backend: str
) -> None:
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?key={prefix}"
    listing = tmp_path / "d.json"
    with fake_llm_server_in_thread(backend) as east, fake_llm_server_in_thread(backend) as west:
        listing.write_text(
            json.dumps(
                [
                    {"name": "east", "provider": "openai", "model": "m",
                     "base_url": east.openai_base_url, "api_key_env": "KEY_EAST",
                     "rpm": RPM["east"]},
                    {"name": "west", "provider": "openai", "model": "m",
                     "base_url": west.openai_base_url, "api_key_env": "KEY_WEST",
                     "rpm": RPM["west"]},
                ]
            )
        )  # fmt: skip
        runs, ids = [], {}
        for run in ("a", "b"):  # two workers started together, as a cluster's would be
            source, output = tmp_path / f"{run}.jsonl", tmp_path / f"{run}-out.jsonl"
            ids[run] = write_prompts(source, 16, prefix=run)
            argv = [sys.executable, "-m", "llmfanout", "run", str(source), "-o", str(output)]
            argv += ["--deployments", str(listing), "--shared-limit", url, "--backend", backend]
            argv += ["--concurrency", "8", "--quiet"]
            runs.append(
                subprocess.Popen(
                    argv,
                    cwd=tmp_path,
                    env=environment(**KEYS),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        try:
            outcomes = [run.communicate(timeout=DEADLINE) for run in runs]
        finally:
            for run in runs:
                if run.poll() is None:  # timed out: no worker outlives the test
                    run.kill()
                    run.communicate()
        sent = {"east": len(east.requests), "west": len(west.requests)}
        allowed = {"east": most_allowed(RPM["east"], east), "west": most_allowed(RPM["west"], west)}
    for run, (_, stderr) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, stderr
    for run in ("a", "b"):
        found = assert_each_once(tmp_path / f"{run}-out.jsonl", ids[run])
        assert all(row["success"] for row in found)
    assert sent["east"] + sent["west"] == 32  # no row lost, none sent twice
    for name in ("east", "west"):
        assert sent[name] <= allowed[name], (name, sent, allowed)
    # Each deployment's budget is a Redis key of its own, holding the file's limits.
    with redis.Redis.from_url(server.url) as client:
        stored = {k.decode() for k in client.scan_iter(f"llmfanout:limit:{{{prefix}:*")}
        budgets = {name: client.hgetall(f"llmfanout:limit:{{{prefix}:{name}}}") for name in RPM}
        client.delete(*client.scan_iter(f"llmfanout:limit:{{{prefix}*"))
    assert {f"llmfanout:limit:{{{prefix}:east}}", f"llmfanout:limit:{{{prefix}:west}}"} <= stored
    for name, rpm in RPM.items():
        assert float(budgets[name][b"rpm"]) == rpm
    everything = "".join(out + err for out, err in outcomes) + listing.read_text()
    assert not any(key in everything for key in KEYS.values())


@pytest.mark.parametrize(
    ("query", "keys"),
    [
        ("", ["deployment:east", "deployment:west", None]),
        ("?key=team", ["team:east", "team:west", None]),
    ],
)
def test_each_deployment_with_limits_gets_a_budget_key_of_its_own(
    query: str, keys: list[str | None]
) -> None:
    specs = parse_deployments(
        [
            {"name": "east", "provider": "echo", "rpm": 60},
            {"name": "west", "provider": "echo", "tpm": 1000},
            {"name": "free", "provider": "echo"},  # no limits: no budget in Redis
        ]
    )
    pool = build_pool(specs, keys={}, shared_limit=f"redis://:hunter2@127.0.0.1:9/0{query}")
    made = [d.limit for d in pool.deployments]
    assert [getattr(limit, "key", None) for limit in made] == keys
    assert "hunter2" not in repr(made)
