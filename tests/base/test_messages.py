"""Messages as mappings, content parts and tool calls: reading them, and each API's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    AnthropicProvider,
    EchoProvider,
    ImagePart,
    LLMMessage,
    LLMResponse,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    TextPart,
    ToolCall,
)
from llmfanout.errors import BadRequestError
from llmfanout.providers._anthropic_format import messages_to_wire as anthropic_wire
from llmfanout.providers._anthropic_format import tool_choice_to_wire, tools_to_wire
from llmfanout.providers._openai_format import message_to_wire, messages_to_wire, tool_calls_from

from support.fake_llm_server import FakeLLMServer, Fault, serve_fake_llm
from test_docs import ROOT, blocks

PNG = "data:image/png;base64,iVBORw0KGgo="
IMAGE_MESSAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "auto"}},
    ],
}


# -- reading mappings ----------------------------------------------------------------------


def test_a_mapping_reads_as_the_same_message() -> None:
    task = LLMTask([{"role": "system", "content": "Be brief."}, IMAGE_MESSAGE])
    assert task.messages[0] == LLMMessage("system", "Be brief.")
    assert task.messages[1] == LLMMessage(
        "user",
        (
            TextPart("What is in this picture?"),
            ImagePart("https://example.com/cat.png"),
            ImagePart(PNG, "auto"),
        ),
    )
    assert task.messages[1].text == "What is in this picture?"


def test_message_classes_take_part_mappings_too() -> None:
    message = LLMMessage("user", [{"type": "text", "text": "hi"}, ImagePart(PNG)])
    assert message.content == (TextPart("hi"), ImagePart(PNG))


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        ({"role": "robot", "content": "x"}, ValueError, r"messages\[1\]\.role is 'robot'"),
        ({"content": "x"}, ValueError, r"messages\[1\]\.role is None; use one of"),
        ({"role": "user"}, ValueError, r'messages\[1\] has no "content"'),
        ({"role": "user", "content": 3}, TypeError, r"messages\[1\]\.content must be a str"),
        (
            {"role": "user", "content": "x", "tool_call_id": "c1"},
            ValueError,
            r"messages\[1\] is a 'user' message with a tool_call_id",
        ),
        (
            {"role": "user", "content": "x", "temperature": 0},
            ValueError,
            r"messages\[1\] has the key 'temperature', which llmfanout cannot send",
        ),
        (
            {"role": "user", "content": [{"type": "video", "url": "x"}]},
            ValueError,
            r"messages\[1\]\.content\[0\] has type 'video'; use 'text' or 'image_url'",
        ),
        (
            {"role": "user", "content": [{"type": "text"}]},
            TypeError,
            r'messages\[1\]\.content\[0\] is a text part with no "text" string',
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
            ValueError,
            r"messages\[1\]\.content\[0\]\.image_url\.url is 'ftp://x'; give an https:// URL",
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
            ValueError,
            r"messages\[1\]\.content\[0\]\.image_url\.url is a data: URL not of the form "
            r"'data:image/png;base64,<data>'",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": PNG, "detail": "max"}}],
            },
            ValueError,
            r"messages\[1\]\.content\[0\]\.image_url\.detail is 'max'; use 'auto', 'low' or 'high'",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            ValueError,
            r"messages\[1\]\.tool_calls\[0\] has no 'name'",
        ),
        ("hello", TypeError, r"messages\[1\] is a str; give LLMMessage\(role=..., content=...\)"),
    ],
)
def test_a_bad_mapping_is_refused_naming_tag_index_and_field(
    message: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=r"^LLMTask 'q7': " + match):
        LLMTask([{"role": "user", "content": "ok"}, message], tag="q7")


def test_keys_a_dataset_leaves_empty_are_ignored() -> None:
    message = {"role": "assistant", "content": "hi", "refusal": None, "annotations": []}
    assert LLMTask([message]).messages == (LLMMessage("assistant", "hi"),)


def test_tool_calls_read_from_openai_and_flat_shapes() -> None:
    nested = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    flat = {"id": "call_2", "name": "add", "arguments": {"a": 1}}
    message = LLMMessage.from_mapping(
        {"role": "assistant", "content": None, "tool_calls": [nested, flat]}
    )
    assert message.content == ""
    assert message.tool_calls == (
        ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
        ToolCall("call_2", "add", '{"a": 1}'),
    )
    assert message.tool_calls[1].parsed_arguments() == {"a": 1}


def test_a_tool_call_mapping_may_carry_a_signature() -> None:
    given = {"id": "c1", "name": "f", "arguments": "{}", "signature": "c2ln"}
    message = LLMMessage.from_mapping({"role": "assistant", "content": "", "tool_calls": [given]})
    assert message.tool_calls == (ToolCall("c1", "f", "{}", "c2ln"),)
    with pytest.raises(TypeError, match=r"tool_calls\[0\].signature must be a str"):
        LLMMessage.from_mapping(
            {"role": "assistant", "content": "", "tool_calls": [{**given, "signature": 7}]}
        )
    with pytest.raises(TypeError, match=r"ToolCall\.signature must be a str"):
        ToolCall("c1", "f", "{}", 7)  # type: ignore[arg-type]


def test_tool_fields_belong_to_their_roles() -> None:
    with pytest.raises(ValueError, match="only an 'assistant' message carries them"):
        LLMMessage("user", "x", tool_calls=[ToolCall("c", "f")])
    with pytest.raises(ValueError, match="only a 'tool' message answers a tool call"):
        LLMMessage("assistant", "x", tool_call_id="c")


@pytest.mark.anyio
async def test_providers_take_mappings_directly() -> None:
    provider = EchoProvider()
    response = await provider.complete([IMAGE_MESSAGE])
    assert response.content == "Echo: What is in this picture?"
    with pytest.raises(TypeError, match=r"EchoProvider: messages\[0\] is an int"):
        await provider.complete([3])  # type: ignore[list-item]


# -- the OpenAI shape: a round trip --------------------------------------------------------

texts = st.text(max_size=20)
parts = st.one_of(
    texts.map(TextPart),
    st.builds(
        ImagePart,
        st.sampled_from(["https://example.com/a.png", PNG, "data:image/webp;base64,AAAA"]),
        st.sampled_from([None, "auto", "low", "high"]),
    ),
)
contents = st.one_of(texts, st.lists(parts, max_size=3).map(tuple))
calls = st.builds(
    ToolCall,
    st.text(min_size=1, max_size=8),
    st.text(min_size=1, max_size=8),
    st.dictionaries(st.text(max_size=5), st.integers()).map(json.dumps),
)
messages = st.one_of(
    st.builds(LLMMessage, st.sampled_from(["system", "user"]), contents),
    st.builds(
        lambda content, tool_calls: LLMMessage("assistant", content, tool_calls=tool_calls),
        contents,
        st.lists(calls, max_size=2),
    ),
    st.builds(
        lambda content, call_id: LLMMessage("tool", content, tool_call_id=call_id),
        contents,
        st.text(min_size=1, max_size=8),
    ),
)


@given(messages)
def test_openai_wire_reads_back_as_the_same_message(message: LLMMessage) -> None:
    wire = json.loads(json.dumps(message_to_wire(message)))
    assert LLMMessage.from_mapping(wire) == message


@given(st.lists(messages, min_size=1, max_size=5))
def test_openai_short_path_matches_the_full_mapping(given_messages: list[LLMMessage]) -> None:
    assert messages_to_wire(given_messages) == [message_to_wire(m) for m in given_messages]


# -- the Anthropic shape -------------------------------------------------------------------


def test_anthropic_images_become_url_and_base64_sources() -> None:
    system, wire = anthropic_wire(LLMTask([IMAGE_MESSAGE]).messages)
    assert system == []
    assert wire == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        }
    ]


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            r"messages\[0\]\.content\[0\] is an 'input_audio' part, which the Messages API "
            "cannot express",
        ),
        (
            {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
            r"messages\[0\]\.content\[0\] is an image with detail='high'",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}},
            r"is a 'image/bmp' data URL; the Messages API takes image/gif",
        ),
    ],
)
def test_anthropic_refuses_parts_it_cannot_express(part: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequestError, match=match) as caught:
        anthropic_wire(LLMTask([{"role": "user", "content": [part]}]).messages)
    assert caught.value.retryable is False


def test_anthropic_tool_results_share_the_next_user_turn() -> None:
    call_a, call_b = ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "g", "")
    _, wire = anthropic_wire(
        [
            LLMMessage("user", "go"),
            LLMMessage("assistant", "calling", tool_calls=[call_a, call_b]),
            LLMMessage("tool", "1", tool_call_id="a"),
            LLMMessage("tool", [TextPart("2")], tool_call_id="b"),
            LLMMessage("user", "and now?"),
        ]
    )
    assert wire[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
            {"type": "tool_use", "id": "b", "name": "g", "input": {}},
        ],
    }
    assert wire[2:] == [
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": "1"},
                {
                    "type": "tool_result",
                    "tool_use_id": "b",
                    "content": [{"type": "text", "text": "2"}],
                },
                {"type": "text", "text": "and now?"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (LLMMessage("tool", "42"), r"messages\[0\] is a 'tool' message with no tool_call_id"),
        (
            LLMMessage("assistant", "", tool_calls=[ToolCall("a", "f", "[1]")]),
            r"messages\[0\]\.tool_calls\[0\] has arguments '\[1\]', not a JSON object",
        ),
        (
            LLMMessage("system", [ImagePart(PNG)]),
            r"messages\[0\]\.content\[0\] is not text; the Messages API's system prompt",
        ),
    ],
)
def test_anthropic_refuses_messages_it_cannot_express(message: LLMMessage, match: str) -> None:
    with pytest.raises(BadRequestError, match=match):
        anthropic_wire([message])


# -- against the loopback server, both APIs, both backends --------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def make(kind: str, server: FakeLLMServer) -> OpenAIProvider | AnthropicProvider:
    if kind == "openai":
        return OpenAIProvider("gpt-test", base_url=server.openai_base_url, api_key="k")
    return AnthropicProvider("claude-test", base_url=server.anthropic_base_url, api_key="k")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_dict_messages_with_an_image_reach_the_server_in_its_shape(
    server: FakeLLMServer, kind: str
) -> None:
    async with make(kind, server) as provider:
        executor = ParallelLLMExecutor(provider)
        results = await executor.execute({"pic": LLMTask([IMAGE_MESSAGE])})
    assert results["pic"].success, results["pic"].error
    sent = server.requests[0].json["messages"][0]["content"]
    if kind == "openai":
        assert sent == IMAGE_MESSAGE["content"]
    else:
        assert [block["type"] for block in sent] == ["text", "image", "image"]
        assert sent[1]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
        assert sent[2]["source"]["type"] == "base64"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_two_step_tool_loop_round_trips(server: FakeLLMServer, kind: str) -> None:
    server.add_faults(
        Fault.tool_calls_answer(("get_weather", {"city": "Paris"}), ("get_time", {})),
        Fault.ok("Sunny, and it is noon."),
    )
    tools = {"tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    history: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]
    async with make(kind, server) as provider:
        executor = ParallelLLMExecutor(provider)
        first = (await executor.execute({"t": LLMTask(history, tools)}))["t"]
        assert first.success, first.error
        answer: LLMResponse = first.value
        assert [(c.name, c.parsed_arguments()) for c in answer.tool_calls] == [
            ("get_weather", {"city": "Paris"}),
            ("get_time", {}),
        ]
        history.append(answer.message())
        history += [
            {"role": "tool", "tool_call_id": call.id, "content": f"result of {call.name}"}
            for call in answer.tool_calls
        ]
        second = (await executor.execute({"t": LLMTask(history, tools)}))["t"]
    assert second.success, second.error  # the server checks each result answers a call
    assert second.value.content == "Sunny, and it is noon."
    assert second.value.tool_calls == ()
    assert server.requests[0].json["tools"][0]["name" if kind == "anthropic" else "function"]
    ids = [call.id for call in answer.tool_calls]
    sent = server.requests[1].json["messages"]
    if kind == "openai":
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
        assert [c["id"] for c in sent[1]["tool_calls"]] == ids
        assert [m["tool_call_id"] for m in sent[2:]] == ids
    else:
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert [b["id"] for b in sent[1]["content"] if b["type"] == "tool_use"] == ids
        assert [b["tool_use_id"] for b in sent[2]["content"]] == ids


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_tool_result_that_answers_no_call_is_refused_by_the_server(
    server: FakeLLMServer, kind: str
) -> None:
    orphan = [
        LLMMessage("user", "hi"),
        LLMMessage("assistant", "hello"),
        LLMMessage("tool", "42", tool_call_id="nope"),
    ]
    async with make(kind, server) as provider:
        with pytest.raises(BadRequestError, match="tool"):
            await provider.complete(orphan)


def docs_namespace(page: str) -> dict[str, Any]:
    """What the runnable blocks of a docs page define (they run here, in order)."""
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    for code in blocks(ROOT / "docs" / page):
        exec(compile(code, page, "exec"), namespace)
    return namespace


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_the_documented_tool_loop_runs_on_both_apis(server: FakeLLMServer, kind: str) -> None:
    ask_with_tools = docs_namespace("messages-and-tools.md")["ask_with_tools"]
    server.add_faults(
        Fault.tool_calls_answer(("get_weather", {"city": "Paris"})),
        Fault.ok("It is sunny in Paris."),
    )
    async with make(kind, server) as provider:
        answer = await ask_with_tools(ParallelLLMExecutor(provider), "Weather in Paris?")
    assert answer == "It is sunny in Paris."
    second = server.requests[1].json
    tool_answer = second["messages"][-1]
    if kind == "openai":
        assert tool_answer["content"] == "Sunny, 24 C in Paris"
        assert second["tools"][0]["function"]["name"] == "get_weather"
    else:
        assert tool_answer["content"][0]["content"] == "Sunny, 24 C in Paris"
        assert second["tools"][0]["name"] == "get_weather"
        assert second["tools"][0]["input_schema"]["required"] == ["city"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
        ({"type": "tool", "name": "f"}, {"type": "tool", "name": "f"}),
    ],
)
def test_openai_tool_choice_is_rewritten_for_anthropic(given: Any, expected: Any) -> None:
    assert tool_choice_to_wire(given) == expected


def test_anthropic_tools_pass_unchanged() -> None:
    native = [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305"}]
    assert tools_to_wire(native) == native


def test_openai_tool_calls_from_lenient_servers() -> None:
    raw = [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
        {"id": "b", "type": "custom", "custom": {"name": "g"}},  # not a function: left in raw
    ]
    assert tool_calls_from(raw) == (ToolCall("call_0", "f", '{"x": 1}'),)
