"""Input rows: parsing and checking rows, the two passes over a file, rows as mappings."""

from __future__ import annotations

import codecs
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage
from llmfanout._base._messages import ImagePart, TextPart, ToolCall
from llmfanout._rows._input_rows import (
    Bad,
    BadRow,
    ParsedRow,
    key_of,
    load_json,
    parse_row,
    read_rows,
    scan,
)
from llmfanout._rows._output_rows import Recovered


def line(row: Any) -> bytes:
    return (json.dumps(row) + "\n").encode()


def jsonl(*rows: Any) -> io.BytesIO:
    return io.BytesIO(b"".join(r if isinstance(r, bytes) else line(r) for r in rows))


# -- parse_row ----------------------------------------------------------------------------


def test_prompt_row() -> None:
    parsed = parse_row(line({"id": "q1", "prompt": "hi"}))
    assert parsed == ParsedRow('"q1"', "q1", (LLMMessage("user", "hi"),), None)


def test_messages_row_with_params() -> None:
    row = {
        "id": 7,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        "params": {"temperature": 0, "model": "m"},
    }
    key, row_id, messages, params = parse_row(line(row))
    assert (key, row_id) == ("7", 7)
    assert messages == (LLMMessage("system", "be brief"), LLMMessage("user", "hi", "ann"))
    assert params == {"temperature": 0, "model": "m"}


def test_openai_batch_row() -> None:
    row = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_tokens": 5,
            "stream": False,
        },
    }
    key, row_id, messages, params = parse_row(line(row))
    assert (key, row_id) == ('"request-1"', "request-1")
    assert messages == (LLMMessage("user", (TextPart("a"), TextPart("b"))),)
    assert params == {"model": "gpt-4o-mini", "max_tokens": 5}


def test_images_tool_calls_and_tool_answers_are_read_as_the_library_reads_them() -> None:
    row = {
        "id": "t",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
    }  # fmt: skip
    user, assistant, tool = parse_row(line(row)).messages
    assert user.content == (TextPart("what is this?"), ImagePart("https://example.com/a.png"))
    assert assistant.tool_calls == (ToolCall("c1", "f", "{}"),)
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "c1", "42")


def test_int_and_string_ids_are_distinct_keys() -> None:
    assert (
        parse_row(line({"id": 7, "prompt": "x"}))[0]
        != parse_row(line({"id": "7", "prompt": "x"}))[0]
    )


@pytest.mark.parametrize(
    ("raw", "reason", "key"),
    [
        (b"not json\n", "not valid JSON", None),
        (line([1, 2]), "a JSON array, not an object", None),
        (line({"prompt": "x"}), 'no "id"', None),
        (line({"id": True, "prompt": "x"}), '"id" is true; give a string or an integer', None),
        (line({"id": "", "prompt": "x"}), '"id" is empty', None),
        (line({"id": "a"}), 'no "prompt" or "messages"', '"a"'),
        (line({"id": "a", "prompt": " "}), '"prompt" must be a non-empty string', '"a"'),
        (line({"id": "a", "prompt": "x", "messages": []}), 'both "prompt" and "messages"', '"a"'),
        (line({"id": "a", "messages": []}), '"messages" must be a non-empty list', '"a"'),
        (
            line({"id": "a", "messages": [{"role": "bot", "content": "x"}]}),
            "messages[0].role is 'bot'; use one of assistant, system, tool, user",
            '"a"',
        ),
        (
            line({"id": "a", "messages": [{"role": "user", "content": 3}]}),
            "messages[0].content must be a str or a list of content parts, not int",
            '"a"',
        ),
        (
            line({"id": "a", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
            "messages[0].content[0] has type 'audio'; use 'text' or 'image_url'",
            '"a"',
        ),
        (line({"id": "a", "prompt": "x", "params": [1]}), '"params" must be an object', '"a"'),
        (
            line({"custom_id": "b", "url": "/v1/embeddings", "body": {}}),
            "POST /v1/embeddings is not supported",
            '"b"',
        ),
        (line({"custom_id": "b", "body": None}), '"body" must be an object', '"b"'),
        (line({"custom_id": "b", "body": {"model": "m"}}), '"body.messages" must be', '"b"'),
        (b"\xff\xfe{}\n", "not valid JSON", None),
    ],
)
def test_bad_rows_say_why(raw: bytes, reason: str, key: str | None) -> None:
    with pytest.raises(BadRow) as caught:
        parse_row(raw)
    assert reason in caught.value.reason
    assert caught.value.key == key


# -- the two passes ---------------------------------------------------------------------


def test_scan_reports_every_bad_line_with_its_number() -> None:
    source = jsonl(
        {"id": "a", "prompt": "x"},
        b"{oops\n",
        b"\n",  # blank lines are not rows
        {"id": "a", "prompt": "again"},
        {"id": "b"},
        {"id": "b", "prompt": "dup of a bad row"},
        {"id": "c", "prompt": "fine", "params": {"model": "m"}},
    )
    found = scan(source)
    assert found.rows == 2
    assert sorted(found.bad) == [2, 4, 5, 6]
    assert "not valid JSON" in found.bad[2].reason
    assert found.bad[4] == Bad(
        4, None, 'duplicate id "a" (first used on line 1); ids must be unique'
    )
    assert found.bad[5].key == '"b"'
    assert "first used on line 5" in found.bad[6].reason
    assert (found.first_model, found.line_without_model) == ("m", 1)


def test_read_rows_is_lazy() -> None:
    """The second pass reads as tasks are taken: a huge file is never held whole."""

    class CountingFile(io.BytesIO):
        lines_read = 0

        def __next__(self) -> bytes:
            CountingFile.lines_read += 1
            return super().__next__()

    source = CountingFile(b"".join(line({"id": i, "prompt": f"p{i}"}) for i in range(1000)))
    rows = read_rows(source, {}, None)
    first = next(rows)
    assert isinstance(first, ParsedRow)
    assert first.id == 0
    assert CountingFile.lines_read == 1


def test_read_rows_skips_recorded_ids_and_lines() -> None:
    source = jsonl({"id": "a", "prompt": "x"}, b"bad\n", {"id": "b", "prompt": "y"}, b"bad\n")
    bad = {2: Bad(2, None, "r2"), 4: Bad(4, None, "r4")}
    recorded = Recovered(keys={'"a"'}, lines={2})
    rows = list(read_rows(source, bad, recorded))
    assert [r.key if isinstance(r, ParsedRow) else r for r in rows] == ['"b"', Bad(4, None, "r4")]


def test_read_rows_survives_an_input_changed_since_the_first_pass() -> None:
    source = jsonl({"id": "a", "prompt": "x"}, b"edited meanwhile\n")
    rows = list(read_rows(source, {}, None))  # the first pass found no bad line
    assert isinstance(rows[0], ParsedRow)
    assert isinstance(rows[1], Bad) and rows[1].line == 2
    assert rows[1].reason.endswith("(the input changed during the run)")


@given(
    st.one_of(
        st.text(),
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_a_row_id_is_keyed_by_its_json_text(value: object) -> None:
    assert key_of(value) == json.dumps(value)


def test_lines_are_read_as_json_reads_bytes() -> None:
    for raw in (b'{"a": "\xc3\xa9"}', codecs.BOM_UTF8 + b"{}", b'"\xed\xa0\x80"', b"[1, 2]"):
        assert load_json(raw) == json.loads(raw)
    with pytest.raises(UnicodeDecodeError, match="utf-8"):
        load_json(b'{"a": "\xff"}')
