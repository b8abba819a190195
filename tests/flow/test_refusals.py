"""Refusals through the executor against the loopback fake server, both backends: a
server overloaded past N in flight (the figure settles near N) and one refusing a share
of requests at random whatever the load (the figure does not collapse). Judged on the
calls in flight each request found at the server (``server.in_flight_seen``)."""

from __future__ import annotations

import statistics

import pytest

from llmfanout import OpenAIProvider, ParallelLLMExecutor, RetryConfig
from llmfanout.testing import set_testing

from support.fake_llm_server import FakeLLMServer, serve_fake_llm
from support.helpers import ask

pytestmark = pytest.mark.anyio

CAP = 32
RETRY = RetryConfig(max_attempts=3)  # 429/503 with Retry-After: retried within patience


async def run(server: FakeLLMServer, rows: int, *, pacing: bool) -> list[int]:
    server.latency, server.latency_spread = 0.02, 0.2
    tasks = {f"r{i}": ask(f"r{i}") for i in range(rows)}
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=CAP, default_retry=RETRY, pacing=pacing
        )
        with set_testing(True):  # the Retry-After waits are counted, not slept
            results = await executor.execute(tasks)
    assert all(r.success for r in results.values())
    return server.in_flight_seen


@pytest.mark.parametrize("pacing", [True, False])
async def test_a_server_overloaded_past_n_sees_about_n_in_flight(pacing: bool) -> None:
    async with serve_fake_llm() as server:
        server.overload_after = 6
        seen = await run(server, 300, pacing=pacing)
    settled = seen[len(seen) // 2 :]  # once the first cuts are made
    assert 3 <= statistics.fmean(settled) <= 6 * 1.5
    assert len(server.limited) < len(server.requests) / 2


@pytest.mark.parametrize("pacing", [True, False])
async def test_random_refusals_do_not_collapse_the_calls_in_flight(pacing: bool) -> None:
    async with serve_fake_llm() as server:
        server.refuse_at_random(share_429=0.3, share_503=0.15, seed=3)
        seen = await run(server, 300, pacing=pacing)
    # Plain AIMD fell to about 2-4 here (a cut every round, one call back per round);
    # judged cuts stop once the share refused at smaller figures is no lower.
    assert statistics.fmean(seen) >= CAP / 4


async def test_a_bare_refusal_pauses_the_pacer_only_while_everything_is_refused() -> None:
    from llmfanout import RateLimitBudget, RateLimitInfo
    from llmfanout._flow._governor import Governor
    from llmfanout.errors import RateLimitError

    def refusal(info: RateLimitInfo | None = None) -> RateLimitError:
        return RateLimitError("slow down", status_code=429, retry_after=1.0, rate_limits=info)

    governor = Governor(object(), 8, pacing=True, adaptive=True)
    assert governor.learn(None, refusal(), cooldown=1.0)  # nothing answered yet: shared
    governor.pause.success()  # an answer (the executor's fast path tells it so)
    assert not governor.learn(None, refusal(), cooldown=1.0)  # one refusal among answers
    budget = RateLimitBudget(limit=60, remaining=0, reset=1.0)
    assert governor.learn(None, refusal(RateLimitInfo(requests=budget)), cooldown=1.0)
