"""AnthropicProvider: exact request shape (httpx.MockTransport), parsing, a real server run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor
from llmfanout._base._encoded import dumps
from llmfanout._structured._request import response_format
from llmfanout.errors import BadRequestError, ResponseFormatError
from llmfanout.providers import AnthropicProvider

from support.fake_llm_server import serve_fake_llm
from support.helpers import MockedProviders

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test-0123456789"
MESSAGES = [
    LLMMessage("system", "Be brief."),
    LLMMessage("user", "Hi"),
    LLMMessage("assistant", "Hello."),
    LLMMessage("system", "Answer in French."),
    LLMMessage("user", "And now?"),
]


def message(text: str = "Bonjour", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 4},
    }
    body.update(extra)
    return body


def answer() -> httpx.Response:
    """The server's default reply: a well-formed success."""
    return httpx.Response(200, json=message(), headers={"request-id": "req_011"})


@pytest.fixture
async def mocked() -> AsyncIterator[MockedProviders[AnthropicProvider]]:
    def make(**options: Any) -> AnthropicProvider:
        options.setdefault("api_key", KEY)
        return AnthropicProvider("claude-sonnet-4-5", **options)

    providers = MockedProviders(make, answer)
    yield providers
    await providers.aclose()


async def test_request_url_headers_and_body(mocked: Any) -> None:
    provider, recorder = mocked()
    await provider.complete(MESSAGES)
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert recorder.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "And now?"},
        ],
    }


async def test_no_system_field_without_system_messages(mocked: Any) -> None:
    provider, recorder = mocked()
    await provider.complete([LLMMessage("user", "x")])
    assert "system" not in recorder.body


async def test_overrides_map_onto_the_body(mocked: Any) -> None:
    provider, recorder = mocked(max_tokens=256, default_params={"temperature": 0.0, "top_k": 5})
    overrides = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",  # OpenAI's name, sent as stop_sequences
        "top_k": None,  # None drops a default
        "metadata": {"user_id": "u1"},  # anything else passes through
    }
    await provider.complete([LLMMessage("user", "x")], overrides)
    assert recorder.body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "messages": [{"role": "user", "content": "x"}],
    }


async def test_system_in_params_comes_before_system_messages(mocked: Any) -> None:
    provider, recorder = mocked(default_params={"system": "You are terse.", "stop": ["a", "b"]})
    await provider.complete(MESSAGES[:2])
    assert recorder.body["system"] == "You are terse.\n\nBe brief."
    assert recorder.body["stop_sequences"] == ["a", "b"]
    blocks = [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]
    await provider.complete(MESSAGES[:2], {"system": blocks})
    assert recorder.body["system"] == [*blocks, {"type": "text", "text": "Be brief."}]


async def test_headers_can_override_the_api_version(mocked: Any) -> None:
    provider, recorder = mocked(
        headers={"anthropic-version": "2099-01-01", "anthropic-beta": "x"},
        base_url="https://proxy.example/anthropic/",
    )
    await provider.complete(MESSAGES)
    request = recorder.requests[0]
    assert str(request.url) == "https://proxy.example/anthropic/v1/messages"
    assert request.headers["anthropic-version"] == "2099-01-01"
    assert request.headers["anthropic-beta"] == "x"


@pytest.mark.parametrize(
    ("messages", "overrides"),
    [
        ([LLMMessage("tool", "42")], None),
        ([LLMMessage("user", "x")], {"temperature": float("inf")}),
        ([LLMMessage("user", "x")], {"stop": 3}),
    ],
    ids=["tool-role", "inf", "bad-stop"],
)
async def test_a_request_that_cannot_be_sent_is_refused_before_sending(
    mocked: Any, messages: list[LLMMessage], overrides: dict[str, Any] | None
) -> None:
    provider, recorder = mocked()
    with pytest.raises(BadRequestError) as caught:
        await provider.complete(messages, overrides)
    assert caught.value.retryable is False
    assert recorder.requests == []


async def test_response_is_parsed(mocked: Any) -> None:
    provider, _ = mocked()
    response = await provider.complete(MESSAGES)
    assert response.content == "Bonjour"
    assert response.model == "claude-sonnet-4-5-20250929"
    assert response.finish_reason == "end_turn"
    assert response.usage == {
        "input_tokens": 20,
        "output_tokens": 4,
        "prompt_tokens": 20,
        "completion_tokens": 4,
        "total_tokens": 24,
    }
    assert response.metadata["raw"] == message()
    assert response.metadata["request_id"] == "req_011"


async def test_cached_input_counts_as_prompt_tokens(mocked: Any) -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    }
    provider, _ = mocked(httpx.Response(200, json=message(usage=usage)))
    response = await provider.complete(MESSAGES)
    assert response.usage is not None
    assert response.usage["prompt_tokens"] == 1110
    assert response.total_tokens == 1115


async def test_text_blocks_are_joined_and_others_skipped(mocked: Any) -> None:
    content = [
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "a"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        {"type": "text", "text": "b"},
    ]
    provider, _ = mocked(httpx.Response(200, json=message(content=content, stop_reason="tool_use")))
    response = await provider.complete(MESSAGES)
    assert response.content == "ab"
    assert response.finish_reason == "tool_use"


async def test_empty_content_is_an_empty_answer(mocked: Any) -> None:
    provider, _ = mocked(httpx.Response(200, json={"content": []}))
    response = await provider.complete(MESSAGES, {"model": "asked-for"})
    assert response.content == "" and response.model == "asked-for"
    assert response.usage is None and response.finish_reason is None


@pytest.mark.parametrize("body", [{"type": "message"}, {"content": "text"}, ["x"]])
async def test_unusable_success_bodies(mocked: Any, body: Any) -> None:
    provider, _ = mocked(httpx.Response(200, json=body, headers={"request-id": "req_7"}))
    with pytest.raises(ResponseFormatError) as caught:
        await provider.complete(MESSAGES)
    assert caught.value.retryable is False and caught.value.request_id == "req_7"


def test_missing_key_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "not-this-one")
    with pytest.raises(ValueError, match="set the ANTHROPIC_API_KEY environment variable"):
        AnthropicProvider("claude-sonnet-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert AnthropicProvider("claude-sonnet-4-5")._headers["x-api-key"] == KEY


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, True])
def test_bad_max_tokens_fails_at_construction(max_tokens: Any) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicProvider("c", api_key=KEY, max_tokens=max_tokens)


def test_bad_stop_in_default_params_fails_at_construction() -> None:
    with pytest.raises(TypeError, match=r"default_params\['stop'\]"):
        AnthropicProvider("c", api_key=KEY, default_params={"stop": 3})


def test_repr_hides_the_key() -> None:
    provider = AnthropicProvider("claude-sonnet-4-5", api_key=KEY)
    assert repr(provider) == (
        "AnthropicProvider(model='claude-sonnet-4-5', base_url='https://api.anthropic.com')"
    )
    assert KEY not in repr(vars(provider))  # even the private state hides it


async def test_end_to_end_through_the_executor_on_a_real_server() -> None:
    async with (
        serve_fake_llm() as server,
        AnthropicProvider(
            "claude-test", base_url=server.anthropic_base_url, api_key=KEY, max_connections=4
        ) as provider,
    ):
        executor = ParallelLLMExecutor(provider, max_concurrency=4)
        tasks = {
            str(i): LLMTask([LLMMessage("system", "s"), LLMMessage("user", f"q{i}")])
            for i in range(40)
        }
        results = await executor.execute(tasks)
    assert [r.value.content for r in results.values()] == [f"echo: q{i}" for i in range(40)]
    first = server.requests[0]
    assert first.path == "/v1/messages"
    assert first.headers["x-api-key"] == KEY
    assert first.json["system"] == "s"
    assert server.peak_connections <= 4


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
OWN_TOOL = {"name": "lookup", "input_schema": {"type": "object"}}

# (a change to a built body, whether it changes the tools list itself)
CHANGES: list[tuple[Callable[[dict[str, Any]], object], bool]] = [
    (lambda body: body["tools"].append(OWN_TOOL), True),
    (lambda body: body["tools"].clear(), True),
    (lambda body: body["tools"].__setitem__(0, OWN_TOOL), True),
    (lambda body: body["tools"][-1].update(name="other"), False),
    (lambda body: body["tools"][-1].pop("input_schema"), False),
    (lambda body: body["tool_choice"].__setitem__("name", "other"), False),
]


@pytest.mark.parametrize("tools", [None, [OWN_TOOL]])
@pytest.mark.parametrize(("change", "of_the_list"), CHANGES)
def test_changing_a_built_structured_request_cannot_change_the_next_one(
    tools: list[dict[str, Any]] | None,
    change: Callable[[dict[str, Any]], object],
    of_the_list: bool,
) -> None:
    """The forced tool, its list and the tool_choice are made once per schema and shared
    by every call: they refuse a change rather than pass it on to the next request (a
    list joining the caller's tools to the forced one is the call's own)."""
    provider = AnthropicProvider("claude-test", api_key=KEY, base_url="http://127.0.0.1:9/v1")
    overrides = {"response_format": response_format("answer", SCHEMA)}
    if tools is not None:
        overrides["tools"] = tools
    first = provider.cache_request(MESSAGES, overrides)["body"]
    sent = json.loads(dumps(first))
    if of_the_list and tools is not None:
        change(first)
    else:
        with pytest.raises(TypeError, match="shared by every request"):
            change(first)
    second = provider.cache_request(MESSAGES, overrides)["body"]
    assert json.loads(dumps(second)) == sent
    assert sent["tools"][-1]["name"] == sent["tool_choice"]["name"] == "answer"
