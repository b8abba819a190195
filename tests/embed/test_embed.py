"""aembed and embed: one vector per input, in order, in few requests, over the real wire."""

from __future__ import annotations

import array
from collections.abc import AsyncIterator

import anyio
import pytest

from llmfanout import (
    EchoProvider,
    EmbeddingCaps,
    EmbeddingTask,
    ErrorResponse,
    GeminiProvider,
    OpenAIProvider,
    RetryConfig,
    aembed,
    embed,
)
from llmfanout.errors import BadRequestError, RateLimitError
from llmfanout.providers._echo import echo_vector
from llmfanout.testing import set_testing

from support.fake_gemini_server import FakeGemini, Status, fake_vector, serve_gemini
from support.fake_gemini_server import tokens as tokens_of

pytestmark = pytest.mark.anyio
KEY = "sk-test-embedding-key-0123456789"
TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(1000)]


@pytest.fixture
async def server() -> AsyncIterator[FakeGemini]:
    async with serve_gemini() as fake:
        yield fake


@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_openai_vectors_come_back_in_input_order(server: FakeGemini, encoding: str) -> None:
    async with OpenAIProvider(
        "text-embedding-3-small", base_url=server.openai_url, api_key=KEY
    ) as provider:
        provider.embedding_encoding = encoding  # type: ignore[misc]
        result = await aembed(provider, EmbeddingTask(TEXTS, dimensions=6), max_inputs=128)
    assert result.success
    assert [list(v) for v in result.vectors] == [fake_vector(t, 6) for t in TEXTS]  # type: ignore[arg-type]
    kind = array.array if encoding == "base64" else list
    assert all(isinstance(v, kind) for v in result.vectors)
    assert result.requests == len(server.requests) == 8  # ceil(1000 / 128)
    assert result.usage["total_tokens"] == sum(len(t) // 4 + 1 for t in TEXTS)
    body = server.requests[-1].body
    assert body["encoding_format"] == encoding
    assert body["dimensions"] == 6
    assert body["model"] == "text-embedding-3-small"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_a_request_refused_as_too_large_is_split(server: FakeGemini) -> None:
    server.max_tokens = 1500  # the server's cap, lower than the provider thinks
    async with OpenAIProvider("m", base_url=server.openai_url, api_key=KEY) as provider:
        result = await aembed(provider, TEXTS, max_concurrency=1)
    assert result.success
    assert [list(v) for v in result.vectors] == [fake_vector(t) for t in TEXTS]  # type: ignore[arg-type]
    sizes = [sum(len(t) // 4 + 1 for t in r.body["input"]) for r in server.requests]
    refused = [size for size in sizes if size > 1500]
    # The refused request and its halves over the cap are refused; the caps are halved
    # each time, so the requests packed after them fit.
    assert 1 <= len(refused) <= 7
    assert result.requests == len(sizes) - len(refused)
    assert sizes[len(refused) * 2 :] and all(size <= 1500 for size in sizes[len(refused) * 2 :])


async def test_gemini_batch_embeds_at_most_100_per_request(server: FakeGemini) -> None:
    async with GeminiProvider(
        "gemini-embedding-001", base_url=server.gemini_url, api_key=KEY
    ) as provider:
        provider.embedding_task_type = "RETRIEVAL_DOCUMENT"
        result = await aembed(provider, TEXTS[:250])
    assert result.success
    assert [list(v) for v in result.vectors] == [fake_vector(t) for t in TEXTS[:250]]  # type: ignore[arg-type]
    assert sorted(len(r.body["requests"]) for r in server.requests) == [50, 100, 100]
    (request,) = [
        r
        for r in server.requests
        if r.body["requests"][0]["content"]["parts"][0]["text"] == TEXTS[0]
    ]
    assert request.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert request.body["requests"][0] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": TEXTS[0]}]},
        "taskType": "RETRIEVAL_DOCUMENT",
    }
    assert request.headers["x-goog-api-key"] == KEY
    assert KEY not in request.target


async def test_gemini_over_its_cap_is_split_and_learnt(server: FakeGemini) -> None:
    async with GeminiProvider("e", base_url=server.gemini_url, api_key=KEY) as provider:
        result = await aembed(provider, TEXTS[:600], max_inputs=400, max_concurrency=1)
    assert result.success
    assert [list(v) for v in result.vectors] == [fake_vector(t) for t in TEXTS[:600]]  # type: ignore[arg-type]
    sizes = [len(r.body["requests"]) for r in server.requests]
    # 400 refused, its halves of 200 refused, then 100s: the caps learnt the server's.
    assert sorted(size for size in sizes if size > 100) == [200, 200, 400]
    assert sum(size for size in sizes if size <= 100) == 600


async def test_a_429_is_retried_after_its_retry_info(server: FakeGemini) -> None:
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [detail]}}
    server.script.append(Status(429, body))
    delays: list[float] = []

    def on_retry(attempt: int, error: Exception) -> None:
        assert isinstance(error, RateLimitError)
        delays.append(error.retry_after or 0)

    async with GeminiProvider("e", base_url=server.gemini_url, api_key=KEY) as provider:
        with set_testing(True):
            result = await aembed(
                provider, TEXTS[:10], retry=RetryConfig(max_attempts=3, on_retry=on_retry)
            )
    assert result.success
    assert delays == [2.0]
    assert len(server.requests) == 2


async def test_a_request_that_fails_for_good_fails_its_inputs_only() -> None:
    provider = EchoProvider()
    provider.add_response(ErrorResponse(BadRequestError("no such model", status_code=404)))
    result = await aembed(provider, ["a", "b", "c", "d"], max_inputs=2, max_concurrency=1)
    assert not result.success
    assert [type(e).__name__ if e else None for e in result.errors] == [
        "BadRequestError",
        "BadRequestError",
        None,
        None,
    ]
    assert result.vectors[:2] == (None, None)
    assert result.vectors[2:] == (echo_vector("c"), echo_vector("d"))


async def test_echo_vectors_are_deterministic_and_sized() -> None:
    result = await aembed(EchoProvider(), EmbeddingTask(["x", "y", "x"], dimensions=100))
    assert result.vectors[0] == result.vectors[2] != result.vectors[1]
    assert all(len(v) == 100 for v in result.vectors if v is not None)


async def test_pacing_books_each_request_s_estimated_tokens() -> None:
    booked: list[int] = []

    class Recording:
        async def acquire(self, tokens: int = 0) -> None:
            booked.append(tokens)

        def settle(self, booked: int, used: int | None) -> None:
            pass

        def cooldown(self, seconds: float) -> None:
            pass

    provider = EchoProvider()
    provider.embedding_caps = EmbeddingCaps(max_inputs=3)
    await aembed(provider, ["aaaa"] * 7, rate_limit=Recording(), max_concurrency=1)
    assert booked == [6, 6, 2]  # 2 estimated tokens per text, 3 texts per request


async def test_cancelling_stops_every_request() -> None:
    provider = EchoProvider(latency=60)
    finished = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await aembed(provider, TEXTS, max_inputs=10)
            finished.append(True)

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert provider.call_count == 8  # one request per worker, all waiting
        tg.cancel_scope.cancel()
    assert finished == []


def test_bad_input_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        EmbeddingTask(["a", ""])
    with pytest.raises(TypeError, match=r"texts\[0\] is a int"):
        EmbeddingTask([3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="has no embed"):
        embed(object(), ["a"])  # type: ignore[arg-type]


def test_embed_runs_from_sync_code(anyio_backend: str) -> None:
    result = embed(EchoProvider(), ["a", "b"], backend=anyio_backend)
    assert result.vectors == (echo_vector("a"), echo_vector("b"))


async def test_prices_give_the_cost_of_the_input_tokens(server: FakeGemini) -> None:
    texts = [f"text number {i}" for i in range(30)]
    provider = OpenAIProvider("text-embedding-3-small", base_url=server.openai_url, api_key="k")
    provider.embedding_caps = EmbeddingCaps(max_inputs=8)
    prices = {"text-embedding-3-small": {"input": 0.02, "output": 0}}
    async with provider:
        result = await aembed(provider, texts, prices=prices)
    assert result.requests == 4 and result.unpriced == {}
    tokens = result.usage["prompt_tokens"]
    assert tokens == sum(tokens_of(t) for t in texts)
    assert result.cost_usd == pytest.approx(tokens * 0.02 / 1e6)
    unpriced = await aembed(EchoProvider(), ["a", "b"], prices=prices)
    assert unpriced.cost_usd == 0 and unpriced.unpriced == {"echo": 1}
    assert (await aembed(EchoProvider(), ["a"])).cost_usd is None


def test_a_bad_price_table_is_refused_before_any_work(anyio_backend: str) -> None:
    provider = EchoProvider()
    with pytest.raises(ValueError, match=r"aembed: prices\['m'\] has no 'input' price"):
        embed(provider, ["a"], prices={"m": {"output": 1}}, backend=anyio_backend)
    assert provider.call_count == 0


def test_trio_without_trio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trio" else real(name, *a)
    )
    provider = EchoProvider()
    with pytest.raises(ImportError, match=r"embed: .*pip install 'llmfanout\[trio\]'"):
        embed(provider, ["a"], backend="trio")
    assert provider.call_count == 0
