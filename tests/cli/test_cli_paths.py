"""``llmfanout run`` and ``merge`` against bad paths, hostile input and a second writer.

Every case ends with exit status 2 and one clear line on standard error, never a
traceback, and leaves the files as they were.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from test_cli import (
    PROMPTS,
    assert_each_once,
    llmfanout,
    rows,
    started,
    wait_for_rows,
    write_prompts,
)

DEEP = "[" * 100_000  # json's recursive parser gives up long before this


def assert_usage_error(done: object, *expected: str) -> None:
    returncode, stderr = done.returncode, done.stderr  # type: ignore[attr-defined]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in stderr


# -- item 13: deeply nested JSON -----------------------------------------------------------


def test_deeply_nested_input_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "fine"}\n' + DEEP + "\n")
    done = llmfanout("run", source, "-o", tmp_path / "o.jsonl", cwd=tmp_path)
    assert_usage_error(done, f"{source}:2: not valid JSON (nested too deeply")
    assert not (tmp_path / "o.jsonl").exists()


def test_deeply_nested_input_with_skip_invalid_becomes_a_failed_row(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "params": ' + DEEP + "\n")
    done = llmfanout("run", source, "-o", output, "--skip-invalid", "--quiet", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    failed = [row for row in rows(output) if not row["success"]]
    assert [row["line"] for row in failed] == [2]
    assert "nested too deeply" in failed[0]["error"]["message"]


def test_deeply_nested_output_line_stops_resume_naming_it(tmp_path: Path) -> None:
    output = tmp_path / "o.jsonl"
    good = {"id": "x", "success": True}
    output.write_text(json.dumps(good) + "\n" + '{"id": ' + DEEP + "\n")
    before = output.read_bytes()
    done = llmfanout("run", PROMPTS, "-o", output, "--resume", cwd=tmp_path)
    assert_usage_error(done, f"{output}:2: not a row written by llmfanout")
    assert output.read_bytes() == before


# -- item 14: paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("folder", [], "output 'folder' is a directory; name a file in it"),
        ("missing/o.jsonl", [], "does not exist; create it (mkdir -p"),
        ("missing/o.jsonl", ["--resume"], "does not exist; create it (mkdir -p"),
        ("afile/o.jsonl", ["--resume"], "is not a directory"),
        ("in.jsonl", ["--resume"], "is the input file; choose another output"),
    ],
)
def test_output_path_errors(tmp_path: Path, output: str, extra: list[str], message: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    write_prompts(tmp_path / "in.jsonl", 3)
    done = llmfanout("run", "in.jsonl", "-o", output, *extra, cwd=tmp_path)
    assert_usage_error(done, message)
    assert os.listdir(tmp_path / "folder") == []
    assert len(rows(tmp_path / "in.jsonl")) == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("folder", "input 'folder' is a directory"),
        ("nothing.jsonl", "input file 'nothing.jsonl' does not exist"),
    ],
)
def test_input_path_errors(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "folder").mkdir()
    done = llmfanout("run", source, "-o", "o.jsonl", cwd=tmp_path)
    assert_usage_error(done, message)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(not os.path.exists("/proc/version"), reason="needs /proc (Linux)")
def test_an_unwritable_output_is_a_usage_error(tmp_path: Path) -> None:
    """/proc/version cannot be written, not even by root (whom permission bits let pass)."""
    done = llmfanout("run", PROMPTS, "-o", "/proc/version", "--resume", cwd=tmp_path)
    assert_usage_error(done, "/proc/version")


def test_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 2)
    source.chmod(0)
    try:
        if os.access(source, os.R_OK):
            pytest.skip("running as root: permission bits do not stop reading")
        done = llmfanout("run", source, "-o", "o.jsonl", cwd=tmp_path)
        assert_usage_error(done, "cannot be read (permission denied)")
    finally:
        source.chmod(0o644)


# -- item 15: one writer per output --------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("second", [["--resume"], ["--resume", "--retry-failed"]])
def test_a_second_run_on_the_same_output_refuses_at_once(
    tmp_path: Path, backend: str, second: list[str]
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    # 40 s of work: the first run is still writing however slowly the second one starts.
    ids = write_prompts(source, 4000)
    slow = ["--echo-latency", "0.02", "--concurrency", "2", "--backend", backend]
    with started("run", source, "-o", output, *slow, cwd=tmp_path) as first:
        wait_for_rows(output, 5, first)
        done = llmfanout("run", source, "-o", output, *second, cwd=tmp_path)
        assert_usage_error(
            done,
            f"{output} is being written by another run: process {first.pid} on ",
            "then run again with --resume",
        )
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130
    written = rows(output)  # whole rows, each once: the refused run touched nothing
    assert len({row["id"] for row in written}) == len(written)
    done = llmfanout("run", source, "-o", output, "--resume", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_each_once(output, ids)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".lock")]


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 2000)  # 20 s of work: killed long before the end
    slow = ["--echo-latency", "0.02", "--concurrency", "2"]
    with started("run", source, "-o", output, *slow, cwd=tmp_path) as first:
        wait_for_rows(output, 5, first)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    done = llmfanout("run", source, "-o", output, "--resume", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_each_once(output, ids)


# -- --shared-limit: checked before anything is sent ----------------------------------------


def test_an_unreachable_shared_limit_stops_the_run_before_sending(tmp_path: Path) -> None:
    """Else every row would fail in turn (no share known) and count as done on --resume."""
    pytest.importorskip("redis")
    from support.redis_server import free_port

    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    output = tmp_path / "o.jsonl"
    done = llmfanout(
        "run", PROMPTS, "-o", output, "--shared-limit", url, "--rpm", "60", cwd=tmp_path
    )
    assert_usage_error(done, "--shared-limit: cannot reach Redis at redis://user:***@127.0.0.1:")
    assert "hunter2" not in done.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shared-limit", "http://h/0", "--rpm", "60"], "--shared-limit 'http://h/0' is not a"),
        (["--shared-limit", "redis://h/0"], "--shared-limit needs --rpm or --tpm"),
    ],
)
def test_a_bad_shared_limit_names_the_flag(tmp_path: Path, args: list[str], message: str) -> None:
    pytest.importorskip("redis")
    done = llmfanout("run", PROMPTS, "-o", tmp_path / "o.jsonl", *args, cwd=tmp_path)
    assert_usage_error(done, message)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_as_input_is_read_once_and_kept(tmp_path: Path) -> None:
    """``llmfanout run <(make-rows) -o out.jsonl``: a pipe cannot be read twice, so it is
    copied before the two passes."""
    pipe, output = tmp_path / "rows.pipe", tmp_path / "o.jsonl"
    os.mkfifo(pipe)
    text = PROMPTS.read_bytes()

    def feed() -> None:
        with pipe.open("wb") as writer:
            writer.write(text)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        done = llmfanout("run", pipe, "-o", output, "--quiet", cwd=tmp_path)
    finally:
        feeder.join(timeout=30)
    assert done.returncode == 0, done.stderr
    assert len(rows(output)) == len(text.splitlines())
