"""The JSON encoder made once (``_base/_json.py``) writes what json's own writes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._base import _json
from llmfanout._base._json import encoder

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # nan, inf and -0.0 included
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
options = st.fixed_dictionaries(
    {
        "ensure_ascii": st.booleans(),
        "separators": st.sampled_from([(", ", ": "), (",", ":")]),
        "sort_keys": st.booleans(),
        "allow_nan": st.booleans(),
    }
)


def _outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return "text", encode(value)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@given(values, options)
def test_it_writes_what_json_writes(value: Any, chosen: dict[str, Any]) -> None:
    """The same text for any JSON value and options, or the same error (a NaN refused)."""
    assert _outcome(encoder(**chosen), value) == _outcome(json.JSONEncoder(**chosen).encode, value)


def test_a_value_json_cannot_write_is_refused_alike() -> None:
    ours, theirs = _outcome(encoder(), {"a": object()}), _outcome(json.dumps, {"a": object()})
    assert ours[0] == theirs[0] == "TypeError"
    assert _outcome(encoder(allow_nan=False), [math.inf])[0] == "ValueError"


def test_without_the_c_encoder_it_is_json_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = encoder(sort_keys=True)
    assert encode({"b": 1, "a": [2]}) == '{"a": [2], "b": 1}'
    assert getattr(encode, "__self__", None).__class__ is json.JSONEncoder


def test_a_c_encoder_that_writes_otherwise_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another interpreter's ``_json`` whose output differs: json's own encode is used."""

    def make(*args: Any) -> Any:
        return lambda value, level: ["not the same"]

    monkeypatch.setattr(json.encoder, "c_make_encoder", make)
    assert encoder()(_json._SAMPLE) == json.dumps(_json._SAMPLE)
