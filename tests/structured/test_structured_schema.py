"""Schemas without a server: the three kinds, error trimming, strict copies, properties."""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import jsonschema
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMTask
from llmfanout._structured._fastcheck import _compile, compile_check
from llmfanout._structured._request import strict_schema
from llmfanout._structured._schema import schema_for
from llmfanout._structured._trim import trim_errors


class Item(pydantic.BaseModel):
    sku: str
    qty: int = 1


def test_pydantic_errors_name_the_field() -> None:
    checked = schema_for(model=Item).check('{"sku": 3, "qty": "x"}')
    assert checked.value is None
    assert checked.errors[0].startswith("sku: ") and checked.errors[1].startswith("qty: ")


def test_a_fenced_answer_is_read() -> None:
    assert schema_for(model=Item).check('```json\n{"sku": "a"}\n```').value == Item(sku="a")
    schema = {"type": "object"}
    assert schema_for(schema=schema).check('```\n{"a": 1}\n```').value == {"a": 1}


def test_one_schema_per_model() -> None:
    assert schema_for(model=Item) is schema_for(model=Item)
    a = LLMTask([{"role": "user", "content": "x"}], response_model=Item)
    b = LLMTask([{"role": "user", "content": "y"}], response_model=Item)
    assert a.structured is not None and b.structured is not None
    assert a.structured.schema is b.structured.schema


def test_trim_keeps_few_short_distinct_errors() -> None:
    errors = [f"f{i}: {'x' * 500}" for i in range(15)] + ["f0: " + "x" * 500]
    trimmed = trim_errors(errors)
    assert len(trimmed) == 11 and trimmed[-1] == "... and 5 more errors"
    assert all(len(line) <= 200 for line in trimmed)


def test_strict_copy_closes_objects_and_leaves_the_original() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}},
    }
    tight, strict = strict_schema(schema)
    assert strict and tight["required"] == ["a"] and tight["additionalProperties"] is False
    assert tight["properties"]["a"]["additionalProperties"] is False
    assert "required" not in schema
    _, strict = strict_schema({"type": "object", "additionalProperties": True})
    assert not strict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"response_model": Item, "response_schema": {}}, "not both"),
        ({"response_schema": {"type": 3}}, "response_schema is not a valid JSON Schema"),
        ({"response_schema": "object"}, "response_schema is str"),
        ({"response_model": 5}, "response_model is int"),
        ({"response_model": Item, "max_reasks": -1}, "max_reasks is -1"),
        ({"response_model": Item, "token_budget": 0}, "token_budget is 0"),
        ({"max_reasks": 5}, "apply to a task with response_model"),
    ],
)
def test_bad_schema_options_name_the_task_and_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message) as caught:
        LLMTask([{"role": "user", "content": "x"}], tag="doc-7", **kwargs)
    assert "'doc-7'" in str(caught.value)


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(ImportError, match=r"llmfanout\[jsonschema\]"):
        schema_for(schema={"type": "object", "title": "fresh-for-this-test"})
    monkeypatch.setitem(sys.modules, "pydantic", None)
    with pytest.raises(ImportError, match=r"llmfanout\[pydantic\]"):
        schema_for(model=list[int])


# -- property: random schemas, random valid instances ------------------------------------------

SCALARS = {
    "string": st.text(max_size=20),
    "integer": st.integers(-(10**9), 10**9),
    "number": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "boolean": st.booleans(),
    "null": st.none(),
}


def _schema_and_instances(depth: int) -> st.SearchStrategy[tuple[dict[str, Any], Any]]:
    scalar = st.sampled_from(sorted(SCALARS)).flatmap(
        lambda kind: st.tuples(st.just({"type": kind}), SCALARS[kind])
    )
    enum = st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).flatmap(
        lambda values: st.tuples(st.just({"enum": values}), st.sampled_from(values))
    )
    if depth == 0:
        return scalar | enum
    child = _schema_and_instances(depth - 1)
    array = child.flatmap(
        lambda pair: st.tuples(
            st.just({"type": "array", "items": pair[0]}),
            st.lists(st.just(pair[1]), max_size=3),
        )
    )
    names = st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), max_size=4, unique=True)
    obj = names.flatmap(
        lambda keys: st.tuples(*(child for _ in keys)).map(
            lambda pairs, keys=keys: (
                {
                    "type": "object",
                    "properties": {k: p[0] for k, p in zip(keys, pairs, strict=True)},
                    "required": list(keys),
                },
                {k: p[1] for k, p in zip(keys, pairs, strict=True)},
            )
        )
    )
    return scalar | enum | array | obj


@given(_schema_and_instances(2))
def test_random_valid_instances_round_trip(pair: tuple[dict[str, Any], Any]) -> None:
    schema, instance = pair
    checked = schema_for(schema=schema).check(json.dumps(instance))
    assert checked.errors == ()
    assert checked.value == instance


@given(_schema_and_instances(2))
def test_the_strict_copy_sent_accepts_every_complete_instance(
    pair: tuple[dict[str, Any], Any],
) -> None:
    schema, instance = pair
    tight, strict = strict_schema(schema)
    assert strict
    checked = schema_for(schema=tight).check(json.dumps(instance))
    assert checked.errors == () and checked.value == instance


@given(_schema_and_instances(2), _schema_and_instances(2))
def test_the_quick_check_accepts_only_what_jsonschema_accepts(
    pair: tuple[dict[str, Any], Any], other: tuple[dict[str, Any], Any]
) -> None:
    schema, valid = pair
    quick = compile_check(schema)
    assert quick is not None and quick(valid)
    stranger = other[1]  # usually invalid for ``schema``
    if quick(stranger):
        assert jsonschema.Draft202012Validator(schema).is_valid(stranger)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), inner, max_size=3)
    ),
    max_leaves=8,
)
RICH = [
    {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}},
    {"properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["a"]},
    {"type": ["number", "string"], "minimum": 0, "maxLength": 2},
    {"type": "array", "items": {"const": 1}, "minItems": 1, "maxItems": 2},
    {"items": {"type": "object", "required": ["b"], "properties": {"b": {"enum": [1, "x"]}}}},
    {"type": "object", "properties": {"a": {"type": "object", "additionalProperties": {}}}},
]


@given(_schema_and_instances(2) | st.sampled_from(RICH).map(lambda s: (s, None)), JSON)
def test_the_generated_check_says_what_the_closures_say(
    pair: tuple[dict[str, Any], Any], instance: Any
) -> None:
    """The quick check is one generated function; the closures it replaces define it."""
    schema, valid = pair
    generated, closures = compile_check(schema), _compile(schema)
    assert generated is not None and generated is not closures
    for value in (instance, valid):
        assert generated(value) == closures(value)
        if generated(value):
            assert jsonschema.Draft202012Validator(schema).is_valid(value)


def test_a_schema_too_deep_for_one_function_keeps_the_closures() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(30):  # more nested loops than Python compiles in one function
        schema = {"type": "array", "items": schema}
    quick = compile_check(schema)
    assert quick is not None
    value: Any = 1
    for _ in range(30):
        value = [value]
    assert quick(value) and not quick([[["x"]]])


def test_unknown_keywords_leave_every_answer_to_jsonschema() -> None:
    assert compile_check({"type": "string", "pattern": "^a"}) is None
    assert compile_check({"enum": [[1]]}) is None
    assert compile_check({"type": "integer"})(3.0)  # 3.0 is an integer to JSON Schema
    assert not compile_check({"type": "integer"})(True)


def test_with_parsed_keeps_every_other_field_of_the_answer() -> None:
    """``with_parsed`` builds the answer field by field (faster than attrs.evolve): a field
    added to LLMResponse must be added there too, or this fails."""
    from llmfanout._base._advertised import RateLimitInfo
    from llmfanout._base._types import LLMResponse, ToolCall
    from llmfanout._structured._loop import with_parsed

    answer = LLMResponse(
        "raw?",
        model="m",
        finish_reason="stop",
        usage={"prompt_tokens": 1},
        metadata={"raw": {}},
        tool_calls=(ToolCall("c1", "f", "{}"),),
        rate_limits=RateLimitInfo(),
    )
    made = with_parsed(answer, "raw", {"n": 1}, {"prompt_tokens": 2})
    expected = {f.name: getattr(answer, f.name) for f in attrs.fields(LLMResponse)}
    expected.update(content="raw", parsed={"n": 1}, usage={"prompt_tokens": 2})
    assert {f.name: getattr(made, f.name) for f in attrs.fields(LLMResponse)} == expected
