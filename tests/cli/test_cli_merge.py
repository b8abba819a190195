"""Directories of shards: ``llmfanout merge`` and ``llmfanout run --resume -o DIR``."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._rows._output_rows import merge, recover

from test_cli import (
    DEADLINE,
    assert_each_once,
    line_count,
    llmfanout,
    rows,
    started,
    wait_for_rows,
    write_prompts,
)


def shard(path: Path, *found: dict[str, Any], torn: bytes = b"") -> None:
    path.write_bytes(b"".join((json.dumps(row) + "\n").encode() for row in found) + torn)


def ok(row_id: object, content: str = "yes") -> dict[str, Any]:
    return {"id": row_id, "success": True, "content": content, "error": None}


def failed(row_id: object) -> dict[str, Any]:
    return {"id": row_id, "success": False, "content": None, "error": {"type": "X"}}


# -- merge --------------------------------------------------------------------------------


def test_merge_keeps_each_id_once_a_success_over_a_failure(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    shard(shards / "a.jsonl", failed("x"), ok("y", "first y"), failed("z"), ok(1))
    shard(shards / "b.jsonl", ok("x"), ok("y", "second y"), failed("z"), torn=b'{"id": "w"')
    shard(shards / "c.jsonl", {**failed(None), "line": 4}, {**failed(None), "line": 4})
    (shards / "notes.txt").write_text("not a shard")
    done = llmfanout("merge", shards, "-o", tmp_path / "out.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "merged 9 rows from" in done.stderr and "into 5 rows" in done.stderr
    merged = {(row["id"], row.get("line")): row for row in rows(tmp_path / "out.jsonl")}
    assert len(merged) == 5
    assert merged["x", None]["success"]  # the later success wins
    assert merged["y", None]["content"] == "first y"  # both succeeded: the first
    assert not merged["z", None]["success"]
    assert merged[1, None]["success"]
    assert (None, 4) in merged
    assert "w" not in {key for key, _ in merged}  # a torn line is no row


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["merge", "nowhere", "-o", "o.jsonl"], "'nowhere' does not exist"),
        ("corrupt", ["merge", "d", "-o", "o.jsonl"], "d/a.jsonl:2: not a row written by"),
        ("taken", ["merge", "d", "-o", "o.jsonl"], "o.jsonl exists and is not empty"),
        ("none", ["merge", "d", "-o", "d"], "output 'd' is a directory"),
    ],
)
def test_merge_errors_exit_2(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    (tmp_path / "d").mkdir()
    shard(tmp_path / "d" / "a.jsonl", ok("a"))
    if setup == "corrupt":
        with (tmp_path / "d" / "a.jsonl").open("a") as file:
            file.write("garbage\n")
    if setup == "taken":
        (tmp_path / "o.jsonl").write_text("precious\n")
    done = llmfanout(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    if setup == "taken":
        assert (tmp_path / "o.jsonl").read_text() == "precious\n"


@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=8), min_size=1, max_size=4
    )
)
def test_merge_picks_as_promised(tmp_path_factory: pytest.TempPathFactory, layout: Any) -> None:
    """Each id once; a success if any shard has one (the first), else the first failure."""
    folder = tmp_path_factory.mktemp("shards")
    expected: dict[int, tuple[int, int]] = {}
    for s, entries in enumerate(layout):
        found = []
        for n, (row_id, success) in enumerate(entries):
            found.append({"id": row_id, "success": success, "where": [s, n]})
            held = expected.get(row_id)
            if held is None or (success and not layout[held[0]][held[1]][1]):
                expected[row_id] = (s, n)
        shard(folder / f"s{s}.jsonl", *found)
    merged = merge(folder, folder / "merged.out")
    out = rows(folder / "merged.out")
    assert Counter(row["id"] for row in out) == Counter(expected.keys())
    assert {row["id"]: tuple(row["where"]) for row in out} == expected
    assert merged.written == len(expected)


# -- run --resume over a directory ---------------------------------------------------------


def test_resume_reads_a_directory_of_shards_as_done(tmp_path: Path) -> None:
    source, shards = tmp_path / "in.jsonl", tmp_path / "shards"
    ids = write_prompts(source, 20)
    shards.mkdir()
    # Two workers of a distributed job got this far before it died.
    shard(shards / "worker-0.jsonl", *(ok(i) for i in ids[:5]), failed(ids[5]))
    shard(shards / "worker-1.jsonl", *(ok(i) for i in ids[6:10]), torn=b'{"id": "row-1')
    done = llmfanout("run", source, "-o", shards, "--resume", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the failed row stays failed
    assert "10 rows to send" in done.stderr and "(10 already in" in done.stderr
    added = [p for p in shards.iterdir() if p.name.startswith("run-")]
    assert len(added) == 1
    assert sorted(row["id"] for row in rows(added[0])) == sorted(ids[10:])
    # --retry-failed sends the failed row again, into another shard.
    again = llmfanout("run", source, "-o", shards, "--resume", "--retry-failed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 rows to send" in again.stderr
    done = llmfanout("merge", shards, "-o", tmp_path / "all.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(row["success"] for row in assert_each_once(tmp_path / "all.jsonl", ids))
    # Nothing left to do: no empty shard is added.
    count = len(list(shards.iterdir()))
    done = llmfanout("run", source, "-o", shards, "--resume", "--quiet", cwd=tmp_path)
    assert done.returncode == 0 and len(list(shards.iterdir())) == count


def test_sigkill_into_a_directory_then_resume_and_merge(tmp_path: Path) -> None:
    source, shards = tmp_path / "in.jsonl", tmp_path / "shards"
    ids = write_prompts(source, 2000)  # 10 s of work: killed long before the end
    shards.mkdir()
    slow = ["--echo-latency", "0.02", "--concurrency", "4"]
    with started("run", source, "-o", shards, "--resume", *slow, cwd=tmp_path) as process:
        deadline = time.monotonic() + DEADLINE
        while not (added := list(shards.glob("run-*.jsonl"))):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        wait_for_rows(added[0], 10, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert 10 <= recover(shards).rows < 2000
    done = llmfanout("run", source, "-o", shards, "--resume", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "all.jsonl"
    assert llmfanout("merge", shards, "-o", out, "--quiet", cwd=tmp_path).returncode == 0
    assert_each_once(out, ids)
    assert line_count(out) == 2000
