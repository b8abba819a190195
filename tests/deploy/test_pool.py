"""llmfanout.Pool against several real loopback servers: capacity, failover, fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest

from llmfanout import Deployment, LLMTask, ParallelLLMExecutor, Pool
from llmfanout.errors import RateLimitError
from llmfanout.providers import OpenAIProvider
from llmfanout.retry import RetryConfig
from llmfanout.testing import set_testing

from support.fake_llm_server import (
    FakeLLMServer,
    Fault,
    RecordedRequest,
    ServerLimit,
    serve_fake_llm,
)

pytestmark = pytest.mark.anyio

KEYS = ("key-alpha-0123456789", "key-bravo-0123456789", "key-charlie-0123456789")


def deployment(name: str, server: FakeLLMServer, key: str, **options: object) -> Deployment:
    provider = OpenAIProvider("m", base_url=server.openai_base_url, api_key=key)
    return Deployment(name=name, provider=provider, **options)  # type: ignore[arg-type]


async def servers(stack: AsyncExitStack, count: int) -> list[FakeLLMServer]:
    return [await stack.enter_async_context(serve_fake_llm()) for _ in range(count)]


def ask(text: str, **options: object) -> LLMTask:
    return LLMTask(messages=[{"role": "user", "content": text}], **options)  # type: ignore[arg-type]


async def test_capacity_adds_up_with_few_429s() -> None:
    async with AsyncExitStack() as stack:
        fakes = await servers(stack, 3)
        for fake, rpm in zip(fakes, (3000, 3000, 6000), strict=True):
            fake.limit = ServerLimit(requests_per_minute=rpm, burst=1.0)
        pool = Pool([deployment(f"d{i}", f, KEYS[i]) for i, f in enumerate(fakes)])
        async with pool:
            executor = ParallelLLMExecutor(pool, max_concurrency=32, default_retry=RetryConfig())
            results = await executor.execute({f"p{i}": ask(f"p{i}") for i in range(300)})
    assert all(r.success for r in results.values())
    requests = sum(len(f.requests) for f in fakes)
    refused = sum(len(f.limited) for f in fakes)
    assert refused <= 0.05 * requests, (refused, requests)
    # Each deployment carried calls (the throughput is measured in benchmarks/bench_pool.py).
    assert all(len(f.requests) > len(f.limited) for f in fakes)
    names = {r.value.metadata["deployment"] for r in results.values()}
    assert names == {"d0", "d1", "d2"}


async def test_a_killed_deployment_costs_no_row_and_is_probed_back() -> None:
    with set_testing(True):
        async with AsyncExitStack() as stack:
            fakes = await servers(stack, 2)
            # The victim lives in its own task, so that task can kill it and bring it back.
            victims: list[FakeLLMServer] = []
            ready, back, finished = anyio.Event(), anyio.Event(), anyio.Event()

            async def victim_life(port: int = 0) -> None:
                async with serve_fake_llm(port) as victim:
                    victims.append(victim)
                    ready.set()
                    await victim.wait_for_requests(10)
                # Killed mid-run; while it is down the others take every row.
                await fakes[0].wait_for_requests(len(fakes[0].requests) + 30)
                async with serve_fake_llm(victims[0].port) as revived:
                    victims.append(revived)
                    await revived.wait_for_requests(1)  # probed back in
                    back.set()
                    await finished.wait()

            async def rows() -> AsyncIterator[LLMTask]:
                i = 0
                while not back.is_set():
                    yield ask(f"row{i}")
                    i += 1
                    if i > 20000:
                        raise AssertionError("the deployment was never probed back")

            results = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(victim_life)
                await ready.wait()
                pool = Pool(
                    [
                        deployment("a", fakes[0], KEYS[0]),
                        deployment("b", fakes[1], KEYS[1]),
                        deployment("victim", victims[0], KEYS[2]),
                    ],
                    trip_after=1,
                    reopen_after=0.01,
                )
                executor = ParallelLLMExecutor(pool, max_concurrency=8, default_retry=RetryConfig())
                async with executor.stream(rows()) as stream:
                    async for result in stream:
                        results.append(result)
                finished.set()
                await pool.aclose()
    assert results and all(r.success for r in results), [r.error for r in results if not r.success]
    assert victims[1].requests  # probed back in once it returned
    assert all(r.attempts <= 3 for r in results)


async def test_all_deployments_cooling_wait_within_patience() -> None:
    with set_testing(True):
        async with AsyncExitStack() as stack:
            fakes = await servers(stack, 2)
            for fake in fakes:
                fake.add_faults(*[Fault.status(429, retry_after="30")] * 2)
            pool = Pool([deployment(f"d{i}", f, KEYS[i]) for i, f in enumerate(fakes)])
            patient = ParallelLLMExecutor(pool, max_concurrency=1, default_retry=RetryConfig())
            result = await patient.execute_sequential([ask("wait for me")])
            assert result[0].success
            assert result[0].attempts == 5  # four 429s, none spending an attempt, then it
            # A patience shorter than the soonest Retry-After: the call fails, not waits.
            for fake in fakes:
                fake.add_faults(Fault.status(429, retry_after="30"))
            pool2 = Pool([deployment(f"e{i}", f, KEYS[i]) for i, f in enumerate(fakes)])
            hasty = ParallelLLMExecutor(
                pool2, max_concurrency=1, default_retry=RetryConfig(patience=10)
            )
            failed = await hasty.execute_sequential([ask("too hasty")])
            await pool.aclose()
            await pool2.aclose()
    assert not failed[0].success and isinstance(failed[0].error, RateLimitError)
    assert failed[0].attempts == 2  # one on each deployment, then the wait was too long


async def test_attempts_are_counted_across_deployments() -> None:
    with set_testing(True):
        async with AsyncExitStack() as stack:
            fakes = await servers(stack, 3)
            for fake in fakes:
                fake.fault_for = lambda request: Fault.status(500)
            async with Pool([deployment(f"d{i}", f, KEYS[i]) for i, f in enumerate(fakes)]) as pool:
                executor = ParallelLLMExecutor(
                    pool, max_concurrency=1, default_retry=RetryConfig(max_attempts=3)
                )
                results = await executor.execute_sequential([ask("doomed")])
    assert results[0].attempts == 3
    assert sum(len(f.requests) for f in fakes) == 3  # not 3 per deployment
    assert all(len(f.requests) == 1 for f in fakes)  # each attempt on another deployment


def too_long_for(window: int) -> object:
    def fault(request: RecordedRequest) -> Fault | None:
        if len(request.prompt) // 4 > window:
            return Fault.status(
                400,
                message="This model's maximum context length is exceeded",
                error_type="context_length_exceeded",
            )
        return None

    return fault


async def test_a_long_prompt_goes_only_where_it_fits() -> None:
    async with AsyncExitStack() as stack:
        small, large = await servers(stack, 2)
        small.fault_for = too_long_for(50)  # type: ignore[assignment]
        pool = Pool(
            [
                deployment("small", small, KEYS[0], context_window=100),
                deployment("large", large, KEYS[1], context_window=100_000),
            ]
        )
        async with pool:
            executor = ParallelLLMExecutor(pool, max_concurrency=4)
            long = "x" * 2000
            tasks = [ask(f"{long}{i}") for i in range(5)] + [ask(f"short{i}") for i in range(20)]
            results = await executor.execute({str(i): t for i, t in enumerate(tasks)})
    assert all(r.success for r in results.values())
    assert not [r for r in small.requests if len(r.prompt) > 400]
    assert len(large.requests_for(f"{long}0")) == 1
    assert any(r.value.metadata["deployment"] == "small" for r in results.values())


async def test_a_context_window_refusal_falls_back_at_once() -> None:
    async with AsyncExitStack() as stack:
        small, large = await servers(stack, 2)
        small.fault_for = too_long_for(50)  # type: ignore[assignment]
        pool = Pool(
            [
                deployment("small", small, KEYS[0]),  # declares no window: learnt by refusal
                deployment("large", large, KEYS[1], fallback_for=["context_window"]),
            ]
        )
        async with pool:
            executor = ParallelLLMExecutor(pool, default_retry=RetryConfig(max_attempts=1))
            results = await executor.execute_sequential([ask("y" * 1000), ask("short")])
    assert [r.value.metadata["deployment"] for r in results] == ["large", "small"]
    assert results[0].attempts == 1  # a fallback is not a retry
    assert results[0].value.metadata["deployment_attempts"] == {"small": 1, "large": 1}
    assert pool.stats()["small"].fallbacks == 1


async def test_hedging_sends_a_copy_only_past_the_threshold_and_cancels_the_loser() -> None:
    async with AsyncExitStack() as stack:
        slow, fast = await servers(stack, 2)
        slow.fault_for = lambda request: Fault.hang()
        pool = Pool(
            [deployment("slow", slow, KEYS[0], weight=100.0), deployment("fast", fast, KEYS[1])],
            hedge_after=0.05,
        )
        async with pool:
            answer = await pool.complete([{"role": "user", "content": "hedge me"}])  # type: ignore[list-item]
            assert answer.metadata["deployment"] == "fast" and answer.metadata["hedged"]
            await slow.wait_for_no_connections()  # the loser was cancelled: its connection closed
            assert all(s.in_flight == 0 for s in pool._slots)
            assert pool.stats()["fast"].hedges == 1
            slow.fault_for = None
            quick = await pool.complete([{"role": "user", "content": "no hedge"}])  # type: ignore[list-item]
            assert "hedged" not in quick.metadata
            assert sum(s.hedges for s in pool.stats().values()) == 1


async def test_cancelling_a_call_leaves_nothing_in_flight() -> None:
    async with AsyncExitStack() as stack:
        (server,) = await servers(stack, 1)
        other = await stack.enter_async_context(serve_fake_llm())
        server.fault_for = other.fault_for = lambda request: Fault.hang()
        pool = Pool(
            [deployment("a", server, KEYS[0]), deployment("b", other, KEYS[1])], hedge_after=0.01
        )
        async with pool:
            with anyio.move_on_after(0.2) as scope:
                await pool.complete([{"role": "user", "content": "cancel me"}])  # type: ignore[list-item]
            assert scope.cancelled_caught
            await server.wait_for_no_connections()
            await other.wait_for_no_connections()
            assert all(s.in_flight == 0 for s in pool._slots)
