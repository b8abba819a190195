"""``llmfanout run`` end to end, in a subprocess, on asyncio and on trio.

Waits are for conditions (rows on disk, requests at the server), each with a deadline;
every subprocess is killed and reaped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llmfanout._cli._example import EXAMPLE, EXAMPLE_FILE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "src" / "llmfanout" / "examples"  # shipped in the package
PROMPTS = EXAMPLES / "prompts.jsonl"
EXAMPLE_IDS = [json.loads(raw)["id"] for raw in PROMPTS.read_text().splitlines()]
DEADLINE = 30.0  # seconds: generous, since a wait only ever ends early on success


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Keys, and what would make rich take a pipe for a terminal (or the reverse).
UNSET = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(extra)
    return env


def llmfanout(
    *args: str | Path, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmfanout", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env or environment(),
        timeout=DEADLINE,
        check=False,
    )


@contextmanager
def started(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "llmfanout", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or environment(),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=DEADLINE)


def rows(path: Path) -> list[dict[str, Any]]:
    """Every line of an output file, each of which must be a whole JSON row."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(raw) for raw in data.splitlines()]


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_rows(path: Path, count: int, process: subprocess.Popen[str]) -> int:
    """Wait (with a deadline) until ``path`` holds at least ``count`` rows; return how many."""
    deadline = time.monotonic() + DEADLINE
    while (found := line_count(path)) < count:
        assert process.poll() is None, f"exited early: {process.communicate()}"
        assert time.monotonic() < deadline, f"only {found} rows after {DEADLINE}s"
        time.sleep(0.005)
    return found


def write_prompts(path: Path, count: int, prefix: str = "row") -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"say {i}"}) + "\n" for i in ids))
    return ids


def assert_each_once(output: Path, ids: list[str]) -> list[dict[str, Any]]:
    found = rows(output)
    assert Counter(row["id"] for row in found) == Counter(ids)
    return found


def first_block(text: str, language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert found, f"no {language} block"
    return found.group(1)


def commands(block: str) -> list[str]:
    return [line.removeprefix("$ ") for line in block.splitlines() if line.startswith("$ ")]


# -- the docs' worked example ---------------------------------------------------------------


def test_the_docs_worked_example(tmp_path: Path) -> None:
    """docs/cli.md's first commands, run as written in an empty folder, twice."""
    page = (ROOT / "docs" / "cli.md").read_text()
    block = first_block(page, "console")
    assert commands(block) == [EXAMPLE_FILE, EXAMPLE]
    made = llmfanout(*shlex.split(EXAMPLE_FILE)[1:], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stderr.splitlines()[-1].strip() == EXAMPLE  # it says what to run next
    assert (tmp_path / "prompts.jsonl").read_bytes() == PROMPTS.read_bytes()
    argv = shlex.split(EXAMPLE)
    assert argv[0] == "llmfanout"
    done = llmfanout(*argv[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # What the page shows on stderr, but for the timings.
    shown_lines = [
        line for line in block.splitlines()[1:] if " ms" not in line and not line.startswith("$")
    ]
    got_lines = [line for line in done.stderr.splitlines() if " ms" not in line]
    timings = re.compile(r"wall time: [\d.]+ s, [\d,.]+ tasks/s")
    assert [timings.sub("", line) for line in got_lines] == [
        timings.sub("", line) for line in shown_lines
    ]
    shown = json.loads(first_block(page, "json"))  # the page shows one row of the output
    produced = {row["id"]: row for row in assert_each_once(tmp_path / "results.jsonl", EXAMPLE_IDS)}
    assert {**produced[shown["id"]], "duration_ms": 0} == {**shown, "duration_ms": 0}
    # Both commands again: nothing to do, nothing fails, nothing is written twice.
    assert llmfanout(*shlex.split(EXAMPLE_FILE)[1:], cwd=tmp_path).returncode == 0
    again = llmfanout(*argv[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 rows to send" in again.stderr
    assert_each_once(tmp_path / "results.jsonl", EXAMPLE_IDS)


def test_the_readme_starts_with_the_example() -> None:
    """The README's first shell block ends in the docs' worked example (which runs above)."""
    block = first_block((ROOT / "README.md").read_text(), "console")
    lines = commands(block) or [line for line in block.splitlines() if line.strip()]
    steps = [step.strip() for step in lines[0].split("&&")]
    assert [step for step in steps if step.startswith("llmfanout")] == [EXAMPLE_FILE, EXAMPLE]


def test_example_refuses_to_overwrite_another_file(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text("mine\n")
    done = llmfanout(*shlex.split(EXAMPLE_FILE)[1:], cwd=tmp_path)
    assert done.returncode == 2 and "holds something else" in done.stderr
    assert (tmp_path / "prompts.jsonl").read_text() == "mine\n"
    batch = llmfanout("example", "batch", cwd=tmp_path)
    assert batch.stdout == (EXAMPLES / "openai_batch.jsonl").read_text()


# -- the basics ---------------------------------------------------------------------------


def test_no_arguments_prints_usage_and_a_first_command(tmp_path: Path) -> None:
    done = llmfanout(cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: llmfanout")
    assert EXAMPLE in done.stderr and EXAMPLE_FILE in done.stderr


def test_run_the_example(tmp_path: Path, backend: str) -> None:
    output = tmp_path / "results.jsonl"
    done = llmfanout("run", PROMPTS, "-o", output, "--backend", backend, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # stdout stays clean: progress and summary go to stderr
    found = assert_each_once(output, EXAMPLE_IDS)
    assert all(row["success"] and row["content"].startswith("Echo: ") for row in found)
    by_id = {row["id"]: row for row in found}
    assert by_id["translate-de"]["content"] == (
        "Echo: The train to Munich leaves from platform 7 at half past nine."
    )
    assert set(by_id["capital-fr"]) == {
        "id", "success", "content", "error", "usage", "attempts", "duration_ms", "model",
        "finish_reason",
    }  # fmt: skip
    assert by_id["capital-fr"]["usage"]["total_tokens"] > 0
    assert "12 rows to send to echo (model echo), 16 at a time" in done.stderr
    assert "12 tasks: 12 ok, 0 failed, 0 aborted (12 attempts)" in done.stderr  # the summary
    assert re.search(r"time per task: p50 [\d.]+ ms", done.stderr)
    assert done.stderr.endswith(f"wrote 12 rows to {output}\n")


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    done = llmfanout("run", PROMPTS, "-o", tmp_path / "o.jsonl", "--quiet", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_reads_standard_input(tmp_path: Path, backend: str) -> None:
    output = tmp_path / "o.jsonl"
    text = PROMPTS.read_text()
    done = llmfanout(
        "run", "-", "-o", output, "--backend", backend, "--quiet", cwd=tmp_path, stdin=text
    )
    assert done.returncode == 0, done.stderr
    assert_each_once(output, EXAMPLE_IDS)


def test_refuses_to_overwrite_a_non_empty_output(tmp_path: Path) -> None:
    output = tmp_path / "o.jsonl"
    output.write_text("precious\n")
    done = llmfanout("run", PROMPTS, "-o", output, cwd=tmp_path)
    assert done.returncode == 2
    assert "exists and is not empty; pass --resume" in done.stderr
    assert output.read_text() == "precious\n"


def test_openai_batch_format(tmp_path: Path, backend: str) -> None:
    output = tmp_path / "o.jsonl"
    source = EXAMPLES / "openai_batch.jsonl"
    done = llmfanout("run", source, "-o", output, "--backend", backend, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = {
        row["id"]: row for row in assert_each_once(output, ["request-1", "request-2", "request-3"])
    }
    assert found["request-3"]["content"] == "Echo: Good morning, how are you?"
    assert {row["model"] for row in found.values()} == {"gpt-4o-mini"}  # from each body


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "'0' is not a whole number >= 1"),
        (["--provider", "openai", "--model", "m"], "needs an API key in the OPENAI_API_KEY"),
        (["--provider", "anthropic", "--model", "m"], "ANTHROPIC_API_KEY environment variable"),
        (
            ["--provider", "openai", "--echo-latency", "1"],
            "--echo-latency applies to --provider echo",
        ),
        (["--retry-failed"], "--retry-failed goes with --resume"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = llmfanout("run", PROMPTS, "-o", tmp_path / "o.jsonl", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_stops_the_run_with_advice(tmp_path: Path) -> None:
    done = llmfanout("run", PROMPTS, "-o", "/dev/full", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot write to /dev/full ([Errno 28] No space left on device)" in done.stderr
    assert "--resume" in done.stderr and "Traceback" not in done.stderr


# -- bad input ----------------------------------------------------------------------------

BAD_INPUT = [
    '{"id": "a", "prompt": "fine"}',
    "not json",
    '{"prompt": "no id"}',
    '{"id": "b"}',
    '{"id": "a", "prompt": "a duplicate"}',
    '{"id": "c", "messages": [{"role": "robot", "content": "x"}]}',
    '{"id": "d", "prompt": "also fine"}',
]


def test_skip_invalid_records_bad_lines_and_runs_the_rest(tmp_path: Path, backend: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(BAD_INPUT) + "\n")
    output = tmp_path / "o.jsonl"
    done = llmfanout(
        "run", source, "-o", output, "--skip-invalid", "--backend", backend, "--quiet", cwd=tmp_path
    )
    assert done.returncode == 1  # some rows failed
    found = rows(output)
    assert sorted(row["id"] for row in found if row["success"]) == ["a", "d"]
    failed = {row["line"]: row for row in found if not row["success"]}
    assert sorted(failed) == [2, 3, 4, 5, 6]
    assert [failed[n]["id"] for n in (2, 3, 4, 5, 6)] == [None, None, "b", None, "c"]
    assert all(
        row["error"]["type"] == "InvalidInput" and row["attempts"] == 0 for row in failed.values()
    )
    assert "duplicate id" in failed[5]["error"]["message"]
    # Resuming sends nothing more and records nothing twice.
    again = llmfanout(
        "run", source, "-o", output, "--skip-invalid", "--resume", "--quiet", cwd=tmp_path
    )
    assert again.returncode == 1
    assert rows(output) == found


# -- crashes, torn lines, interrupts, resume -----------------------------------------------


def test_sigkill_mid_run_then_resume(tmp_path: Path, backend: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 3000)  # 15 s of work: killed long before the end
    slow = ["--echo-latency", "0.02", "--concurrency", "4", "--backend", backend]
    with started("run", source, "-o", output, *slow, cwd=tmp_path) as process:
        wait_for_rows(output, 20, process)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=DEADLINE) == -signal.SIGKILL
    assert 20 <= line_count(output) < 3000  # killed mid-way
    resume = ["--resume", "--concurrency", "100", "--backend", backend]
    done = llmfanout("run", source, "-o", output, *resume, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(row["success"] for row in assert_each_once(output, ids))


def test_resume_cuts_a_torn_last_line(tmp_path: Path, backend: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 30)
    done = llmfanout("run", source, "-o", output, "--quiet", cwd=tmp_path)
    assert done.returncode == 0
    complete = output.read_bytes().splitlines(keepends=True)
    # A crash mid-write: ten whole rows, then half of the eleventh.
    output.write_bytes(b"".join(complete[:10]) + complete[10][: len(complete[10]) // 2])
    done = llmfanout("run", source, "-o", output, "--resume", "--backend", backend, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = assert_each_once(output, ids)
    assert found[:10] == [json.loads(raw) for raw in complete[:10]]
    assert "(10 already in" in done.stderr


def test_sigint_mid_run_then_resume(tmp_path: Path, backend: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(source, 600)  # 3 s of work: interrupted long before the end
    slow = ["--echo-latency", "0.02", "--concurrency", "4", "--backend", backend]
    args = ["run", source, "-o", output, *slow]
    with started(*args, cwd=tmp_path) as process:
        wait_for_rows(output, 10, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 130, stderr
    written = rows(output)  # whole rows only, each already on disk
    assert 10 <= len(written) < 600
    assert f"{len(written)} rows are safely in {output}" in stderr
    hint = stderr.rsplit("To finish, run:\n", 1)[1].strip()
    assert shlex.split(hint) == ["llmfanout", *map(str, args), "--resume"]
    done = llmfanout(*shlex.split(hint)[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(row["success"] for row in assert_each_once(output, ids))


# -- progress -----------------------------------------------------------------------------


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    import select

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmfanout", "run", PROMPTS, "-o", "o.jsonl"],
        cwd=tmp_path,
        stderr=follower,
        stdout=subprocess.DEVNULL,
        env=environment(COLUMNS="120", TERM="xterm"),
    )
    os.close(follower)
    screen = b""
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the process is done with it
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE)
        os.close(leader)
    assert process.returncode == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", screen).decode()
    assert "12/12" in text and "12 ok" in text and "0 failed" in text and "tokens" in text


def test_example_says_what_it_wrote_and_the_next_command(tmp_path: Path) -> None:
    made = llmfanout("example", "-o", "prompts.jsonl", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    lines = (tmp_path / "prompts.jsonl").read_text().count("\n")
    assert f"wrote {lines} example rows to prompts.jsonl" in made.stderr
    assert EXAMPLE in made.stderr  # the next command, as the docs give it
    again = llmfanout("example", "-o", "prompts.jsonl", cwd=tmp_path)
    assert again.returncode == 0 and EXAMPLE in again.stderr
