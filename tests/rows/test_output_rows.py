"""Output rows: building, encoding and writing them; recovering a file or shards; merging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmfanout import TaskResult
from llmfanout._base._types import LLMResponse
from llmfanout._rows._idset import IdSet
from llmfanout._rows._input_rows import Bad, key_of
from llmfanout._rows._output_rows import (
    RowWriter,
    bad_row,
    cut_torn_line,
    drop_failed,
    encode,
    recover,
    recover_into,
    result_row,
)


def line(row: Any) -> bytes:
    return (json.dumps(row) + "\n").encode()


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


# Few ids, so that rows repeat them: str and int ids (7 and "7" are distinct), a lone
# surrogate, and None (a bad input line's row with no id).
IDS = st.sampled_from(["a", "b", "\ud800", "7", 7, 8, None])
ROWS = st.lists(
    st.one_of(
        st.builds(
            lambda row_id, ok, bad, number: (
                {"id": row_id, "success": ok} | ({"line": number} if bad and not ok else {})
            ),
            IDS,
            st.booleans(),
            st.booleans(),
            st.integers(1, 9),
        ),
        st.just(None),  # a blank line
    ),
    max_size=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=ROWS,
    torn=st.sampled_from([b"", b'{"id": "b", "succ', b'{"id": "z", "success": true}']),
    retry_failed=st.booleans(),
    cap=st.integers(0, 3),
)
def test_recover_into_adds_the_ids_recover_finds(
    tmp_path: Path, rows: list[Any], torn: bytes, retry_failed: bool, cap: int
) -> None:
    """The ids streamed into an IdSet (spilling past a tiny cap) are the old sets' ids."""
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(b"\n" if r is None else line(r) for r in rows) + torn)
    old = recover(output)
    if retry_failed:
        old.forget_failed()
    with IdSet(cap=cap) as done:
        tail = recover_into(output, done, retry_failed=retry_failed)
        candidates = [key_of(i) for i in ["a", "b", "\ud800", "7", 7, 8, "z"]]
        held = done.contains_many(candidates)
        assert {k for k, h in zip(candidates, held, strict=True) if h} == old.keys
        assert len(done) == len(old.keys)
    assert (tail.size, tail.torn) == (old.size, old.torn)


def test_recover_into_refuses_a_corrupt_complete_line(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(line({"id": "a", "success": True}) + b"garbage\n")
    with IdSet() as done, pytest.raises(ValueError, match=r"out.jsonl:2: not a row written"):
        recover_into(output, done, retry_failed=True)


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
    ok = result_row(TaskResult("0", True, response, None, 1.23456, 1), "a", "m", str)
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
    failed = result_row(
        TaskResult("1", False, None, error, 2.0, 3), 7, "m", lambda s: s.replace("sk-secret", "***")
    )
    assert failed["id"] == 7
    assert failed["error"] == {"type": "RuntimeError", "message": "key *** leaked"}
    assert (failed["model"], failed["attempts"], failed["content"]) == ("m", 3, None)
    assert bad_row(Bad(4, None, "why"))["line"] == 4
    assert bad_row(Bad(5, '"k"', "why"))["id"] == "k"


def test_result_row_keeps_a_lone_surrogate_valid() -> None:
    response = LLMResponse("x\ud800y")
    raw = encode([result_row(TaskResult("0", True, response, None, 1.0, 1), "a", "m", str)])
    raw.decode("utf-8")  # valid UTF-8
    assert json.loads(raw)["content"] == "x\ud800y"
