"""A Pool behind the executor with a refused key: its first call to each deployment goes
alone, and the calls queued behind it are not sent once the deployment refused its key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from llmfanout import Deployment, ParallelLLMExecutor, Pool
from llmfanout.errors import AuthenticationError, TaskAborted
from llmfanout.providers import OpenAIProvider

from support.fake_llm_server import FakeLLMServer, Fault, serve_fake_llm
from support.helpers import ask

pytestmark = pytest.mark.anyio

CREDENTIAL = "check the API key (OPENAI_API_KEY or api_key=) and what it may access"


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeLLMServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_fake_llm()) for _ in range(2)]


def pool_over(fakes: list[FakeLLMServer]) -> Pool:
    return Pool(
        [
            Deployment(
                name=f"d{i}",
                provider=OpenAIProvider("m", base_url=fake.openai_base_url, api_key=f"key-{i}"),
            )
            for i, fake in enumerate(fakes)
        ]
    )


async def test_a_refused_key_sends_at_most_one_call_per_deployment(
    fakes: list[FakeLLMServer],
) -> None:
    for fake in fakes:
        fake.fault_for = lambda r: Fault.status(401)
    pool = pool_over(fakes)
    async with pool:
        executor = ParallelLLMExecutor(pool, max_concurrency=20)
        results = await executor.execute({f"q{i}": ask(f"q{i}") for i in range(40)})
    assert all(len(fake.requests) <= 1 for fake in fakes)  # counted by the servers
    assert sorted(results) == sorted(f"q{i}" for i in range(40))  # one result each
    assert not any(r.success for r in results.values())
    refused = [r for r in results.values() if isinstance(r.error, AuthenticationError)]
    assert len(refused) >= 1
    aborted = [str(r.error) for r in results.values() if isinstance(r.error, TaskAborted)]
    assert len(aborted) + len(refused) == 40
    # The run's stop reason (given to the tasks it never started) names the credential.
    stopped = [text for text in aborted if "never started: the run stopped" in text]
    assert stopped
    assert all(CREDENTIAL in text for text in stopped)
    # The calls that waited behind a refused first call were not sent, and say why.
    assert all(CREDENTIAL in text for text in aborted)
    assert {s.state for s in pool.stats().values()} == {"refused"}
    assert sum(s.calls for s in pool.stats().values()) == sum(len(f.requests) for f in fakes)


async def test_calls_queued_at_a_refused_deployment_go_on_to_the_other(
    fakes: list[FakeLLMServer],
) -> None:
    bad, good = fakes
    bad.fault_for = lambda r: Fault.status(403)
    pool = pool_over(fakes)
    async with pool:
        executor = ParallelLLMExecutor(pool, max_concurrency=20)
        results = await executor.execute({f"q{i}": ask(f"q{i}") for i in range(40)})
    assert len(bad.requests) == 1
    assert len(good.requests) == 40
    assert all(r.success for r in results.values())
    stats = pool.stats()
    assert (stats["d0"].calls, stats["d0"].state) == (1, "refused")
    assert stats["d1"].calls == 40
