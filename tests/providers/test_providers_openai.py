"""OpenAIProvider: exact request shape (httpx.MockTransport), parsing, lifecycle, the pool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor
from llmfanout.errors import BadRequestError, ProviderError, ResponseFormatError
from llmfanout.providers import OpenAIProvider

from support.fake_llm_server import FakeLLMServer, fake_llm_server_in_thread, serve_fake_llm
from support.helpers import MockedProviders, Recorder

pytestmark = pytest.mark.anyio

KEY = "sk-test-openai-0123456789"
MESSAGES = [LLMMessage("system", "Be brief."), LLMMessage("user", "Hi", name="ann")]
ENCODER = OpenAIProvider("gpt-4o-mini", api_key=KEY, base_url="http://127.0.0.1:9/v1")


def completion(content: Any = "Hello!", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    body.update(extra)
    return body


def answer() -> httpx.Response:
    """The server's default reply: a well-formed success."""
    return httpx.Response(200, json=completion(), headers={"x-request-id": "req_abc"})


@pytest.fixture
async def mocked() -> AsyncIterator[MockedProviders[OpenAIProvider]]:
    def make(**options: Any) -> OpenAIProvider:
        options.setdefault("api_key", KEY)
        return OpenAIProvider("gpt-4o-mini", **options)

    providers = MockedProviders(make, answer)
    yield providers
    await providers.aclose()


# -- the request -----------------------------------------------------------------------


async def test_request_url_headers_and_body(mocked: Any) -> None:
    provider, recorder = mocked()
    await provider.complete(MESSAGES)
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("llmfanout")
    assert recorder.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ann"},
        ],
    }


async def test_overrides_map_onto_the_body_over_default_params(mocked: Any) -> None:
    provider, recorder = mocked(default_params={"temperature": 0.0, "max_tokens": 50, "user": "u1"})
    overrides = {
        "model": "gpt-4.1",
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 42,
        "response_format": {"type": "json_object"},  # anything else passes through
        "user": None,  # None drops a default
    }
    await provider.complete([LLMMessage("user", "x")], config_overrides=overrides)
    assert recorder.body == {
        "model": "gpt-4.1",
        "temperature": 0.7,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 42,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "x"}],
    }
    await provider.complete([LLMMessage("user", "y")])  # overrides do not stick
    assert recorder.body == {
        "model": "gpt-4o-mini",
        "temperature": 0.0,
        "max_tokens": 50,
        "user": "u1",
        "messages": [{"role": "user", "content": "y"}],
    }


async def test_messages_come_from_the_task_not_the_overrides(mocked: Any) -> None:
    provider, recorder = mocked()
    await provider.complete([LLMMessage("user", "real")], {"messages": [{"role": "user"}]})
    assert recorder.body["messages"] == [{"role": "user", "content": "real"}]


async def test_extra_headers_and_base_url(mocked: Any) -> None:
    provider, recorder = mocked(
        base_url="http://localhost:8000/v1/", headers={"OpenAI-Organization": "org-1"}
    )
    await provider.complete(MESSAGES)
    request = recorder.requests[0]
    assert str(request.url) == "http://localhost:8000/v1/chat/completions"
    assert request.headers["openai-organization"] == "org-1"


async def test_a_header_given_in_any_case_replaces_ours(mocked: Any) -> None:
    provider, recorder = mocked(headers={"Authorization": "Bearer other", "User-Agent": "me"})
    await provider.complete(MESSAGES)
    request = recorder.requests[0]
    assert request.headers.get_list("authorization") == ["Bearer other"]
    assert request.headers.get_list("user-agent") == ["me"]


async def test_executor_overrides_reach_the_request(mocked: Any) -> None:
    provider, recorder = mocked()
    executor = ParallelLLMExecutor(provider, default_config_overrides={"temperature": 0.1})
    task = LLMTask([LLMMessage("user", "x")], config_overrides={"max_tokens": 5})
    result = (await executor.execute({"t": task}))["t"]
    assert result.success
    assert recorder.body["temperature"] == 0.1 and recorder.body["max_tokens"] == 5


@pytest.mark.parametrize(
    "overrides",
    [{"temperature": float("nan")}, {"tools": object()}],
    ids=["nan", "not-json"],
)
async def test_a_request_that_cannot_be_sent_is_refused_before_sending(
    mocked: Any, overrides: dict[str, Any]
) -> None:
    provider, recorder = mocked()
    with pytest.raises(BadRequestError) as caught:
        await provider.complete(MESSAGES, overrides)
    assert caught.value.retryable is False and caught.value.status_code is None
    assert recorder.requests == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(body=st.dictionaries(st.text(), json_values, max_size=5))
def test_a_body_is_encoded_byte_for_byte_as_json_dumps_would(body: dict[str, Any]) -> None:
    """The encoder made once writes what json.dumps with the same options writes, and
    refuses what it refuses (NaN, a lone surrogate)."""
    try:
        expected: bytes | None = json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    except ValueError:
        expected = None
    try:
        sent: bytes | None = ENCODER._encode(body)
    except BadRequestError:
        sent = None
    assert sent == expected


# -- the response ----------------------------------------------------------------------


async def test_response_is_parsed(mocked: Any) -> None:
    provider, _ = mocked()
    response = await provider.complete(MESSAGES)
    assert response.content == "Hello!"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.finish_reason == "stop"
    assert response.usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert response.total_tokens == 15
    assert response.metadata["raw"] == completion()
    assert response.metadata["request_id"] == "req_abc"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, ""),  # a tool call: the raw body holds it
        ([{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}], "ab"),
    ],
    ids=["null", "parts"],
)
async def test_content_variants(mocked: Any, content: Any, expected: str) -> None:
    provider, _ = mocked(httpx.Response(200, json=completion(content)))
    assert (await provider.complete(MESSAGES)).content == expected


async def test_missing_optional_fields_fall_back(mocked: Any) -> None:
    body = {"choices": [{"message": {"content": "x"}}]}
    provider, _ = mocked(httpx.Response(200, json=body))
    response = await provider.complete(MESSAGES, {"model": "asked-for"})
    assert response.model == "asked-for"
    assert response.finish_reason is None and response.usage is None
    assert "request_id" not in response.metadata


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"choices": [{"message": {}}]},
        [],
        {"choices": [{"message": {"content": 3}}]},
    ],
    ids=["no-choice", "no-content", "not-object", "not-text"],
)
async def test_unusable_success_bodies(mocked: Any, body: Any) -> None:
    provider, _ = mocked(httpx.Response(200, json=body, headers={"x-request-id": "req_9"}))
    with pytest.raises(ResponseFormatError) as caught:
        await provider.complete(MESSAGES)
    assert caught.value.retryable is False
    assert caught.value.status_code == 200
    assert caught.value.request_id == "req_9"
    assert "check that base_url points at the API" in str(caught.value)


# -- construction ----------------------------------------------------------------------


def test_missing_key_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="set the OPENAI_API_KEY environment variable"):
        OpenAIProvider("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "   ")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIProvider("gpt-4o-mini")


async def test_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", f" {KEY}\n")  # pasted with whitespace around
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await OpenAIProvider("m", http_client=client).complete(MESSAGES)
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"api_key": "sk-with\nnewline"}, ValueError, "HTTP header cannot carry"),
        ({"api_key": "sk-ключ"}, ValueError, "HTTP header cannot carry"),
        ({"api_key": 123}, TypeError, "api_key must be a str"),
        ({"base_url": "ftp://example.com"}, ValueError, "http:// or https://"),
        ({"base_url": "api.openai.com/v1"}, ValueError, "http:// or https://"),
        ({"base_url": "https://x.example/v1?a=1"}, ValueError, "query"),
        ({"timeout": 0}, ValueError, "timeout is 0"),
        ({"timeout": None}, ValueError, "timeout is None"),
        ({"max_connections": 0}, ValueError, "max_connections is 0"),
        ({"default_params": ["temperature"]}, TypeError, "default_params"),
        ({"headers": {"x-a": 1}}, TypeError, "headers"),
        ({"headers": {"x-a": "a\r\nb"}}, ValueError, "header 'x-a'"),
        ({"http_client": object()}, TypeError, "httpx.AsyncClient"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], error: type, words: str) -> None:
    options.setdefault("api_key", KEY)
    with pytest.raises(error, match=words) as caught:
        OpenAIProvider("gpt-4o-mini", **options)
    assert KEY not in str(caught.value)
    if isinstance(options["api_key"], str):
        assert options["api_key"] not in str(caught.value)


def test_bad_model_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="model"):
        OpenAIProvider("", api_key=KEY)


def test_repr_shows_model_and_url_but_not_the_key() -> None:
    provider = OpenAIProvider("gpt-4o-mini", api_key=KEY, timeout=httpx.Timeout(5.0))
    assert repr(provider) == (
        "OpenAIProvider(model='gpt-4o-mini', base_url='https://api.openai.com/v1')"
    )
    assert provider.timeout == httpx.Timeout(5.0)
    assert KEY not in repr(vars(provider))  # even the private state hides it


def test_timeout_applies_to_all_phases_with_a_shorter_connect() -> None:
    provider = OpenAIProvider("m", api_key=KEY, timeout=30)
    assert provider.timeout == httpx.Timeout(30.0, connect=10.0)
    assert OpenAIProvider("m", api_key=KEY, timeout=2).timeout == httpx.Timeout(2.0)


# -- lifecycle -------------------------------------------------------------------------


async def test_async_with_closes_its_own_client_and_refuses_later_calls() -> None:
    async with serve_fake_llm() as server:
        async with OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as provider:
            assert (await provider.complete(MESSAGES)).content == "echo: Hi"
        with pytest.raises(ProviderError, match="closed") as caught:
            await provider.complete(MESSAGES)
        assert caught.value.retryable is False
        await provider.aclose()  # idempotent
        with anyio.fail_after(5):
            await server.wait_for_no_connections()


@pytest.mark.usefixtures("no_stray_threads")
def test_one_provider_serves_successive_event_loops() -> None:
    """Made outside any loop, used by several anyio.run() calls in turn, on both backends."""
    with fake_llm_server_in_thread() as server:
        provider = OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY)

        async def run(prompt: str) -> str:
            async with provider:  # closes this loop's pool only
                answer = await provider.complete([LLMMessage("user", prompt)])
            with pytest.raises(ProviderError, match="closed"):
                await provider.complete([LLMMessage("user", "too late")])
            return answer.content

        backends = ["asyncio", "asyncio", "trio", "trio", "asyncio"]
        answers = [anyio.run(run, str(i), backend=b) for i, b in enumerate(backends)]
    assert answers == [f"echo: {i}" for i in range(5)]
    assert server.connections_opened == 5  # a fresh pool in each loop


async def test_a_client_passed_in_is_left_open() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(Recorder(answer))) as client:
        async with OpenAIProvider("m", api_key=KEY, http_client=client) as provider:
            await provider.complete(MESSAGES)
        assert not client.is_closed
        await OpenAIProvider("m", api_key=KEY, http_client=client).complete(MESSAGES)


# -- the pool, against a real server ----------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


async def test_connections_are_kept_alive_and_reused(server: FakeLLMServer) -> None:
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as provider:
        for i in range(20):
            await provider.complete([LLMMessage("user", str(i))])
    assert server.connections_opened == 1


async def test_the_pool_caps_connections_at_max_connections(server: FakeLLMServer) -> None:
    async with OpenAIProvider(
        "m", base_url=server.openai_base_url, api_key=KEY, max_connections=3
    ) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=12)
        tasks = {str(i): LLMTask([LLMMessage("user", str(i))]) for i in range(60)}
        results = await executor.execute(tasks)
    assert all(r.success for r in results.values())
    assert server.peak_connections <= 3
    assert server.connections_opened <= 3


async def test_a_pool_sized_for_the_executor_runs_calls_concurrently(
    server: FakeLLMServer,
) -> None:
    async with OpenAIProvider(
        "m", base_url=server.openai_base_url, api_key=KEY, max_connections=8
    ) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=8)
        tasks = {str(i): LLMTask([LLMMessage("user", str(i))]) for i in range(200)}
        results = await executor.execute(tasks)
    assert [r.value.content for r in results.values()] == [f"echo: {i}" for i in range(200)]
    assert 1 < server.peak_connections <= 8
