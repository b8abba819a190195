"""JSON encoded once and spliced: a body with encoded values reads back as the same data."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._base._encoded import EncodedDict, EncodedList, dumps

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    plain=st.dictionaries(st.text(), values, max_size=4),
    encoded=st.dictionaries(
        st.text(),
        st.dictionaries(st.text(), values, max_size=4) | st.lists(values, max_size=4),
        max_size=3,
    ),
)
def test_a_body_with_encoded_values_reads_back_as_the_same_data(
    plain: dict[str, Any], encoded: dict[str, Any]
) -> None:
    body = dict(plain)
    for key, value in encoded.items():
        body[key] = EncodedDict(value) if isinstance(value, dict) else EncodedList(value)
    assert json.loads(dumps(body)) == json.loads(json.dumps(body))


def test_an_encoded_value_is_written_as_its_text_not_walked_again() -> None:
    fragment = EncodedDict({"type": "json_schema"})
    fragment.text = '{"type":"json_schema","marker":1}'  # what was made once is what goes
    assert json.loads(dumps({"model": "m", "response_format": fragment})) == {
        "model": "m",
        "response_format": {"type": "json_schema", "marker": 1},
    }
    assert dumps({"only": EncodedList([1, "é"])}) == '{"only":[1,"é"]}'


@pytest.mark.parametrize("payload", [[1, 2], "text", {"a": float("nan")}])
def test_anything_else_is_plain_json_and_nan_is_refused(payload: Any) -> None:
    if isinstance(payload, dict):
        with pytest.raises(ValueError, match="not JSON compliant"):
            dumps(payload)
    else:
        assert dumps(payload) == json.dumps(payload, separators=(",", ":"))


@given(value=st.dictionaries(st.text(), values, max_size=4))
def test_an_encoded_value_refuses_changes_but_copies_and_pickles_by_value(
    value: dict[str, Any],
) -> None:
    for encoded in (EncodedDict(value), EncodedList([value])):
        with pytest.raises(TypeError, match="shared by every request"):
            encoded.clear()
        for again in (
            copy.copy(encoded),
            copy.deepcopy(encoded),
            pickle.loads(pickle.dumps(encoded)),
        ):
            assert type(again) is type(encoded) and again == encoded
            assert again.text == encoded.text
