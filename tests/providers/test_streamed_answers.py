"""Streamed answers against the loopback server: whole answers, truncations, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from llmfanout import (
    AnthropicProvider,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    RetryConfig,
)
from llmfanout.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ProviderError,
    ServerError,
)

from support.fake_llm_server import FakeLLMServer, Fault, _stream_events, serve_fake_llm

pytestmark = pytest.mark.anyio

KINDS = ["openai", "anthropic"]
QUESTION = [{"role": "user", "content": "tell me a short story"}]
STREAM = {"stream": True}


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def make(kind: str, server: FakeLLMServer, **options: Any) -> Any:
    if kind == "openai":
        return OpenAIProvider("gpt-test", base_url=server.openai_base_url, api_key="k", **options)
    return AnthropicProvider(
        "claude-test", base_url=server.anthropic_base_url, api_key="k", **options
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_a_streamed_answer_is_the_whole_answer(server: FakeLLMServer, kind: str) -> None:
    async with make(kind, server) as provider:
        whole = await provider.complete(QUESTION)
        streamed = await provider.complete(QUESTION, STREAM)
    assert streamed.content == whole.content == "echo: tell me a short story"
    assert streamed.usage == whole.usage and streamed.usage is not None
    assert streamed.finish_reason == whole.finish_reason
    assert streamed.metadata["streamed"] is True
    assert streamed.metadata["time_to_first_token_s"] >= 0
    assert streamed.metadata["request_id"] == "req_1"
    sent = server.requests[1].json
    assert sent["stream"] is True
    if kind == "openai":
        assert sent["stream_options"] == {"include_usage": True}
    assert server.connections_opened == 1  # a streamed body read to its end is reused


@pytest.mark.parametrize("kind", KINDS)
async def test_text_deltas_reach_the_callback_as_they_arrive(
    server: FakeLLMServer, kind: str
) -> None:
    seen: list[tuple[str, int]] = []

    async def on_text(delta: str) -> None:  # async callbacks are awaited; sync ones work too
        seen.append((delta, len(server.requests)))

    async with make(kind, server) as provider:
        answer = await provider.complete(QUESTION, {"on_text": on_text})
    assert [delta for delta, _ in seen] == ["echo: ", "tell ", "me ", "a ", "short ", "story"]
    assert "".join(delta for delta, _ in seen) == answer.content
    assert "on_text" not in server.requests[0].json  # never sent
    assert server.requests[0].json["stream"] is True  # a callback implies streaming


@pytest.mark.parametrize("kind", KINDS)
async def test_streamed_tool_calls(server: FakeLLMServer, kind: str) -> None:
    server.add_faults(Fault.tool_calls_answer(("get_weather", {"city": "Paris"}), ("noop", {})))
    async with make(kind, server) as provider:
        answer = await provider.complete(QUESTION, STREAM)
    assert [(c.name, c.parsed_arguments()) for c in answer.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("noop", {}),
    ]
    assert answer.finish_reason in ("tool_calls", "tool_use")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_provider_setting_streams_every_call(server: FakeLLMServer, kind: str) -> None:
    async with make(kind, server, default_params={"stream": True}) as provider:
        answer = await provider.complete(QUESTION)
    assert answer.metadata["streamed"] is True
    assert server.requests[0].json["stream"] is True


async def count_events(kind: str, server: FakeLLMServer) -> int:
    """How many events a whole streamed answer to QUESTION has (its terminal one last)."""
    async with make(kind, server) as provider:
        await provider.complete(QUESTION, STREAM)
    return len(_stream_events(kind, server.requests[-1], Fault.ok()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", [Fault.stream_cut, Fault.stream_drop])
async def test_no_truncation_is_accepted_as_complete(
    server: FakeLLMServer, kind: str, fault: Any
) -> None:
    total = await count_events(kind, server)
    assert total >= 8
    server.add_faults(*(fault(cut) for cut in range(total)))  # every cut before the end
    outcomes = []
    async with make(kind, server) as provider:
        for _ in range(total):
            try:
                await provider.complete(QUESTION, STREAM)
            except ProviderError as error:
                outcomes.append(error)
            else:
                outcomes.append(None)
    assert all(isinstance(o, APIConnectionError) and o.retryable for o in outcomes), outcomes
    if fault is Fault.stream_cut:
        assert all("ended before its end marker" in str(o) for o in outcomes)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cut_stream_is_retried_to_a_whole_answer(server: FakeLLMServer, kind: str) -> None:
    server.add_faults(Fault.stream_cut(4), Fault.stream_drop(2))
    retry = RetryConfig(max_attempts=3, initial_delay=0)
    async with make(kind, server) as provider:
        executor = ParallelLLMExecutor(provider, default_retry=retry)
        result = (await executor.execute({"t": LLMTask(QUESTION, STREAM)}))["t"]
    assert result.success and result.attempts == 3
    assert result.value.content == "echo: tell me a short story"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("error_type", "cls", "retryable"),
    [("overloaded_error", ServerError, True), ("invalid_request_error", BadRequestError, False)],
)
async def test_an_error_event_raises_the_error_it_names(
    server: FakeLLMServer, kind: str, error_type: str, cls: type[Exception], retryable: bool
) -> None:
    server.add_faults(Fault.stream_error(3, error_type))
    async with make(kind, server) as provider:
        with pytest.raises(cls) as caught:
            await provider.complete(QUESTION, STREAM)
    assert caught.value.retryable is retryable  # type: ignore[attr-defined]
    assert f"sent an error mid-answer ({error_type}: Overloaded)" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stalled_stream_times_out(server: FakeLLMServer, kind: str) -> None:
    server.add_faults(Fault.stream_stall(3))
    async with make(kind, server, timeout=0.5) as provider:
        with pytest.raises(APITimeoutError) as caught:
            await provider.complete(QUESTION, STREAM)
    assert caught.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_a_stream_closes_its_connection(server: FakeLLMServer, kind: str) -> None:
    server.add_faults(Fault.stream_stall(6))  # some text, then nothing
    got: list[str] = []
    first = anyio.Event()

    def on_text(delta: str) -> None:
        got.append(delta)
        first.set()

    async with make(kind, server) as provider:
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await provider.complete(QUESTION, {"on_text": on_text})

                tg.start_soon(call)
                await first.wait()  # the first text arrived: the stream is open
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        await server.wait_for_no_connections()
    assert got and "".join(got) in "echo: tell me a short story"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failing_callback_fails_the_call(server: FakeLLMServer, kind: str) -> None:
    def boom(delta: str) -> None:
        raise RuntimeError("display broke")

    async with make(kind, server) as provider:
        with pytest.raises(RuntimeError, match="display broke"):
            await provider.complete(QUESTION, {"on_text": boom})
        with pytest.raises(TypeError, match="on_text must be callable"):
            await provider.complete(QUESTION, {"on_text": "print"})


WHOLE = {
    "openai": {
        "model": "m",
        "choices": [
            {"message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
        ],
    },
    "anthropic": {
        "model": "m",
        "content": [{"type": "text", "text": "whole"}],
        "stop_reason": "end_turn",
    },
}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_server_that_does_not_stream_is_read_whole(
    server: FakeLLMServer, kind: str
) -> None:
    def not_streaming(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, json=WHOLE[kind])

    client = httpx.AsyncClient(transport=httpx.MockTransport(not_streaming))
    async with client, make(kind, server, http_client=client) as provider:
        answer = await provider.complete(QUESTION, STREAM)
    assert answer.content == "whole"
    assert answer.metadata["streamed"] is False
    assert answer.metadata["time_to_first_token_s"] is None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_connection_lost_after_the_terminal_event_keeps_the_answer(
    server: FakeLLMServer, kind: str
) -> None:
    total = await count_events(kind, server)
    server.add_faults(Fault.stream_drop(total))  # every event, then no clean end of body
    async with make(kind, server) as provider:
        answer = await provider.complete(QUESTION, STREAM)
    assert answer.content == "echo: tell me a short story"
