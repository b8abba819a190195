"""The executor with a cache, against a loopback server that counts requests."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmfanout import LLMTask, OpenAIProvider, ParallelLLMExecutor, RetryConfig, summarize
from llmfanout.cache import SQLiteCache
from llmfanout.testing import set_testing

from support.fake_llm_server import FakeLLMServer, Fault, serve_fake_llm

pytestmark = pytest.mark.anyio

KEY = "sk-cache-test-key-0123456789"


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def tasks(**changes: Any) -> dict[str, LLMTask]:
    """Ten rows; ``changes`` maps a tag to the overrides (or messages) it gets instead."""
    out = {}
    for i in range(10):
        tag = f"r{i}"
        overrides: dict[str, Any] = {"temperature": 0.2, "seed": 7}
        messages: list[Any] = [{"role": "user", "content": f"question {i}"}]
        change = changes.get(tag, {})
        messages = change.pop("messages", messages)
        out[tag] = LLMTask(messages, {**overrides, **change})
    return out


async def run(
    server: FakeLLMServer, cache: SQLiteCache, batch: dict[str, LLMTask], **options: Any
) -> dict[str, Any]:
    async with OpenAIProvider("m-1", base_url=server.openai_base_url, api_key=KEY) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=8, cache=cache, **options)
        return await executor.execute(batch)


async def test_a_second_run_sends_nothing_and_answers_the_same(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    first = await run(server, cache, tasks())
    assert len(server.requests) == 10
    assert {r.value.metadata["cached"] for r in first.values()} == {False}
    second = await run(server, SQLiteCache(tmp_path / "c.db"), tasks())
    assert len(server.requests) == 10
    for tag, result in second.items():
        assert result.value.metadata["cached"] is True
        assert result.attempts == 0
        before = first[tag].value
        assert (result.value.content, result.value.usage, result.value.finish_reason) == (
            before.content,
            before.usage,
            before.finish_reason,
        )
    summary = summarize(second, prices={"m-1": {"input": 1.0, "output": 2.0}})
    assert (summary.cache_hits, summary.cache_misses, summary.total_tokens) == (10, 0, 0)
    assert summary.cost_usd == 0
    assert summary.cache_saved_usd is not None and summary.cache_saved_usd > 0
    assert "cache: 10 hits, 0 misses, saved $" in str(summary)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.9},
        {"seed": 8},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"messages": [{"role": "user", "content": "question 3, edited"}]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
    ],
)
async def test_changing_one_row_sends_that_row(
    server: FakeLLMServer, tmp_path: Path, change: dict[str, Any]
) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    await run(server, cache, tasks())
    results = await run(server, cache, tasks(r3=dict(change)))
    assert len(server.requests) == 11
    assert [t for t, r in results.items() if not r.value.metadata["cached"]] == ["r3"]


async def test_key_order_and_reading_options_never_split(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    await run(
        server,
        cache,
        {"a": LLMTask([{"role": "user", "content": "hi"}], {"temperature": 1, "seed": 2})},
    )
    seen: list[str] = []
    again = {
        "a": LLMTask(
            [{"content": "hi", "role": "user"}],
            {"seed": 2, "temperature": 1.0, "stream": True, "on_text": seen.append},
        )
    }
    result = await run(server, cache, again)
    assert len(server.requests) == 1
    assert result["a"].value.metadata["cached"] is True


async def test_failures_and_cut_streams_are_never_cached(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    server.add_faults(Fault.status(500), Fault.stream_cut(2))
    one = {"a": LLMTask([{"role": "user", "content": "x"}])}
    streamed = {"b": LLMTask([{"role": "user", "content": "y"}], {"stream": True})}
    assert not (await run(server, cache, one))["a"].success
    assert not (await run(server, cache, streamed))["b"].success
    assert cache.stats().entries == 0
    assert (await run(server, cache, one))["a"].success  # sent again, and now it is good
    assert (await run(server, cache, streamed))["b"].success
    assert len(server.requests) == 4
    assert cache.stats().entries == 2


async def test_a_rejected_answer_is_not_cached(server: FakeLLMServer, tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    retry = RetryConfig(max_attempts=2, retry_on_result=lambda response: True)
    with set_testing(True):
        results = await run(
            server, cache, {"a": LLMTask([{"role": "user", "content": "hi"}])}, default_retry=retry
        )
    assert results["a"].attempts == 2  # the last answer is handed back, still rejected
    assert cache.stats().entries == 0


async def test_an_opted_out_task_is_neither_read_nor_stored(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    task = LLMTask([{"role": "user", "content": "private"}], cache=False)
    await run(server, cache, {"a": task})
    await run(server, cache, {"a": task})
    assert len(server.requests) == 2
    assert cache.stats().entries == 0
    with pytest.raises(TypeError, match="cache"):
        LLMTask([{"role": "user", "content": "hi"}], cache="no")  # type: ignore[arg-type]


async def test_fifty_identical_calls_in_flight_send_one(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    gate = anyio.Event()
    server.add_faults(Fault.ok(gate=gate))
    cache = SQLiteCache(tmp_path / "c.db")
    same = {f"t{i}": LLMTask([{"role": "user", "content": "same"}]) for i in range(50)}
    async with OpenAIProvider("m-1", base_url=server.openai_base_url, api_key=KEY) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=50, cache=cache)
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def go() -> None:
                results.update(await executor.execute(same))

            tg.start_soon(go)
            await server.wait_for_requests(1)
            gate.set()
    assert len(server.requests) == 1
    assert all(r.success for r in results.values())
    assert sorted(r.value.metadata["cached"] for r in results.values()) == [False] + [True] * 49


async def test_cancelling_one_waiter_never_cancels_the_others_call(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    gate = anyio.Event()
    server.add_faults(Fault.ok("shared", gate=gate))
    cache = SQLiteCache(tmp_path / "c.db")
    task = {"a": LLMTask([{"role": "user", "content": "same"}])}
    async with OpenAIProvider("m-1", base_url=server.openai_base_url, api_key=KEY) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=4, cache=cache)
        got: list[str] = []

        async def waiter() -> None:
            got.append((await executor.execute(task))["a"].value.content)

        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as leader:
                # The first caller leads the flight; the others join while it waits.
                async with anyio.create_task_group() as first:
                    first.start_soon(waiter)
                    await server.wait_for_requests(1)
                    for _ in range(3):
                        tg.start_soon(waiter)
                    await anyio.wait_all_tasks_blocked()
                    leader.cancel()
                    gate.set()
    assert got == ["shared"] * 3 or got == ["shared"] * 4
    assert len(server.requests) == 1


async def test_cancelling_every_waiter_cancels_the_call(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.add_faults(Fault.hang())
    cache = SQLiteCache(tmp_path / "c.db")
    task = {f"t{i}": LLMTask([{"role": "user", "content": "same"}]) for i in range(3)}
    async with OpenAIProvider("m-1", base_url=server.openai_base_url, api_key=KEY) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=3, cache=cache)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(executor.execute, task)
                await server.wait_for_requests(1)
                scope.cancel()
        assert scope.cancelled_caught
    await server.wait_for_no_connections()
    assert cache.stats().entries == 0


async def test_the_api_key_is_nowhere_in_the_file(server: FakeLLMServer, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    await run(server, SQLiteCache(path), tasks())
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for file in tmp_path.iterdir():
        assert KEY.encode() not in file.read_bytes()


async def test_a_failing_store_never_fails_a_call(server: FakeLLMServer, tmp_path: Path) -> None:
    class Broken:
        async def get(self, key: str) -> None:
            raise OSError("disk gone")

        async def put(self, key: str, response: object) -> None:
            raise OSError("disk gone")

    results = await run(server, Broken(), tasks())  # type: ignore[arg-type]
    assert all(r.success for r in results.values())


def test_a_cache_without_get_and_put_is_refused() -> None:
    from llmfanout import EchoProvider

    with pytest.raises(TypeError, match="cache"):
        ParallelLLMExecutor(EchoProvider(), cache="c.db")  # type: ignore[arg-type]
