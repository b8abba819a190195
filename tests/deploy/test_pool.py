"""llmfanout.Pool against several real loopback servers: capacity, failover, fallbacks."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    Deployment,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    Pool,
)
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


# -- async with blocks: nested and overlapping ------------------------------------------


class ClosingEcho(EchoProvider):
    """An echo provider that counts its closes (and per-loop releases) and, once closed,
    refuses calls as a closed HTTP provider would."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0
        self.releases = 0

    async def aclose(self) -> None:
        self.closes += 1

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        if self.closes:
            raise RuntimeError("closed")
        return await super().complete(messages, config_overrides)


class LoopBoundEcho(ClosingEcho):
    async def release_loop(self) -> None:
        self.releases += 1


def closing_pool(hedge_after: float | None = None) -> tuple[Pool, list[ClosingEcho]]:
    providers = [ClosingEcho(), ClosingEcho()]
    return Pool(providers, hedge_after=hedge_after), providers


HELLO: list[Any] = [{"role": "user", "content": "hello"}]
HEDGED = pytest.mark.parametrize("hedge_after", [None, 60.0], ids=["plain", "hedged"])


@HEDGED
async def test_an_inner_block_leaves_the_providers_open_for_the_outer(
    hedge_after: float | None,
) -> None:
    pool, providers = closing_pool(hedge_after)
    async with pool:
        async with pool:  # a library's block inside the caller's
            await pool.complete(HELLO)
        assert [p.closes for p in providers] == [0, 0]
        answer = await pool.complete(HELLO)  # the outer block still works
        assert answer.content == "Echo: hello"
    assert [p.closes for p in providers] == [1, 1]


@HEDGED
async def test_overlapping_blocks_in_two_tasks_close_when_the_last_leaves(
    hedge_after: float | None,
) -> None:
    pool, providers = closing_pool(hedge_after)
    a_in, b_in, a_out = anyio.Event(), anyio.Event(), anyio.Event()
    answers: list[str] = []

    async def task_a() -> None:
        async with pool:
            a_in.set()
            await b_in.wait()
        a_out.set()

    async def task_b() -> None:
        await a_in.wait()
        async with pool:
            b_in.set()
            await a_out.wait()
            assert [p.closes for p in providers] == [0, 0]
            answers.append((await pool.complete(HELLO)).content)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task_a)
            tg.start_soon(task_b)
    assert answers == ["Echo: hello"]
    assert [p.closes for p in providers] == [1, 1]


@HEDGED
async def test_an_error_in_the_inner_block_propagates_and_leaves_the_outer_open(
    hedge_after: float | None,
) -> None:
    pool, providers = closing_pool(hedge_after)
    async with pool:
        with pytest.raises(ValueError, match="inner"):
            async with pool:
                raise ValueError("inner")
        assert [p.closes for p in providers] == [0, 0]
        await pool.complete(HELLO)
        with pytest.raises(ValueError, match="outer"):
            async with pool:
                raise ValueError("outer")
    assert [p.closes for p in providers] == [1, 1]


@HEDGED
async def test_the_last_block_left_by_cancellation_still_closes(
    hedge_after: float | None,
) -> None:
    pool, providers = closing_pool(hedge_after)
    with anyio.CancelScope() as scope:
        async with pool, pool:
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert [p.closes for p in providers] == [1, 1]


@pytest.mark.parametrize("hedge_after", [None, 60.0])
def test_a_loops_last_block_releases_only_its_loop_while_another_loop_holds_one(
    hedge_after: float | None,
) -> None:
    bound, plain = LoopBoundEcho(), ClosingEcho()
    pool = Pool([bound, plain], hedge_after=hedge_after)
    entered, leave = threading.Event(), threading.Event()

    async def hold() -> None:
        async with pool:
            entered.set()
            await anyio.to_thread.run_sync(leave.wait)

    async def enter_and_leave() -> None:
        async with pool:
            await pool.complete(HELLO)

    holder = threading.Thread(target=anyio.run, args=(hold,))
    holder.start()
    try:
        assert entered.wait(10)
        anyio.run(enter_and_leave, backend="trio")
        # This loop's share released; nothing closed for good under the other loop's block.
        assert (bound.releases, bound.closes, plain.closes) == (1, 0, 0)
    finally:
        leave.set()
        holder.join(10)
    assert (bound.releases, bound.closes, plain.closes) == (1, 1, 1)


@given(
    hedged=st.booleans(),
    steps=st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=30),
)
async def test_providers_close_once_after_the_last_of_any_nesting_of_blocks(
    hedged: bool, steps: list[tuple[int, bool]]
) -> None:
    """Three tasks each nest blocks as the steps say (True: enter, False: leave the
    innermost), interleaved across tasks, one block at least open throughout; then each
    task leaves what it holds."""
    pool, providers = closing_pool(60.0 if hedged else None)
    depth = [0, 0, 0]
    commands = [anyio.create_memory_object_stream[bool | None](1) for _ in depth]
    done = anyio.create_memory_object_stream[None](1)

    async def worker(index: int) -> None:
        blocks: list[AsyncExitStack] = []
        async with commands[index][1] as receive, done[0].clone() as ack:
            async for enter in receive:
                if enter:
                    blocks.append(AsyncExitStack())
                    await blocks[-1].enter_async_context(pool)
                else:
                    await blocks.pop().aclose()
                if blocks:
                    await pool.complete(HELLO)  # usable in every block still open
                await ack.send(None)

    async def step(index: int, enter: bool) -> None:
        await commands[index][0].send(enter)
        await done[1].receive()
        depth[index] += 1 if enter else -1
        expected = 0 if any(depth) else 1
        assert [p.closes for p in providers] == [expected, expected]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for index in range(len(depth)):
                tg.start_soon(worker, index)
            await step(0, True)
            for index, enter in steps:
                # (A closed pool's providers stay closed: the last leave comes at the end.)
                if enter or (depth[index] and sum(depth) > 1):
                    await step(index, enter)
            for index in range(len(depth)):
                while depth[index]:
                    await step(index, False)
                await commands[index][0].aclose()
            done[0].close()
        done[1].close()
    assert [p.closes for p in providers] == [1, 1]
