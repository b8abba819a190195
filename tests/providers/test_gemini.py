"""GeminiProvider against a loopback fake of the API: text, tools, images, usage, streams,
safety blocks, errors with RetryInfo, and the key only ever in a header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig, ToolCall
from llmfanout.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ContentBlockedError,
    RateLimitError,
    ServerError,
)
from llmfanout.providers import GeminiProvider
from llmfanout.testing import set_testing

from support.fake_gemini_server import Cut, FakeGemini, Status, google_error, serve_gemini

pytestmark = pytest.mark.anyio

KEY = "AIzaSy-test-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"


@pytest.fixture
async def server() -> AsyncIterator[FakeGemini]:
    async with serve_gemini() as fake:
        yield fake


@pytest.fixture
async def gemini(server: FakeGemini) -> AsyncIterator[GeminiProvider]:
    async with GeminiProvider(MODEL, base_url=server.gemini_url, api_key=KEY) as provider:
        yield provider


def answer(*parts: dict[str, Any], finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "candidates": [
            {"content": {"role": "model", "parts": list(parts)}, "finishReason": finish}
        ],
        "usageMetadata": {
            "promptTokenCount": 11,
            "candidatesTokenCount": 5,
            "thoughtsTokenCount": 2,
            "cachedContentTokenCount": 4,
            "totalTokenCount": 18,
        },
        "modelVersion": "gemini-2.5-flash-001",
    }
    body.update(extra)
    return body


async def test_text_usage_and_the_request_shape(server: FakeGemini, gemini: GeminiProvider) -> None:
    server.script.append(answer({"text": "Bon"}, {"text": "jour", "thought": False}))
    response = await gemini.complete(
        [LLMMessage("system", "Be brief."), LLMMessage("user", "Hi")],
        {"temperature": 0.5, "max_tokens": 30, "stop": "END", "top_k": 3},
    )
    assert response.content == "Bonjour"
    assert response.finish_reason == "stop"
    assert response.model == "gemini-2.5-flash-001"
    assert response.usage is not None
    assert response.usage["prompt_tokens"] == 11
    assert response.usage["completion_tokens"] == 7  # answer and thinking, both billed
    assert response.usage["total_tokens"] == 18
    assert response.usage["cached_prompt_tokens"] == 4
    request = server.requests[-1]
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.5,
            "maxOutputTokens": 30,
            "stopSequences": ["END"],
            "topK": 3,
        },
    }


async def test_the_key_goes_only_in_the_header(server: FakeGemini, gemini: GeminiProvider) -> None:
    await gemini.complete([LLMMessage("user", "Hi")])
    await gemini.complete([LLMMessage("user", "Hi")], {"stream": True})
    await gemini.embed(["a"])
    for request in server.requests:
        assert request.headers["x-goog-api-key"] == KEY
        assert KEY not in request.target
        assert "key=" not in request.target
        assert "authorization" not in request.headers
    assert KEY not in repr(gemini)


async def test_tool_calls_come_back_and_go_out_again(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}},
        }
    ]
    server.script.append(answer({"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}))
    first = await gemini.complete([LLMMessage("user", "Weather?")], {"tools": tools})
    assert server.requests[-1].body["tools"] == [
        {"functionDeclarations": [{"name": "weather", "parameters": {"type": "object"}}]}
    ]
    (call,) = first.tool_calls
    assert call.name == "weather"
    assert call.parsed_arguments() == {"city": "Oslo"}
    follow = [
        LLMMessage("user", "Weather?"),
        first.message(),
        LLMMessage("tool", '{"temp": 3}', tool_call_id=call.id),
    ]
    await gemini.complete(follow, {"tools": tools, "tool_choice": "required"})
    body = server.requests[-1].body
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "weather", "response": {"temp": 3}}}],
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


SIGNATURE = "CiQB0e2Kb3RoZXItb3BhcXVlLXNpZ25hdHVyZQ=="


async def test_a_thought_signature_goes_back_with_its_call(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    signed = {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}
    server.script.append(answer({**signed, "thoughtSignature": SIGNATURE}))
    first = await gemini.complete([LLMMessage("user", "Weather?")], {"tools": tools})
    (call,) = first.tool_calls
    assert call.signature == SIGNATURE
    follow = [
        LLMMessage("user", "Weather?"),
        first.message(),  # the signature rides on the call
        LLMMessage("tool", '{"temp": 3}', tool_call_id=call.id),
    ]
    done = await gemini.complete(follow, {"tools": tools})
    assert done.content.startswith("Echo: ")
    sent = server.requests[-1].body["contents"][1]["parts"]
    assert sent == [{**signed, "thoughtSignature": SIGNATURE}]


async def test_a_call_sent_back_without_its_signature_is_refused(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    part = {"functionCall": {"name": "weather", "args": {}}, "thoughtSignature": SIGNATURE}
    server.script.append(answer(part))
    first = await gemini.complete([LLMMessage("user", "Weather?")], {"tools": tools})
    (call,) = first.tool_calls
    bare = LLMMessage("assistant", "", tool_calls=[attrs.evolve(call, signature=None)])
    follow = [
        LLMMessage("user", "Weather?"),
        bare,
        LLMMessage("tool", "{}", tool_call_id=call.id),
    ]
    with pytest.raises(BadRequestError, match="thought_signature"):
        await gemini.complete(follow, {"tools": tools})


async def test_images_go_inline_or_by_address(server: FakeGemini, gemini: GeminiProvider) -> None:
    message = LLMMessage.from_mapping(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    )
    await gemini.complete([message])
    assert server.requests[-1].body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
    ]


async def test_a_streamed_answer_is_whole(server: FakeGemini, gemini: GeminiProvider) -> None:
    pieces: list[str] = []
    response = await gemini.complete(
        [LLMMessage("user", "one two three")], {"on_text": pieces.append}
    )
    assert response.content == "Echo: one two three"
    assert "".join(pieces) == "Echo: one two three"
    assert len(pieces) > 1
    assert response.finish_reason == "stop"
    assert response.usage is not None and response.usage["total_tokens"] > 0
    assert response.metadata["streamed"] is True
    assert server.requests[-1].target == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"


async def test_a_cut_stream_is_a_retryable_error_never_an_answer(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    server.script.append(Cut(events=2))
    with pytest.raises(APIConnectionError) as caught:
        await gemini.complete([LLMMessage("user", "one two three four")], {"stream": True})
    assert caught.value.retryable


async def test_a_cut_stream_is_retried_to_a_whole_answer(server: FakeGemini) -> None:
    server.script.append(Cut(events=1))
    provider = GeminiProvider(MODEL, base_url=server.gemini_url, api_key=KEY)
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3))
    with set_testing(True):
        async with provider:
            results = await executor.execute(
                {"t": LLMTask([LLMMessage("user", "a b c")], {"stream": True})}
            )
    (result,) = results.values()
    assert result.success
    assert result.value.content == "Echo: a b c"
    assert result.attempts == 2


async def test_an_error_event_mid_stream_is_typed(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    server.script.append(google_error(503, "UNAVAILABLE", "The model is overloaded."))
    with pytest.raises(ServerError) as caught:
        await gemini.complete([LLMMessage("user", "Hi")], {"stream": True})
    assert caught.value.error_type == "UNAVAILABLE"
    assert caught.value.retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_prompt_is_not_retried(
    server: FakeGemini, gemini: GeminiProvider, stream: bool
) -> None:
    server.script.append({"promptFeedback": {"blockReason": "SAFETY"}})
    executor = ParallelLLMExecutor(gemini, default_retry=RetryConfig(max_attempts=3))
    with set_testing(True):
        results = await executor.execute(
            {"t": LLMTask([LLMMessage("user", "x")], {"stream": stream})}
        )
    (result,) = results.values()
    assert isinstance(result.error, ContentBlockedError)
    assert result.error.error_type == "SAFETY"
    assert "prompt was blocked" in str(result.error)
    assert result.attempts == 1
    assert len(server.requests) == 1


async def test_a_blocked_answer_raises(server: FakeGemini, gemini: GeminiProvider) -> None:
    server.script.append(answer({"text": "partial"}, finish="RECITATION"))
    with pytest.raises(ContentBlockedError, match="answer was blocked \\(RECITATION\\)"):
        await gemini.complete([LLMMessage("user", "x")])


async def test_max_tokens_is_length(server: FakeGemini, gemini: GeminiProvider) -> None:
    server.script.append(answer({"text": "cut"}, finish="MAX_TOKENS"))
    response = await gemini.complete([LLMMessage("user", "x")])
    assert (response.content, response.finish_reason) == ("cut", "length")


async def test_429_with_retry_info_is_honoured(server: FakeGemini, gemini: GeminiProvider) -> None:
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"}
    body = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", details=[detail])
    server.script.append(Status(429, body))
    with pytest.raises(RateLimitError) as caught:
        await gemini.complete([LLMMessage("user", "x")])
    error = caught.value
    assert error.retry_after == 7.5
    assert error.error_type == "RESOURCE_EXHAUSTED"
    assert error.retryable
    assert "retry after 7.5s" in str(error)


async def test_a_wrong_key_is_not_retried_and_never_shown(server: FakeGemini) -> None:
    body = google_error(400, "INVALID_ARGUMENT", f"API key not valid: {KEY}")
    server.script.append(Status(403, body))
    async with GeminiProvider(MODEL, base_url=server.gemini_url, api_key=KEY) as provider:
        with pytest.raises(AuthenticationError) as caught:
            await provider.complete([LLMMessage("user", "x")])
    assert not caught.value.retryable
    assert KEY not in str(caught.value)
    assert KEY not in (caught.value.body or "")
    assert "GEMINI_API_KEY" in str(caught.value)


async def test_a_per_call_model_picks_the_path(server: FakeGemini, gemini: GeminiProvider) -> None:
    await gemini.complete([LLMMessage("user", "x")], {"model": "gemini-2.5-pro"})
    assert server.requests[-1].path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert "model" not in server.requests[-1].body


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    provider = GeminiProvider(MODEL)
    assert provider._headers["x-goog-api-key"] == KEY
    assert provider._credential() == "the API key (GOOGLE_API_KEY)"  # what a 401 names
    assert provider.base_url == "https://generativelanguage.googleapis.com/v1beta"
    monkeypatch.delenv("GOOGLE_API_KEY")
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GeminiProvider(MODEL)


async def test_a_tool_answer_without_a_known_call_is_refused_before_sending(
    server: FakeGemini, gemini: GeminiProvider
) -> None:
    with pytest.raises(Exception, match="tool_call_id"):
        await gemini.complete([LLMMessage("tool", "3", tool_call_id="nope")])
    assert server.requests == []
    calls = (ToolCall("c1", "f", "[1]"),)
    with pytest.raises(Exception, match="not a JSON object"):
        await gemini.complete([LLMMessage("assistant", "", tool_calls=calls)])
