"""SQLiteCache on real files: answers back whole, ttl, max_bytes, kill -9, two processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import llmfanout._cache._sqlite as sqlite_module
from llmfanout import LLMResponse, ToolCall
from llmfanout._cache._codec import encode
from llmfanout.cache import Cache, SQLiteCache

pytestmark = pytest.mark.anyio

ANSWER = LLMResponse(
    "the answer",
    model="m-1",
    finish_reason="tool_calls",
    usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    metadata={"raw": {"id": "x", "choices": []}, "request_id": "r-1", "cached": False},
    tool_calls=[ToolCall("c1", "lookup", '{"q": 1}')],
)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


async def test_an_answer_comes_back_whole_and_marked(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    assert isinstance(cache, Cache)
    assert await cache.get("k") is None
    await cache.put("k", ANSWER)
    hit = await cache.get("k")
    assert hit is not None
    assert (hit.content, hit.model, hit.finish_reason, hit.usage, hit.tool_calls) == (
        ANSWER.content,
        ANSWER.model,
        ANSWER.finish_reason,
        ANSWER.usage,
        ANSWER.tool_calls,
    )
    assert hit.metadata == {**ANSWER.metadata, "cached": True}
    # Another object on the same file (another process, later) finds it too.
    assert await SQLiteCache(tmp_path / "c.db").get("k") == hit


@given(st.text(), st.text(max_size=5), st.dictionaries(st.text(max_size=5), st.integers()))
def test_any_text_round_trips(content: str, model: str, usage: dict[str, int]) -> None:
    from llmfanout._cache._codec import decode, encode

    response = LLMResponse(content, model=model, usage=usage or None)
    back = decode(encode(response))
    assert (back.content, back.model, back.usage) == (content, model, usage or None)


@given(st.lists(st.tuples(st.text(min_size=1), st.none() | st.text(min_size=1)), max_size=3))
def test_tool_calls_and_their_signatures_round_trip(calls: list[tuple[str, str | None]]) -> None:
    from llmfanout._cache._codec import decode, encode

    tool_calls = tuple(ToolCall(f"c{i}", name, "{}", sig) for i, (name, sig) in enumerate(calls))
    back = decode(encode(LLMResponse("", tool_calls=tool_calls)))
    assert back.tool_calls == tool_calls  # a Gemini signature survives a cache hit


async def test_many_lookups_at_once_share_thread_hops(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    hops = 0
    read = cache._read

    def counting(keys: list[str]) -> list[bytes | None]:
        nonlocal hops
        hops += 1
        return read(keys)

    cache._reads._run = counting  # type: ignore[assignment]
    for i in range(0, 200, 2):
        await cache.put(str(i), LLMResponse(str(i)))
    found: dict[int, str | None] = {}

    async def get(i: int) -> None:
        hit = await cache.get(str(i))
        found[i] = None if hit is None else hit.content

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(get, i)
    assert found == {i: (str(i) if i % 2 == 0 else None) for i in range(200)}
    assert hops <= 3


async def test_cancelled_lookups_leave_no_one_waiting(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    await cache.put("k", ANSWER)
    results: list[str] = []

    async def get() -> None:
        hit = await cache.get("k")
        assert hit is not None
        results.append(hit.content)

    for _ in range(5):
        async with anyio.create_task_group() as tg:
            for i in range(30):
                if i % 3 == 0:
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        await get()
                else:
                    tg.start_soon(get)
            cancelled = anyio.CancelScope()
            tg.start_soon(_cancel_soon, cancelled)
    assert results == ["the answer"] * 100
    assert await cache.get("k") is not None


async def _cancel_soon(scope: anyio.CancelScope) -> None:
    scope.cancel()


async def test_ttl_expires_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(sqlite_module.time, "time", lambda: now[0])
    cache = SQLiteCache(tmp_path / "c.db", ttl=60)
    await cache.put("k", ANSWER)
    now[0] += 59
    assert await cache.get("k") is not None
    now[0] += 2
    assert await cache.get("k") is None
    assert await SQLiteCache(tmp_path / "c.db").get("k") is not None  # no ttl: still there


async def test_max_bytes_evicts_the_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sqlite_module.time, "time", lambda: now[0])
    one = len(encode(LLMResponse("x" * 100, model="m")))
    cache = SQLiteCache(tmp_path / "c.db", max_bytes=3 * one)
    for key in "abc":
        now[0] += 1
        await cache.put(key, LLMResponse("x" * 100, model="m"))
    now[0] += 1
    assert await cache.get("a") is not None  # a is now the most recently used
    now[0] += 1
    await cache.put("d", LLMResponse("x" * 100, model="m"))
    assert [await cache.get(k) is not None for k in "abcd"] == [True, False, True, True]
    stats = cache.stats()
    assert stats.entries == 3
    assert stats.answer_bytes <= 3 * one


def test_stats_and_clear(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    anyio.run(cache.put, "k", ANSWER)
    assert cache.stats().entries == 1
    assert cache.clear() == 1
    stats = cache.stats()
    assert (stats.entries, stats.answer_bytes, stats.oldest) == (0, 0, None)


def test_a_file_that_is_not_a_cache_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some text that is long enough" * 50)
    with pytest.raises(ValueError, match=r"notes\.txt"):
        SQLiteCache(path)
    with pytest.raises(ValueError, match="ttl"):
        SQLiteCache(tmp_path / "c.db", ttl=0)
    with pytest.raises(ValueError, match="max_bytes"):
        SQLiteCache(tmp_path / "c.db", max_bytes=-1)


WRITER = textwrap.dedent(
    """
    import sys, anyio
    from llmfanout import LLMResponse
    from llmfanout.cache import SQLiteCache

    async def main(path, prefix, count):
        cache = SQLiteCache(path)
        async def put(i):
            await cache.put(f"{prefix}{i}", LLMResponse(f"{prefix} answer {i}" * 20))
        for start in range(0, count, 100):
            async with anyio.create_task_group() as tg:
                for i in range(start, min(start + 100, count)):
                    tg.start_soon(put, i)
            if start == 0:
                print("writing", flush=True)

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), backend=sys.argv[4])
    """
)


def writer(path: Path, prefix: str, count: int, backend: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), prefix, str(count), backend],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_processes_fill_one_file(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "shared.db"
    SQLiteCache(path).close()
    first, second = writer(path, "a", 1000, backend), writer(path, "b", 1000, backend)
    for process in (first, second):
        process.communicate(timeout=120)
        assert process.returncode == 0
    assert integrity(path) == "ok"
    cache = SQLiteCache(path)
    assert cache.stats().entries == 2000

    async def check() -> None:
        for prefix in "ab":
            for i in (0, 499, 999):
                hit = await cache.get(f"{prefix}{i}")
                assert hit is not None
                assert hit.content == f"{prefix} answer {i}" * 20

    anyio.run(check, backend=backend)


def test_kill_9_while_writing_leaves_a_usable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    process = writer(path, "k", 10**6, "asyncio")
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "writing"  # mid-run, transactions going
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert integrity(path) == "ok"
    cache = SQLiteCache(path)
    before = cache.stats().entries
    assert before >= 100

    async def use() -> None:
        hit = await cache.get("k0")
        assert hit is not None
        await cache.put("after", LLMResponse("fine"))
        again = await cache.get("after")
        assert again is not None

    anyio.run(use)
    assert cache.stats().entries == before + 1
    assert integrity(path) == "ok"
