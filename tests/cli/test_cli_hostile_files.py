"""Outputs that are pipes, devices or links (issue 23, items 8 and 13).

A pipe or a terminal can be written to (rows go straight through, no fsync); only regular
files are read back (shards, an output to resume), anything else is exit 2 naming the
file; the lock is never made through a link. Never a hang, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmfanout._rows import _output_rows
from llmfanout._rows._lock import lock_path
from llmfanout._rows._output_rows import OutputCorrupt, recover

from test_cli import environment, llmfanout, write_prompts

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def assert_refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


def through_a_fifo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run llmfanout with ``tmp_path/pipe`` a FIFO that a thread reads; what it read."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    try:
        done = llmfanout(*args, cwd=tmp_path)
    finally:
        if reader.is_alive():  # llmfanout never opened it: let the reader go
            with open(fifo, "wb"):
                pass
        reader.join()
    return done, received[0]


def test_rows_written_to_a_fifo_all_arrive(tmp_path: Path) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 20)
    done, received = through_a_fifo(tmp_path, "run", "in.jsonl", "-o", "pipe", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["id"] for line in received.splitlines()) == sorted(ids)


def test_rows_written_to_dev_stdout_through_a_pipe_all_arrive(tmp_path: Path) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 20)
    done = subprocess.run(
        [sys.executable, "-m", "llmfanout", "run", "in.jsonl", "-o", "/dev/stdout", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert sorted(json.loads(line)["id"] for line in done.stdout.splitlines()) == sorted(ids)
    assert not os.path.exists("/dev/.stdout.lock")


def test_resuming_a_fifo_is_refused_not_a_hang(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 2)
    os.mkfifo(tmp_path / "pipe")
    done = llmfanout("run", "in.jsonl", "-o", "pipe", "--resume", cwd=tmp_path)
    assert_refused(done, "pipe", "regular file")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_shard_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    write_prompts(tmp_path / "in.jsonl", 2)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text("")
    if kind == "fifo":
        os.mkfifo(shards / "b.jsonl")
    else:
        os.symlink("/dev/zero", shards / "b.jsonl")
    merged = llmfanout("merge", "shards", "-o", "merged.jsonl", cwd=tmp_path)
    assert_refused(merged, "b.jsonl", "not a regular file")
    resumed = llmfanout("run", "in.jsonl", "-o", "shards", "--resume", cwd=tmp_path)
    assert_refused(resumed, "b.jsonl", "not a regular file")


def test_a_lock_planted_as_a_link_is_never_followed(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 2)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, lock_path(str(tmp_path / "out.jsonl")))
    done = llmfanout("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert_refused(done, "lock")
    assert target.read_text() == "keep me"


def test_merge_into_a_fifo_writes_into_it_and_leaves_it_a_fifo(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    row = {"success": True, "content": "yes", "error": None}
    (shards / "a.jsonl").write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in (1, 2)))
    (shards / "b.jsonl").write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in (2, 3)))
    os.mkfifo(tmp_path / "pipe")
    # The read end held open (without blocking) across the run: whatever merge does to
    # the path, the test never hangs, and reads what reached the pipe (a few rows fit in
    # its buffer).
    reader = os.open(tmp_path / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        done = llmfanout("merge", "shards", "-o", "pipe", cwd=tmp_path)
        received = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "into 3 rows in pipe" in done.stderr
    assert sorted(json.loads(line)["id"] for line in received.splitlines()) == [1, 2, 3]
    assert (tmp_path / "pipe").is_fifo()  # not replaced by a regular file
    assert not list(tmp_path.glob("*.llmfanout-tmp"))


def test_example_to_a_fifo_writes_without_reading_it(tmp_path: Path) -> None:
    done, received = through_a_fifo(tmp_path, "example", "-o", "pipe")
    assert done.returncode == 0, done.stderr
    assert received.count(b"\n") > 5


def test_a_line_longer_than_the_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output_rows, "MAX_LINE_BYTES", 100)
    output = tmp_path / "out.jsonl"
    row = {"id": 1, "success": True}
    output.write_text(json.dumps(row) + "\n" + json.dumps({**row, "content": "x" * 200}) + "\n")
    with pytest.raises(OutputCorrupt, match=r"out\.jsonl:2: a line longer than 100 bytes"):
        recover(output)
