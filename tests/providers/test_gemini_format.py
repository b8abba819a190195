"""Gemini's wire format, the pure mappers: round trips by property, and the stream folder."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmfanout import ImagePart, LLMMessage, LLMResponse, TextPart, ToolCall
from llmfanout.providers._anthropic_format import messages_to_wire as anthropic_messages
from llmfanout.providers._gemini_format import (
    SYNTHETIC_ID,
    GeminiStream,
    messages_to_wire,
    request_body,
    text_and_tool_calls,
    tool_call_to_wire,
    usage_from,
)
from llmfanout.providers._openai_format import messages_to_wire as openai_messages
from llmfanout.providers._sse import Event

text = st.text(min_size=1, max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
call_ids = st.text(alphabet="abcdef0123456789_-", min_size=1, max_size=10)
signatures = st.none() | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
    min_size=1,
    max_size=40,
)  # Gemini's thoughtSignature: opaque base64
images = st.sampled_from(
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "data:image/jpeg;base64,/9j/4AAQ",
        "https://example.com/a.png",
        "https://example.com/b.webp?x=1",
    ]
).map(ImagePart)
parts = st.lists(st.one_of(text.map(TextPart), images), min_size=1, max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> list[LLMMessage]:
    """User and assistant turns, assistants sometimes calling tools that are then answered."""
    messages: list[LLMMessage] = []
    for _ in range(draw(st.integers(1, 4))):
        messages.append(LLMMessage("user", draw(st.one_of(text, parts))))
        calls = tuple(
            ToolCall(
                f"{draw(call_ids)}-{i}",
                draw(text),
                json.dumps(draw(arguments), ensure_ascii=False),
                draw(signatures),
            )
            for i in range(draw(st.integers(0, 2)))
        )
        messages.append(LLMMessage("assistant", draw(text), tool_calls=calls))
        for call in calls:
            messages.append(
                LLMMessage("tool", json.dumps({"ok": draw(text)}), tool_call_id=call.id)
            )
    return messages


def back(contents: list[dict[str, Any]]) -> list[LLMMessage]:
    """The inverse of ``messages_to_wire``, for the round trip (tests only)."""
    messages: list[LLMMessage] = []
    for content in contents:
        role = "assistant" if content["role"] == "model" else "user"
        items: list[Any] = []
        for part in content["parts"]:
            if "text" in part:
                items.append(TextPart(part["text"]))
            elif "inlineData" in part:
                data = part["inlineData"]
                items.append(ImagePart(f"data:{data['mimeType']};base64,{data['data']}"))
            elif "fileData" in part:
                items.append(ImagePart(part["fileData"]["fileUri"]))
            elif "functionResponse" in part:
                answer = part["functionResponse"]
                messages.append(
                    LLMMessage("tool", json.dumps(answer["response"]), tool_call_id=answer["id"])
                )
        _, calls = text_and_tool_calls(content["parts"])
        if items or calls:
            plain = len(items) == 1 and type(items[0]) is TextPart
            messages.append(LLMMessage(role, items[0].text if plain else items, tool_calls=calls))
    return messages


def normal(message: LLMMessage) -> LLMMessage:
    """A message as it reads back: text parts of one item are plain text."""
    content = message.content
    if isinstance(content, tuple) and len(content) == 1 and type(content[0]) is TextPart:
        return LLMMessage(message.role, content[0].text, tool_calls=message.tool_calls)
    return message


@given(conversations())
def test_messages_round_trip(messages: list[LLMMessage]) -> None:
    system, contents = messages_to_wire(messages)
    assert system is None
    assert [normal(m) for m in back(contents)] == [normal(m) for m in messages]
    for content in contents:
        assert content["role"] in ("user", "model")


@given(call_ids, text, arguments, signatures)
def test_a_tool_call_round_trips(
    call_id: str, name: str, args: dict[str, Any], signature: str | None
) -> None:
    call = ToolCall(call_id, name, json.dumps(args), signature)
    wire = tool_call_to_wire(call, "here")
    assert wire.get("thoughtSignature") == signature  # beside functionCall, in the same part
    assert "thoughtSignature" not in wire["functionCall"]
    (back_again,) = text_and_tool_calls([wire])[1]
    assert back_again == ToolCall(call_id, name, json.dumps(args, ensure_ascii=False), signature)
    assert back_again.parsed_arguments() == args


@given(st.lists(st.tuples(text, signatures), min_size=1, max_size=4), text)
def test_signatures_go_back_on_their_own_calls_through_message(
    calls: list[tuple[str, str | None]], content: str
) -> None:
    # Parallel calls: Gemini signs the first only; each signature stays on its own part.
    parts: list[dict[str, Any]] = [{"text": content}]
    for i, (name, signature) in enumerate(calls):
        part: dict[str, Any] = {"functionCall": {"id": f"c{i}", "name": name, "args": {}}}
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    text_out, tool_calls = text_and_tool_calls(parts)
    message = LLMResponse(text_out, tool_calls=tool_calls).message()
    _, contents = messages_to_wire([LLMMessage("user", "go"), message])
    assert contents[1]["parts"] == parts


def test_other_providers_leave_the_signature_out() -> None:
    call = ToolCall("c1", "f", "{}", "c2lnbmF0dXJl")
    message = LLMMessage("assistant", "", tool_calls=[call])
    assert "c2lnbmF0dXJl" not in json.dumps(openai_messages([message]))
    assert "c2lnbmF0dXJl" not in json.dumps(anthropic_messages([LLMMessage("user", "go"), message]))


def test_a_call_without_an_id_gets_one_that_is_not_sent_back() -> None:
    (call,) = text_and_tool_calls([{"functionCall": {"name": "f", "args": {}}}])[1]
    assert call.id.startswith(SYNTHETIC_ID)
    assert tool_call_to_wire(call, "here") == {"functionCall": {"name": "f", "args": {}}}


@given(st.lists(text, min_size=1, max_size=3), text)
def test_system_messages_go_to_system_instruction(system: list[str], user: str) -> None:
    messages = [*(LLMMessage("system", s) for s in system), LLMMessage("user", user)]
    body = request_body(messages, {"model": "m", "stream": True})
    assert body["systemInstruction"] == {"parts": [{"text": s} for s in system]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": user}]}]
    assert set(body) == {"contents", "systemInstruction"}


@given(st.lists(text, min_size=1, max_size=8), st.integers(0, 10), st.integers(0, 10))
def test_a_stream_folds_to_the_whole_answer(pieces: list[str], prompt: int, out: int) -> None:
    stream = GeminiStream()
    seen = []
    for piece in pieces:
        chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}}]}
        seen.append(stream.feed(Event(json.dumps(chunk))))
        assert not stream.done
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out,
        "totalTokenCount": prompt + out,
    }
    last = {"candidates": [{"finishReason": "STOP"}], "usageMetadata": usage}
    stream.feed(Event(json.dumps(last)))
    assert stream.done
    assert "".join(s or "" for s in seen) == "".join(pieces)
    body = stream.body()
    content, calls = text_and_tool_calls(body["candidates"][0]["content"]["parts"])
    assert (content, calls) == ("".join(pieces), ())
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert usage_from(body["usageMetadata"]) == {
        **usage,
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
    }


@given(signatures, st.lists(text, max_size=3))
def test_a_streamed_call_keeps_its_signature(signature: str | None, pieces: list[str]) -> None:
    stream = GeminiStream()
    for piece in pieces:
        chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}}]}
        stream.feed(Event(json.dumps(chunk)))
    part: dict[str, Any] = {"functionCall": {"name": "f", "args": {"a": 1}}}
    if signature is not None:
        part["thoughtSignature"] = signature
    last = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]}
    stream.feed(Event(json.dumps(last)))
    assert stream.done
    _, calls = text_and_tool_calls(stream.body()["candidates"][0]["content"]["parts"])
    (call,) = calls
    assert call.signature == signature
