"""Cache keys by property: what reaches the wire splits a key, nothing else does."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    AnthropicProvider,
    EchoProvider,
    LLMMessage,
    LLMTask,
    OpenAIProvider,
    TextPart,
    ToolCall,
)
from llmfanout._cache._key import digest
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


def test_a_request_that_holds_itself_goes_uncached() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    for provider in (EchoProvider(), openai()):
        assert request_key(provider, [LLMMessage("user", "hi")], {"stop": cycle}) is None


@given(params, texts)
def test_the_pure_python_encoder_writes_the_same_key(overrides: dict[str, Any], text: str) -> None:
    """Where the C encoder cannot be used, json's own writes the same bytes."""
    import llmfanout._cache._key as key_module

    provider = openai()
    messages = [LLMMessage("user", text)]
    fast = request_key(provider, messages, overrides)
    saved = key_module._encode
    key_module._encode = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode
    try:
        assert request_key(provider, messages, overrides) == fast
    finally:
        key_module._encode = saved


# -- the fast paths write the very key the reference walk writes -----------------------------
#
# The reference below is the key as first written (llmfanout-cache-1): the general walk,
# json.dumps and SHA-256. The key's fast paths must give exactly its bytes, or every cache
# file made before would silently stop hitting.


def reference_canonical(value: Any) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(key)
            out[key] = reference_canonical(item)
        return out
    if isinstance(value, list | tuple):
        return [reference_canonical(item) for item in value]
    if attrs.has(type(value)):
        fields = attrs.asdict(value, recurse=False)
        if isinstance(value, ToolCall) and value.signature is None:
            del fields["signature"]  # added later: keys made before it must not change
        return {"__" + type(value).__name__: reference_canonical(fields)}
    raise ValueError(value)


def reference_key(
    provider: Any, messages: list[LLMMessage], overrides: Any, namespace: str = ""
) -> str | None:
    if hasattr(provider, "cache_request"):
        description = provider.cache_request(messages, overrides)
    else:
        kind = type(provider)
        description = {
            "kind": f"{kind.__module__}.{kind.__qualname__}",
            "model": getattr(provider, "model", None),
            "messages": list(messages),
            "params": {
                k: v
                for k, v in (overrides or {}).items()
                if k not in ("on_text", "stream", "stream_options")
            },
        }
    try:
        data = json.dumps(
            reference_canonical(description),
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError):
        return None
    h = hashlib.sha256(b"llmfanout-cache-1\x00")
    h.update(namespace.encode())
    h.update(b"\x00")
    h.update(data.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class Plain:
    """A provider without cache_request (the key's template path), any model."""

    def __init__(self, model: Any) -> None:
        self.model = model


class Text(str):
    pass


any_text = st.text(max_size=8) | st.text(max_size=8).map(Text)  # str subclasses too
messages_st = st.lists(
    st.builds(LLMMessage, st.sampled_from(["system", "user"]), any_text, st.none() | any_text)
    | st.builds(
        LLMMessage,
        st.just("user"),
        st.lists(st.builds(TextPart, st.text(max_size=5)), min_size=1, max_size=2),
    )
    | st.builds(
        lambda text, call_id: LLMMessage("tool", text, tool_call_id=call_id), any_text, any_text
    )
    | st.builds(
        lambda name: LLMMessage("assistant", "", tool_calls=[ToolCall("c1", name, "{}")]),
        st.text(min_size=1, max_size=5),
    ),
    max_size=3,
)
odd_scalars = st.one_of(
    scalars,
    st.floats(),  # NaN and infinities: uncached
    st.integers().map(lambda i: IntEnumLike(i % 3)),
    st.integers(-(2**70), 2**70).map(float),  # integral floats beyond 2**53
    st.builds(lambda: b"bytes"),
)
any_params = st.none() | st.dictionaries(
    st.sampled_from([*PARAMS, "on_text", "stream", "stream_options"])
    | st.text(max_size=4)
    | st.integers(0, 3),  # a key that is no string: uncached
    odd_scalars | values,
    max_size=5,
)


class IntEnumLike(enum.IntEnum):
    A = 0
    B = 1
    C = 2


@given(
    st.none() | st.text(max_size=6) | st.integers(0, 5) | st.floats(allow_nan=False),
    messages_st,
    any_params,
    st.text(max_size=4),
)
def test_the_template_path_writes_the_reference_key(
    model: Any, messages: list[LLMMessage], overrides: Any, namespace: str
) -> None:
    provider = Plain(model)
    assert request_key(provider, messages, overrides, namespace) == reference_key(
        provider, messages, overrides, namespace
    )


@given(messages_st.filter(bool), any_params)
def test_the_general_path_writes_the_reference_key(
    messages: list[LLMMessage], overrides: Any
) -> None:
    provider = openai()
    assert request_key(provider, messages, overrides) == reference_key(
        provider, messages, overrides
    )


def test_keys_never_change_across_versions() -> None:
    """Keys written before stay the keys: a cache file keeps hitting after an upgrade.

    Pinned where the key module alone decides the bytes: the fallback description (a
    provider without ``cache_request``) and a fixed description. A provider whose wire
    format changes changes its keys, rightly: what it sends is not what it sent.
    """
    task = LLMTask(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi é ☃"}]
    )
    params = {"temperature": 0.5, "seed": 1, "max_tokens": 10.0, "stop": ["x"], "on_text": print}
    tools = [
        LLMMessage("user", [{"type": "text", "text": "a"}]),
        LLMMessage("assistant", "", tool_calls=[ToolCall("c1", "f", '{"a":1}')]),
        LLMMessage("tool", "r", tool_call_id="c1"),
    ]
    body = {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi é ☃"}],
        "temperature": 0.5,
        "seed": 1,
        "max_tokens": 10.0,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    described = {"kind": "openai", "endpoint": "https://api.openai.com/v1/chat/completions"}
    echo = EchoProvider()
    got = [
        request_key(echo, task.messages, None),
        request_key(echo, task.messages, params),
        request_key(echo, task.messages, None, "ns"),
        request_key(echo, tools, None),
        digest({**described, "headers": {}, "body": body}),
    ]
    assert got == [
        "4a191532f27aa24f5fcb6d35e6fbd6329f392d57830456bf5414931792c8ef77",
        "eb654bc61640aa585db6c3ff98e985e20af2e8b4093d82ac9178c96408702bbc",
        "4d14a418390d3fc5e67f5500ade3957ac1dc11d124ea9bdf46f3644e1dd666c4",
        "7f23763f05131097184c6f93e26e99be58817087739d8f7e14a7a4bbaceab6f3",
        "ad74e7c8e5b265145deaf0b38dfc5e12a02fd5072e46cc8f8a4bce2e125e4216",
    ]
    assert got[-1] == reference_key(Described({**described, "headers": {}, "body": body}), [], None)


class Described:
    """A provider whose ``cache_request`` returns a fixed description."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.description = description

    def cache_request(self, messages: Any, overrides: Any) -> dict[str, Any]:
        return self.description
