"""A tool round trip against a server as strict as llama.cpp's (issue 23 item 16), on
asyncio and trio: the assistant turn that holds only tool calls goes back with
``"content": ""`` (never null), and a 500's error text keeps the reason it gives."""

from __future__ import annotations

import json
from typing import Any

import anyio.abc
import pytest

from llmfanout import LLMMessage
from llmfanout.errors import ServerError
from llmfanout.providers import OpenAIProvider

from support.raw_http_server import response, serve_raw

pytestmark = pytest.mark.anyio

CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
PREAMBLE = "1 validation error for ChatCompletionRequest: " + "union branch failed; " * 70
REASON = "messages.1.content: Input should be a valid string [input_value=None]"


def strict_answer(body: dict[str, Any]) -> bytes:
    """What llama-cpp-python's server does: content must be a string, null is a 500."""
    for message in body["messages"]:
        if not isinstance(message.get("content"), str | list):
            error = {"error": {"message": PREAMBLE + REASON, "type": "internal_server_error"}}
            return response("500 Internal Server Error", json.dumps(error).encode())
    if body["messages"][-1]["role"] == "tool":
        answer = {"choices": [{"message": {"role": "assistant", "content": "3"}}]}
    else:
        message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
        answer = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    return response(body=json.dumps(answer).encode())


async def test_a_tool_round_trip_passes_a_strict_server() -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(strict_answer(json.loads(request.partition(b"\r\n\r\n")[2])))

    async with (
        serve_raw(answer) as raw,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k") as provider,
    ):
        history = [LLMMessage("user", "add 1")]
        first = await provider.complete(history)
        assert [c.name for c in first.tool_calls] == ["add"]
        history += [first.message(), LLMMessage("tool", "3", tool_call_id="c1")]
        second = await provider.complete(history)
    assert second.content == "3"
    sent = json.loads(raw.requests[1].partition(b"\r\n\r\n")[2])["messages"][1]
    assert sent == {"role": "assistant", "content": "", "tool_calls": [CALL]}


async def test_a_500_keeps_the_reason_it_gives() -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(strict_answer({"messages": [{"role": "user", "content": None}]}))

    async with (
        serve_raw(answer) as raw,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k") as provider,
    ):
        with pytest.raises(ServerError) as caught:
            await provider.complete([LLMMessage("user", "x")])
    assert len(PREAMBLE) > 1000
    assert REASON in str(caught.value)
