"""RedisCache on a real redis-server: one cache for two processes, ttl, no password shown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from llmfanout import EchoProvider, LLMResponse, LLMTask, ParallelLLMExecutor
from llmfanout.cache import RedisCache

from support.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


READER = textwrap.dedent(
    """
    import sys, anyio
    from llmfanout import EchoProvider, LLMTask, ParallelLLMExecutor
    from llmfanout.cache import RedisCache

    async def main():
        provider = EchoProvider(record_calls=False)
        executor = ParallelLLMExecutor(provider, cache=RedisCache(sys.argv[1], namespace="t"))
        tasks = {str(i): LLMTask([{"role": "user", "content": f"q{i}"}]) for i in range(20)}
        results = await executor.execute(tasks)
        hits = sum(r.value.metadata["cached"] for r in results.values())
        print(provider.call_count, hits)

    anyio.run(main, backend=sys.argv[2])
    """
)


async def test_two_processes_share_one_cache(redis: RedisServer, anyio_backend: str) -> None:
    cache = RedisCache(redis.url, namespace="t")
    cache.clear()
    provider = EchoProvider(record_calls=False)
    executor = ParallelLLMExecutor(provider, cache=cache)
    first = {str(i): LLMTask([{"role": "user", "content": f"q{i}"}]) for i in range(10)}
    await executor.execute(first)
    assert provider.call_count == 10
    other = subprocess.run(
        [sys.executable, "-c", READER, redis.url, anyio_backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert other.stdout.split() == ["10", "10"]  # rows 10-19 sent, rows 0-9 from the cache
    assert cache.clear() == 20


async def test_ttl_and_namespaces(redis: RedisServer) -> None:
    short = RedisCache(redis.url, ttl=30, namespace="ttl")
    await short.put("k", LLMResponse("x"))
    import redis as client

    with client.Redis.from_url(redis.url) as r:
        assert 0 < r.pttl("llmfanout:cache:ttl:k") <= 30_000
    hit = await short.get("k")
    assert hit is not None and hit.metadata["cached"] is True
    assert await RedisCache(redis.url, namespace="other").get("k") is None


def test_the_password_is_never_shown() -> None:
    cache = RedisCache("redis://:hunter2secret@127.0.0.1:1/0")
    assert "hunter2secret" not in repr(cache)
    with pytest.raises(ValueError, match="Redis URL") as error:
        RedisCache("http://:hunter2secret@example.com")
    assert "hunter2secret" not in str(error.value)


async def test_an_unreachable_redis_makes_misses_not_failures() -> None:
    cache = RedisCache("redis://:hunter2secret@127.0.0.1:1/0")
    executor = ParallelLLMExecutor(EchoProvider(), cache=cache)
    results = await executor.execute({"a": LLMTask([{"role": "user", "content": "q"}])})
    assert results["a"].success
    with pytest.raises(ConnectionError) as error:
        await cache.get("k")
    assert "hunter2secret" not in str(error.value)
