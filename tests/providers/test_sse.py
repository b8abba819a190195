"""The server-sent events parser and the two APIs' event accumulators: pure code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout.providers import AnthropicProvider, OpenAIProvider
from llmfanout.providers._anthropic_format import AnthropicStream
from llmfanout.providers._openai_format import OpenAIStream
from llmfanout.providers._sse import Event, LineTooLong, SSEDecoder
from llmfanout.providers._streaming import StreamEventError, StreamFormatError
from llmfanout.providers._transports._base import Response

from support.fake_llm_server import Fault, RecordedRequest, _answer, _stream_events

# -- the SSE parser ------------------------------------------------------------------------

# Field values hold no line ends (a data value with one becomes two data lines).
values = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20
)
events = st.builds(
    Event,
    data=st.lists(values, min_size=1, max_size=3).map("\n".join),
    event=st.sampled_from(["message", "message_start", "content_block_delta", "error"]),
)


def encode(event: Event, newline: str, comment: bool) -> str:
    lines = [": keep-alive"] if comment else []
    if event.event != "message":
        lines.append(f"event: {event.event}")
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return newline.join(lines) + newline + newline


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(
    st.lists(events, max_size=6),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_events_survive_any_split_of_the_bytes(
    given_events: list[Event], newline: str, bom: bool, comment: bool, cuts: list[int]
) -> None:
    text = ("\ufeff" if bom else "") + "".join(encode(e, newline, comment) for e in given_events)
    decoder = SSEDecoder()
    seen: list[Event] = []
    for chunk in split(text.encode(), cuts):
        seen += decoder.feed(chunk)
    assert seen == given_events
    assert not decoder.pending


def test_spec_details() -> None:
    decoder = SSEDecoder()
    body = (
        b"data:no space\n\n"  # the space after the colon is optional
        b"data:  two spaces\n\n"  # only one is dropped
        b"event: x\n\n"  # no data: not dispatched
        b"retry: 3000\nid: 7\ndata\n\n"  # a field with no colon has an empty value
        b"data: \xe2\x82"  # a character split across chunks...
    )
    seen = decoder.feed(body) + decoder.feed(b"\xac\n\n")  # ...is decoded whole
    assert seen == [
        Event("no space"),
        Event(" two spaces"),
        Event("", id="7", retry=3000),
        Event("\u20ac", id="7", retry=3000),
    ]


def test_an_unfinished_event_is_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}\n') == []
    assert decoder.pending


def test_only_cr_and_lf_end_lines() -> None:
    assert SSEDecoder().feed("data: a\x0cb\u2028c\n\n".encode()) == [Event("a\x0cb\u2028c")]


# -- accumulators: the events of a whole answer fold back into it -------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)
arguments = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)
calls = st.lists(st.tuples(st.sampled_from(["f", "get_weather"]), arguments), max_size=2)


def request(wire: str) -> RecordedRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    path = "/v1/messages" if wire == "anthropic" else "/v1/chat/completions"
    return RecordedRequest(0, 0.0, "POST", path, {}, b"", body, 0)


def fold(wire: str, fault: Fault) -> tuple[Any, list[Event], Any]:
    """The accumulator fed every event of the fake server's stream, the events, and the
    provider that reads the body."""
    raw = b"".join(_stream_events(wire, request(wire), fault))
    stream_events = SSEDecoder().feed(raw)
    accumulator: Any = AnthropicStream() if wire == "anthropic" else OpenAIStream()
    provider: Any = (
        AnthropicProvider("m", api_key="k")
        if wire == "anthropic"
        else OpenAIProvider("m", api_key="k")
    )
    return accumulator, stream_events, provider


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@given(text=texts, tool_calls=calls)
def test_a_stream_folds_into_the_whole_answer(
    wire: str, text: str, tool_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    fault = Fault.tool_calls_answer(*tool_calls, content=text) if tool_calls else Fault.ok(text)
    accumulator, stream_events, provider = fold(wire, fault)
    pieces = [accumulator.feed(e) for e in stream_events]
    assert accumulator.done
    head = Response(200, "OK", {}, b"")
    streamed = provider._response(accumulator.body(), head, "m")
    whole = provider._response(json.loads(_answer(wire, request(wire), fault)), head, "m")
    assert streamed.content == whole.content == "".join(p for p in pieces if p)
    assert streamed.tool_calls == whole.tool_calls
    assert [json.loads(c.arguments) for c in streamed.tool_calls] == [a for _, a in tool_calls]
    assert streamed.usage == whole.usage
    assert streamed.finish_reason == whole.finish_reason


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@given(text=texts, tool_calls=calls, data=st.data())
def test_no_strict_prefix_of_a_stream_is_complete(
    wire: str, text: str, tool_calls: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    fault = Fault.tool_calls_answer(*tool_calls, content=text) if tool_calls else Fault.ok(text)
    accumulator, stream_events, _ = fold(wire, fault)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream_events) - 1))
    for event in stream_events[:cut]:
        accumulator.feed(event)
    assert not accumulator.done


@pytest.mark.parametrize(
    ("accumulator", "event", "error"),
    [
        (OpenAIStream(), Event('{"error": {"type": "server_error"}}'), StreamEventError),
        (OpenAIStream(), Event("not json"), StreamFormatError),
        (OpenAIStream(), Event("[1, 2]"), StreamFormatError),
        (AnthropicStream(), Event('{"type": "error", "error": {}}', "error"), StreamEventError),
        (
            AnthropicStream(),
            Event('{"type": "content_block_delta", "index": 3, "delta": {}}'),
            StreamFormatError,
        ),
    ],
)
def test_error_and_unreadable_events_raise(
    accumulator: Any, event: Event, error: type[Exception]
) -> None:
    with pytest.raises(error):
        accumulator.feed(event)


def test_anthropic_unknown_events_and_thinking_are_not_text() -> None:
    stream = AnthropicStream()
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}}
    delta = {"type": "thinking_delta", "thinking": "hmm"}
    assert stream.feed(Event(json.dumps(start))) is None
    block_delta = {"type": "content_block_delta", "index": 0, "delta": delta}
    assert stream.feed(Event(json.dumps(block_delta))) is None
    assert stream.feed(Event('{"type": "some_future_event"}')) is None
    assert stream.body()["content"] == [{"type": "thinking", "thinking": "hmm"}]


def test_a_line_past_max_line_raises_whether_whole_or_in_pieces() -> None:
    whole = SSEDecoder(max_line=10)
    with pytest.raises(LineTooLong, match="longer than 10"):
        whole.feed(b"data: 0123456789\n\n")
    pieces = SSEDecoder(max_line=10)
    assert pieces.feed(b"data: 01") == []
    with pytest.raises(LineTooLong):
        pieces.feed(b"23456")


@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40))
def test_a_long_line_in_pieces_is_one_line(sizes: list[int]) -> None:
    """Held as pieces and joined once: the line read is the line sent, at its cap exactly."""
    value = "".join("abcdefg"[i % 7] * size for i, size in enumerate(sizes))
    decoder = SSEDecoder(max_line=len("data: ") + len(value))
    wire = f"data: {value}\r\n\r\n".encode()
    events = []
    start = 0
    for size in [*sizes, len(wire)]:
        events += decoder.feed(wire[start : start + size])
        start += size
    assert events == [Event(value)]
