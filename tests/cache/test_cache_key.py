"""Cache keys by property: what reaches the wire splits a key, nothing else does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import AnthropicProvider, EchoProvider, LLMMessage, OpenAIProvider, ToolCall
from llmfanout.cache import request_key

KEY = "sk-test-secret-0123456789abcdef"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
PARAMS = ("temperature", "top_p", "seed", "max_tokens", "tools", "tool_choice", "stop", "n")
params = st.dictionaries(
    st.sampled_from(PARAMS) | st.text(min_size=1, max_size=6), values, max_size=5
)
texts = st.text(min_size=1, max_size=20)


def openai(**options: Any) -> OpenAIProvider:
    options.setdefault("api_key", KEY)
    return OpenAIProvider(options.pop("model", "gpt-x"), **options)


def shuffled(value: Any, draw_order: list[int]) -> Any:
    """``value`` with every mapping's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        if items and draw_order:
            k = draw_order[0] % len(items)
            items = items[k:] + items[:k]
        items.reverse()
        return {key: shuffled(v, draw_order[1:]) for key, v in items}
    if isinstance(value, list):
        return [shuffled(v, draw_order) for v in value]
    return value


@given(params, texts, st.lists(st.integers(0, 50), max_size=4))
def test_key_order_never_matters(overrides: dict[str, Any], text: str, order: list[int]) -> None:
    provider = openai()
    messages = [LLMMessage("user", text)]
    a = request_key(provider, messages, overrides)
    b = request_key(provider, messages, shuffled(overrides, order))
    assert a == b
    assert a is None or len(a) == 64


@given(params, texts, st.sampled_from(PARAMS), values)
def test_any_wire_difference_splits_the_key(
    overrides: dict[str, Any], text: str, name: str, value: Any
) -> None:
    provider = openai()
    messages = [LLMMessage("user", text)]
    changed = {**overrides, name: value}
    # The same on the wire (a None value drops the key; 1 and 1.0 are one JSON number).
    same = json.dumps(provider.cache_request(messages, overrides), sort_keys=True) == json.dumps(
        provider.cache_request(messages, changed), sort_keys=True
    )
    a = request_key(provider, messages, overrides)
    b = request_key(provider, messages, changed)
    if a is not None and b is not None and not same:
        assert a != b


@given(texts, texts)
def test_messages_split_the_key(first: str, second: str) -> None:
    provider = openai()
    a = request_key(provider, [LLMMessage("user", first)], None)
    b = request_key(provider, [LLMMessage("user", second)], None)
    assert (a == b) == (first == second)


@given(texts, st.text(max_size=10))
def test_dicts_and_messages_give_one_key(text: str, system: str) -> None:
    from llmfanout import LLMTask

    provider = openai()
    as_dicts = LLMTask([{"role": "system", "content": system}, {"content": text, "role": "user"}])
    as_messages = LLMTask([LLMMessage("system", system), LLMMessage("user", text)])
    assert request_key(provider, as_dicts.messages, None) == request_key(
        provider, as_messages.messages, None
    )
    echo = EchoProvider()
    assert request_key(echo, as_dicts.messages, None) == request_key(
        echo, as_messages.messages, None
    )


def test_every_named_difference_splits_the_key() -> None:
    messages = [LLMMessage("user", "hi")]
    base = request_key(openai(), messages, {"temperature": 0.5})
    others = [
        request_key(openai(model="other"), messages, {"temperature": 0.5}),
        request_key(openai(base_url="http://127.0.0.1:9/v1"), messages, {"temperature": 0.5}),
        request_key(
            AnthropicProvider("gpt-x", api_key=KEY, base_url="https://api.openai.com/v1"),
            messages,
            {"temperature": 0.5},
        ),
        request_key(openai(), messages, {"temperature": 0.7}),
        request_key(openai(), messages, {"temperature": 0.5, "seed": 1}),
        request_key(openai(), messages, {"temperature": 0.5, "tools": [{"type": "function"}]}),
        request_key(openai(default_params={"top_p": 0.9}), messages, {"temperature": 0.5}),
        request_key(openai(), messages, {"temperature": 0.5}, namespace="v2"),
        request_key(openai(), [LLMMessage("user", "hi"), LLMMessage("user", "")], None),
        request_key(
            openai(),
            [
                LLMMessage("assistant", "", tool_calls=[ToolCall("c1", "f", "{}")]),
                LLMMessage("tool", "42", tool_call_id="c1"),
            ],
            {"temperature": 0.5},
        ),
    ]
    assert None not in others
    assert len({base, *others}) == len(others) + 1


def test_reading_options_do_not_split_the_key() -> None:
    messages = [LLMMessage("user", "hi")]
    provider = openai()
    base = request_key(provider, messages, {"temperature": 1})
    assert base == request_key(provider, messages, {"temperature": 1.0, "stream": True})
    assert base == request_key(
        provider, messages, {"temperature": 1, "on_text": print, "stream_options": {}}
    )
    echo = EchoProvider()
    assert request_key(echo, messages, None) == request_key(echo, messages, {"on_text": print})


def test_the_api_key_is_never_in_a_key_or_its_description() -> None:
    messages = [LLMMessage("user", "hi")]
    for provider in (openai(), AnthropicProvider("claude", api_key=KEY)):
        description = json.dumps(provider.cache_request(messages, None))
        assert KEY not in description
    # The account does not change the answer: two keys share one cache entry.
    assert request_key(openai(), messages, None) == request_key(
        openai(api_key="another-key"), messages, None
    )


@pytest.mark.parametrize("bad", [float("nan"), object()])
def test_a_request_with_no_json_form_goes_uncached(bad: object) -> None:
    assert request_key(EchoProvider(), [LLMMessage("user", "hi")], {"x": bad}) is None
