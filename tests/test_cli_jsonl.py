"""The CLI's JSONL layer: parsing rows, the two input passes, resume recovery, the writer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from llmfanout import LLMMessage, LLMTask, TaskResult
from llmfanout._jsonl import (
    Bad,
    BadRow,
    Recovered,
    RowWriter,
    bad_row,
    cut_torn_line,
    drop_failed,
    parse_row,
    read_rows,
    recover,
    result_row,
    scan,
)
from llmfanout._types import LLMResponse


def line(row: Any) -> bytes:
    return (json.dumps(row) + "\n").encode()


def jsonl(*rows: Any) -> io.BytesIO:
    return io.BytesIO(b"".join(r if isinstance(r, bytes) else line(r) for r in rows))


# -- parse_row ----------------------------------------------------------------------------


def test_prompt_row() -> None:
    key, messages, params = parse_row(line({"id": "q1", "prompt": "hi"}))
    assert (key, messages, params) == ('"q1"', (LLMMessage("user", "hi"),), None)


def test_messages_row_with_params() -> None:
    row = {
        "id": 7,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        "params": {"temperature": 0, "model": "m"},
    }
    key, messages, params = parse_row(line(row))
    assert key == "7"
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
    key, messages, params = parse_row(line(row))
    assert key == '"request-1"'
    assert messages == (LLMMessage("user", "ab"),)
    assert params == {"model": "gpt-4o-mini", "max_tokens": 5}


def test_int_and_string_ids_are_distinct_keys() -> None:
    assert (
        parse_row(line({"id": 7, "prompt": "x"}))[0]
        != parse_row(line({"id": "7", "prompt": "x"}))[0]
    )


@pytest.mark.parametrize(
    ("raw", "reason", "key"),
    [
        (b"not json\n", "not valid JSON", None),
        (line([1, 2]), "a JSON list, not an object", None),
        (line({"prompt": "x"}), 'no "id"', None),
        (line({"id": True, "prompt": "x"}), '"id" is true; give a string or an integer', None),
        (line({"id": "", "prompt": "x"}), '"id" is empty', None),
        (line({"id": "a"}), 'no "prompt" or "messages"', '"a"'),
        (line({"id": "a", "prompt": " "}), '"prompt" must be a non-empty string', '"a"'),
        (line({"id": "a", "prompt": "x", "messages": []}), 'both "prompt" and "messages"', '"a"'),
        (line({"id": "a", "messages": []}), '"messages" must be a non-empty list', '"a"'),
        (
            line({"id": "a", "messages": [{"role": "bot", "content": "x"}]}),
            'messages[0].role is "bot"; use one of assistant, system, tool, user',
            '"a"',
        ),
        (
            line({"id": "a", "messages": [{"role": "user", "content": 3}]}),
            "messages[0].content must be a string, not int",
            '"a"',
        ),
        (
            line({"id": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "has a 'image_url' part; only text parts are supported",
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
    assert isinstance(first, LLMTask)
    assert first.tag == "0"
    assert CountingFile.lines_read == 1


def test_read_rows_skips_recorded_ids_and_lines() -> None:
    source = jsonl({"id": "a", "prompt": "x"}, b"bad\n", {"id": "b", "prompt": "y"}, b"bad\n")
    bad = {2: Bad(2, None, "r2"), 4: Bad(4, None, "r4")}
    recorded = Recovered(keys={'"a"'}, lines={2})
    rows = list(read_rows(source, bad, recorded))
    assert [getattr(r, "tag", r) for r in rows] == ['"b"', Bad(4, None, "r4")]


# -- recovery and the writer ------------------------------------------------------------


def test_recover_cuts_a_torn_last_line(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    whole = line({"id": "a", "success": True}) + line({"id": None, "success": False, "line": 3})
    output.write_bytes(whole + b'{"id": "b", "succ')
    found = recover(output)
    assert (found.keys, found.lines, found.rows, found.failed) == ({'"a"'}, {3}, 2, 1)
    assert (found.size, found.torn) == (len(whole), len(b'{"id": "b", "succ'))
    cut_torn_line(output, found)
    assert output.read_bytes() == whole


def test_recover_refuses_a_corrupt_complete_line(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(line({"id": "a", "success": True}) + b"garbage\n")
    with pytest.raises(ValueError, match=r"out.jsonl:2: not a row written by llmfanout"):
        recover(output)


def test_drop_failed_keeps_successes_and_bad_line_rows(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    keep = [
        line({"id": "a", "success": True}),
        line({"id": "c", "success": False, "line": 9}),  # a bad input line: rerunning is futile
    ]
    output.write_bytes(keep[0] + line({"id": "b", "success": False}) + keep[1])
    found = recover(output)
    assert found.rerunnable == {'"b"'}
    found.forget_failed()
    drop_failed(output)
    assert output.read_bytes() == b"".join(keep)
    assert (found.keys, found.rows, found.failed) == ({'"a"', '"c"'}, 2, 1)
    again = recover(output)
    assert (again.keys, again.rows, again.failed, again.rerunnable) == (found.keys, 2, 1, set())


def test_writer_appends_whole_lines_and_syncs(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"earlier\n")
    writer = RowWriter(output, sync_rows=2, sync_seconds=3600)
    writer.write(b"one\n")
    assert writer._unsynced == 1
    writer.write(b"two\n")
    assert writer._unsynced == 0  # synced after sync_rows rows
    writer.close()
    writer.close()
    assert output.read_bytes() == b"earlier\none\ntwo\n"
    assert writer.rows == 2


def test_result_rows() -> None:
    response = LLMResponse("hé", model="m-1", finish_reason="stop", usage={"total_tokens": 3})
    ok = json.loads(result_row(TaskResult('"a"', True, response, None, 1.23456, 1), "m", str))
    assert ok == {
        "id": "a",
        "success": True,
        "content": "hé",
        "error": None,
        "usage": {"total_tokens": 3},
        "attempts": 1,
        "duration_ms": 1.235,
        "model": "m-1",
        "finish_reason": "stop",
    }
    error = RuntimeError("key sk-secret leaked")
    raw = result_row(
        TaskResult("7", False, None, error, 2.0, 3), "m", lambda s: s.replace("sk-secret", "***")
    )
    failed = json.loads(raw)
    assert failed["id"] == 7
    assert failed["error"] == {"type": "RuntimeError", "message": "key *** leaked"}
    assert (failed["model"], failed["attempts"], failed["content"]) == ("m", 3, None)
    assert json.loads(bad_row(Bad(4, None, "why")))["line"] == 4


def test_result_row_keeps_a_lone_surrogate_valid() -> None:
    response = LLMResponse("x\ud800y")
    raw = result_row(TaskResult('"a"', True, response, None, 1.0, 1), "m", str)
    raw.decode("utf-8")  # valid UTF-8
    assert json.loads(raw)["content"] == "x\ud800y"


def test_read_rows_survives_an_input_changed_since_the_first_pass() -> None:
    source = jsonl({"id": "a", "prompt": "x"}, b"edited meanwhile\n")
    rows = list(read_rows(source, {}, None))  # the first pass found no bad line
    assert isinstance(rows[0], LLMTask)
    assert isinstance(rows[1], Bad) and rows[1].line == 2
    assert rows[1].reason.endswith("(the input changed during the run)")
