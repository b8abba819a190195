"""EchoProvider: scripts, cycling, errors, functions, strict mode, latency, call records."""

from __future__ import annotations

import anyio
import pytest

from llmfanout import EchoProvider, LLMMessage, LLMResponse
from llmfanout.testing import ErrorResponse, ResponseQueueExhausted, text_response

pytestmark = pytest.mark.anyio

HELLO = [LLMMessage("system", "be brief"), LLMMessage("user", "hello there")]


async def test_echoes_the_last_user_message_with_plausible_usage() -> None:
    provider = EchoProvider()
    response = await provider.complete([*HELLO, LLMMessage("assistant", "earlier")])
    assert response.content == "Echo: hello there"
    assert response.model == "echo" and response.finish_reason == "stop"
    assert response.usage is not None
    assert response.usage["prompt_tokens"] > 0 and response.usage["completion_tokens"] > 0
    total = response.usage["prompt_tokens"] + response.usage["completion_tokens"]
    assert response.usage["total_tokens"] == total


async def test_model_override_is_reported() -> None:
    response = await EchoProvider().complete(HELLO, config_overrides={"model": "m2"})
    assert response.model == "m2"


async def test_script_is_served_in_order_then_echo_resumes() -> None:
    provider = EchoProvider()
    scripted = LLMResponse("as is", model="x")
    provider.set_responses([text_response("one"), "two", scripted])
    contents = [(await provider.complete(HELLO)).content for _ in range(4)]
    assert contents == ["one", "two", "as is", "Echo: hello there"]


async def test_cycle_repeats_the_script() -> None:
    provider = EchoProvider().set_responses(["a", "b"], cycle=True)
    assert [(await provider.complete(HELLO)).content for _ in range(5)] == list("ababa")


async def test_add_response_appends_also_to_a_cycle() -> None:
    provider = EchoProvider().add_response("first")
    assert (await provider.complete(HELLO)).content == "first"
    provider.set_responses(["a"], cycle=True).add_response("b")
    assert [(await provider.complete(HELLO)).content for _ in range(3)] == ["a", "b", "a"]


async def test_error_response_raises_its_exception() -> None:
    error = RuntimeError("simulated")
    provider = EchoProvider([ErrorResponse(error), "after"])
    with pytest.raises(RuntimeError) as caught:
        await provider.complete(HELLO)
    assert caught.value is error
    assert (await provider.complete(HELLO)).content == "after"


async def test_response_function_answers_when_the_script_is_empty() -> None:
    async def shout(messages: object) -> str:
        return "LOUD"

    provider = EchoProvider(["scripted"]).set_response_function(
        lambda messages: f"{len(messages)} messages"
    )
    assert (await provider.complete(HELLO)).content == "scripted"
    assert (await provider.complete(HELLO)).content == "2 messages"
    provider.set_response_function(shout)
    assert (await provider.complete(HELLO)).content == "LOUD"


async def test_strict_raises_once_the_script_runs_out() -> None:
    provider = EchoProvider(["only"], strict=True)
    assert (await provider.complete(HELLO)).content == "only"
    with pytest.raises(ResponseQueueExhausted, match=r"call #2 with no scripted response left"):
        await provider.complete(HELLO)


async def test_calls_record_messages_and_overrides() -> None:
    provider = EchoProvider()
    await provider.complete(HELLO, config_overrides={"temperature": 0.5})
    await provider.complete(HELLO[1:])
    assert provider.call_count == 2
    assert provider.calls[0].messages == tuple(HELLO)
    assert provider.calls[0].config_overrides == {"temperature": 0.5}
    assert provider.calls[1].config_overrides is None
    provider.calls.clear()  # a copy: the record is not changed
    assert provider.call_count == 2


async def test_latency_is_waited_out() -> None:
    provider = EchoProvider(latency=0.05)
    start = anyio.current_time()
    await provider.complete(HELLO)
    assert anyio.current_time() - start >= 0.05


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="latency is -1"):
        EchoProvider(latency=-1)
    with pytest.raises(TypeError, match="script items are LLMResponse, str or ErrorResponse"):
        EchoProvider().set_responses([42])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ErrorResponse("not an exception")  # type: ignore[arg-type]


async def test_record_calls_false_counts_without_keeping_calls() -> None:
    provider = EchoProvider(record_calls=False)
    for _ in range(3):
        await provider.complete(HELLO)
    assert provider.call_count == 3
    assert provider.calls == []


async def test_on_text_gets_the_answer_word_by_word() -> None:
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    response = await EchoProvider().complete(HELLO, config_overrides={"on_text": on_text})
    assert pieces == ["Echo: ", "hello ", "there"]
    assert "".join(pieces) == response.content
