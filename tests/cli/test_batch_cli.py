"""``llmfanout batch submit|wait|status|cancel`` end to end, in subprocesses.

The fake batch server runs in a thread; batches move when the test moves them (or one
step per poll with ``advance_on_poll``). Waits are for conditions (a file on the server,
a poll, rows on disk), each with a deadline; kills are SIGKILL, and every subprocess is
reaped in a ``finally``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from llmfanout._batch._jobs import BatchProgress
from llmfanout._cli._batch_jobs import Display

from support.fake_batch_server import FakeBatchServer, fake_batch_server_in_thread
from support.fake_llm_server import fake_llm_server_in_thread
from support.processes import started as start_cli
from support.processes import wait_until

DEADLINE = 60.0  # seconds: generous, since every wait ends early on success
KEY = "sk-cli-batch-secret-0123456789"
VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# The fake server's addresses, in the providers' base URL variables: a wait, status or
# cancel sends the key only where the command line or the environment says.
BASE_URL_VARIABLES = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
BASE_URLS: dict[str, str] = {}
FAST = ("--poll-interval", "0.01", "--max-poll-interval", "0.05")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBatchServer]:
    with fake_batch_server_in_thread() as server:
        BASE_URLS.update(openai=server.openai_base_url, anthropic=server.anthropic_base_url)
        yield server


@pytest.fixture(autouse=True)
def fresh(server: FakeBatchServer) -> None:
    server.batches.clear()
    server.files.clear()
    server.faults.clear()
    server.hold.clear()
    server.advance_on_poll = False
    server.stall_results_after = None
    server.polls = 0
    server.reopen_after = None


@pytest.fixture(params=["openai", "anthropic"])
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def environment(wire: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}
    env[VARIABLES[wire]] = KEY
    return {**env, **{BASE_URL_VARIABLES[name]: url for name, url in BASE_URLS.items()}}


def base_url(server: FakeBatchServer, wire: str) -> str:
    return server.openai_base_url if wire == "openai" else server.anthropic_base_url


def submit_args(server: FakeBatchServer, wire: str, *extra: str) -> list[str]:
    return [
        "batch",
        "submit",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--provider",
        wire,
        "--model",
        "m-test",
        "--base-url",
        base_url(server, wire),
        *FAST,
        *extra,
    ]


def llmfanout(
    *args: str, cwd: Path, wire: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmfanout", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=environment(wire) if env is None else env,
        timeout=DEADLINE,
        check=False,
    )


def started(*args: str, cwd: Path, wire: str) -> AbstractContextManager[subprocess.Popen[str]]:
    return start_cli(list(args), cwd, environment(wire))


def write_input(path: Path, count: int, fail: tuple[int, ...] = ()) -> list[str]:
    ids = [f"row-{i}" for i in range(count)]
    with path.open("w") as file:
        for i, key in enumerate(ids):
            prompt = f"prompt {i}" + (" FAIL" if i in fail else "")
            file.write(json.dumps({"id": key, "prompt": prompt}) + "\n")
    return ids


def rows(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(raw) for raw in data.splitlines()]


def check_once(path: Path, ids: list[Any]) -> list[dict[str, Any]]:
    found = rows(path)
    counts = Counter(row["id"] for row in found)
    assert sorted(counts, key=repr) == sorted(ids, key=repr)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    return found


def batch_count(server: FakeBatchServer, wire: str) -> int:
    return sum(1 for b in server.batches.values() if b.wire == wire)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_500_rows_submit_and_wait(
    server: FakeBatchServer, wire: str, backend: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 500)
    server.advance_on_poll = True
    args = submit_args(server, wire, "--wait", "--backend", backend, "--max-requests", "200")
    done = llmfanout(*args, cwd=tmp_path, wire=wire)
    assert done.returncode == 0, done.stderr
    found = check_once(tmp_path / "out.jsonl", ids)
    by_id = {row["id"]: row for row in found}
    assert all(by_id[f"row-{i}"]["content"] == f"echo: prompt {i}" for i in range(500))
    assert all(row["success"] and row["batch_id"] for row in found)
    assert batch_count(server, wire) == 3
    assert "wrote 500 rows" in done.stderr
    assert re.search(r"tokens in these rows: [\d,]+ prompt, [\d,]+ completion", done.stderr)
    assert "batch 3 (100 rows) is " in done.stderr
    assert "500/500 requests done (100%), 500 ok, 0 failed; 3/3 batches ended" in done.stderr
    state = (tmp_path / "out.jsonl.batch.json").read_text()
    assert KEY not in state and KEY not in done.stderr


def test_bad_input_exits_2_with_line_numbers_and_sends_nothing(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "prompt": "ok"}\n'
        '{"id": 2}\n'
        "not json\n"
        '{"id": 1, "prompt": "again"}\n'
        '{"id": 5, "prompt": "x", "params": {"stream": true}}\n'
    )
    before = len(server.requests)
    done = llmfanout(*submit_args(server, wire), cwd=tmp_path, wire=wire)
    assert done.returncode == 2, done.stderr
    for number in (2, 3, 4, 5):
        assert f"in.jsonl:{number}:" in done.stderr
    assert 'in.jsonl:5: "stream" is true' in done.stderr
    assert "in.jsonl:1:" not in done.stderr
    assert "nothing was sent" in done.stderr
    assert len(server.requests) == before
    assert not (tmp_path / "out.jsonl.batch.json").exists()


def test_a_dry_run_shows_the_split_and_sends_nothing(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 25)
    before = len(server.requests)
    bare = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}  # no key
    args = submit_args(server, wire, "--dry-run", "--max-requests", "10")
    done = llmfanout(*args, cwd=tmp_path, wire=wire, env=bare)
    assert done.returncode == 0, done.stderr
    assert "25 rows would go to" in done.stdout and "in 3 batch(es)" in done.stdout
    assert "batch 3: 5 rows" in done.stdout
    assert len(server.requests) == before
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_a_missing_key_is_a_usage_error(server: FakeBatchServer, tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 2)
    done = subprocess.run(
        [sys.executable, "-m", "llmfanout", *submit_args(server, "openai")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in VARIABLES.values()},
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 2
    assert "OPENAI_API_KEY" in done.stderr


def test_kill_just_after_the_upload_then_submit_again(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 30)
    server.hold.add("upload")  # the file is stored, its answer never comes
    with started(*submit_args(server, "openai"), cwd=tmp_path, wire="openai") as process:
        wait_until(lambda: len(server.files) == 1, process)
        process.kill()
    server.hold.clear()
    server.advance_on_poll = True
    again = llmfanout(*submit_args(server, "openai", "--wait"), cwd=tmp_path, wire="openai")
    assert again.returncode == 0, again.stderr
    assert batch_count(server, "openai") == 1
    check_once(tmp_path / "out.jsonl", ids)


def test_kill_after_the_create_was_sent_then_submit_again(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 30)
    server.hold.add("create")  # the batch is created, its answer never comes
    args = submit_args(server, wire, "--max-requests", "10")
    with started(*args, cwd=tmp_path, wire=wire) as process:
        wait_until(lambda: batch_count(server, wire) == 1, process)
        process.kill()
    server.hold.clear()
    assert (tmp_path / "out.jsonl.batch.json.parts").is_dir()  # left by the kill
    early = llmfanout("batch", "wait", "out.jsonl", cwd=tmp_path, wire=wire)
    assert early.returncode == 2
    assert "submit did not finish" in early.stderr
    server.advance_on_poll = True
    again = llmfanout(*args, "--wait", cwd=tmp_path, wire=wire)
    assert again.returncode == 0, again.stderr
    assert batch_count(server, wire) == 3  # the first one reconciled, not made twice
    check_once(tmp_path / "out.jsonl", ids)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl", "out.jsonl.batch.json"]


def test_kill_while_waiting_then_wait_again(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 40, fail=(7,))
    submitted = llmfanout(*submit_args(server, wire), cwd=tmp_path, wire=wire)
    assert submitted.returncode == 0, submitted.stderr
    with started("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire) as process:
        wait_until(lambda: server.polls >= 3, process)
        process.kill()
    server.finish()
    again = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert again.returncode == 1, again.stderr  # one row failed
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ids)}
    assert not found["row-7"]["success"]
    assert "--retry-failed" in again.stderr
    assert batch_count(server, wire) == 1


def test_kill_while_writing_rows_then_wait_again(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 60)
    assert llmfanout(*submit_args(server, wire), cwd=tmp_path, wire=wire).returncode == 0
    server.finish()
    server.stall_results_after = 25  # 25 result lines, then the download hangs
    output = tmp_path / "out.jsonl"
    with started("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire) as process:
        wait_until(lambda: output.exists() and output.read_bytes().count(b"\n") >= 25, process)
        process.kill()
    assert output.read_bytes().count(b"\n") == 25
    # A torn last line, as a kill in the middle of a write would leave.
    with output.open("ab") as file:
        file.write(b'{"id": "row-')
    server.stall_results_after = None
    again = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert again.returncode == 0, again.stderr
    check_once(output, ids)


def test_prices_give_the_cost_at_the_batch_price(server: FakeBatchServer, tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 4)
    (tmp_path / "prices.json").write_text('{"m-test": {"input": 1000000, "output": 0}}')
    server.advance_on_poll = True
    args = submit_args(server, "openai", "--wait", "--prices", "prices.json")
    done = llmfanout(*args, cwd=tmp_path, wire="openai")
    assert done.returncode == 0, done.stderr
    prompt = sum(row["usage"]["prompt_tokens"] for row in rows(tmp_path / "out.jsonl"))
    # $1 a prompt token at list price; half that in a batch.
    assert f"at the batch price: ${prompt / 2:,.2f}" in done.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = llmfanout(
        "batch", "wait", "out.jsonl", "--prices", "bad.json", cwd=tmp_path, wire="openai"
    )
    assert bad.returncode == 2 and "--prices" in bad.stderr


def test_wait_again_restores_rows_the_output_lost(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 6)
    server.advance_on_poll = True
    assert llmfanout(*submit_args(server, wire, "--wait"), cwd=tmp_path, wire=wire).returncode == 0
    output = tmp_path / "out.jsonl"
    kept = output.read_bytes().splitlines(keepends=True)[2:]  # two rows lost
    output.write_bytes(b"".join(kept))
    again = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert again.returncode == 0, again.stderr
    assert "wrote 2 rows" in again.stderr
    check_once(output, ids)
    # With nothing lost, a wait writes nothing.
    idle = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert "wrote 0 rows" in idle.stderr
    check_once(output, ids)


def test_expired_rows_fail_and_run_sends_them_again(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 6)
    assert llmfanout(*submit_args(server, wire), cwd=tmp_path, wire=wire).returncode == 0
    server.advance()  # half done
    server.expire()
    waited = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert waited.returncode == 1
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ids)}
    assert [found[key]["success"] for key in ids] == [True] * 3 + [False] * 3
    assert found["row-5"]["error"]["type"] == "BatchRequestExpired"
    # The failed rows go again in real time, through `llmfanout run`.
    with fake_llm_server_in_thread() as live:
        url = live.openai_base_url if wire == "openai" else live.anthropic_base_url
        rerun = llmfanout(
            "run", "in.jsonl", "-o", "out.jsonl", "--provider", wire, "--model", "m-test",
            "--base-url", url, "--resume", "--retry-failed", cwd=tmp_path, wire=wire,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert sorted(r.prompt for r in live.requests) == ["prompt 3", "prompt 4", "prompt 5"]
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ids)}
    assert all(row["success"] for row in found.values())
    assert found["row-0"]["batch_id"] and "batch_id" not in found["row-5"]


def test_status_and_cancel(server: FakeBatchServer, wire: str, tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 8)
    args = submit_args(server, wire, "--max-requests", "4")
    assert llmfanout(*args, cwd=tmp_path, wire=wire).returncode == 0
    (first, second) = list(server.batches)
    server.advance(first)
    status = llmfanout("batch", "status", "out.jsonl", cwd=tmp_path, wire=wire)
    assert status.returncode == 0, status.stderr
    assert "2/8 requests done" in status.stdout
    assert first in status.stdout and second in status.stdout
    cancelled = llmfanout("batch", "cancel", "out.jsonl", cwd=tmp_path, wire=wire)
    assert cancelled.returncode == 0, cancelled.stderr
    assert all(b.cancelling for b in server.batches.values())
    server.advance()
    waited = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire=wire)
    assert waited.returncode == 1
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ids)}
    assert sum(row["success"] for row in found.values()) == 2
    assert found["row-7"]["error"]["type"] == "BatchRequestCancelled"


def test_a_named_key_variable_is_recorded_not_the_key(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 3)
    bare = {k: v for k, v in environment("openai").items() if k not in VARIABLES.values()}
    env = {**bare, "TEAM_KEY": KEY}
    args = submit_args(server, "openai", "--api-key-env", "TEAM_KEY")
    assert llmfanout(*args, cwd=tmp_path, wire="openai", env=env).returncode == 0
    state = json.loads((tmp_path / "out.jsonl.batch.json").read_text())
    assert state["api_key_env"] == "TEAM_KEY"
    assert KEY not in json.dumps(state)
    assert {r.api_key for r in server.requests[-2:]} == {KEY}
    # Without the key, status shows what was last seen; with it, wait carries on.
    status = llmfanout("batch", "status", "out.jsonl", cwd=tmp_path, wire="openai", env=bare)
    assert status.returncode == 0, status.stderr
    assert "as last seen" in status.stdout
    server.finish()
    # The state file's variable is used only when the command line names it too.
    refused = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire="openai", env=env)
    assert refused.returncode == 2
    assert "--api-key-env TEAM_KEY" in refused.stderr
    waited = llmfanout(
        "batch", "wait", "out.jsonl", "--api-key-env", "TEAM_KEY", *FAST,
        cwd=tmp_path, wire="openai", env=env,
    )  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    check_once(tmp_path / "out.jsonl", ids)


def test_wait_without_a_job_is_a_usage_error(tmp_path: Path) -> None:
    done = llmfanout("batch", "wait", "nothing.jsonl", cwd=tmp_path, wire="openai")
    assert done.returncode == 2
    assert "submit the batch first" in done.stderr


def test_beside_a_running_wait_status_and_cancel_work_and_writers_are_refused(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 4)
    assert llmfanout(*submit_args(server, "openai"), cwd=tmp_path, wire="openai").returncode == 0
    server.advance()  # half done
    wait = ("batch", "wait", "out.jsonl", *FAST)
    with started(*wait, cwd=tmp_path, wire="openai") as process:
        wait_until(lambda: server.polls >= 1, process)
        second = llmfanout(*wait, cwd=tmp_path, wire="openai")
        assert second.returncode == 3
        assert "another process" in second.stderr
        assert "(llmfanout batch wait)" in second.stderr
        # The lock is the one `llmfanout run` takes: it cannot write there either.
        run = llmfanout(
            "run", "in.jsonl", "-o", "out.jsonl", "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, "--resume", cwd=tmp_path, wire="openai",
        )  # fmt: skip
        assert run.returncode == 2
        assert "(llmfanout batch wait)" in run.stderr
        # Reading and cancelling do not need the lock.
        status = llmfanout("batch", "status", "out.jsonl", cwd=tmp_path, wire="openai")
        assert status.returncode == 0 and "2/4 requests done" in status.stdout
        cancel = llmfanout("batch", "cancel", "out.jsonl", cwd=tmp_path, wire="openai")
        assert cancel.returncode == 0, cancel.stderr
        assert "(llmfanout batch wait)) collects" in cancel.stderr
        (batch,) = server.batches.values()
        assert batch.cancelling
        server.advance()  # the provider finishes cancelling; the wait collects and ends
        assert process.wait(timeout=DEADLINE) == 1
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ids)}
    assert [found[key]["success"] for key in ids] == [True, True, False, False]


# -- the wait's progress display (in this process) -----------------------------------------


def progress(done: int, ended: int = 0) -> BatchProgress:
    return BatchProgress(rows=10, done=done, succeeded=done, failed=0, parts=2, parts_ended=ended)


def test_plain_progress_is_a_line_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    stream = io.StringIO()
    display = Display(quiet=False, stream=stream)
    display.update(progress(0))
    display.update(progress(4))  # within PLAIN_EVERY of the first line: not shown yet
    display.update(progress(6, ended=1))
    display.stop()  # the last counts, once
    assert stream.getvalue().splitlines() == [
        "llmfanout: 0/10 requests done (0%), 0 ok, 0 failed; 0/2 batches ended",
        "llmfanout: 6/10 requests done (60%), 6 ok, 0 failed; 1/2 batches ended",
    ]


def test_quiet_progress_writes_nothing() -> None:
    stream = io.StringIO()
    display = Display(quiet=True, stream=stream)
    display.update(progress(3))
    display.stop()
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    stream = io.StringIO()
    display = Display(quiet=False, stream=stream)
    assert display.bar is not None
    display.update(progress(5, ended=1))
    display.stop()
    assert "5/10" in stream.getvalue()
    assert "1/2 batches ended" in stream.getvalue()


def test_the_three_input_formats_reach_the_batch_as_run_sends_them(
    server: FakeBatchServer, wire: str, tmp_path: Path
) -> None:
    rows_in = [
        {"id": "p", "prompt": "plain"},
        {
            "id": 7,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "with params"},
            ],
            "params": {"temperature": 0.5, "max_tokens": 9},
        },
        {
            "custom_id": "b-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "row-model", "messages": [{"role": "user", "content": "batch"}]},
        },
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    server.advance_on_poll = True
    done = llmfanout(*submit_args(server, wire, "--wait"), cwd=tmp_path, wire=wire)
    assert done.returncode == 0, done.stderr
    (batch,) = server.batches.values()
    bodies = [body for _, body in batch.requests]
    assert [b["model"] for b in bodies] == ["m-test", "m-test", "row-model"]
    assert bodies[1]["temperature"] == 0.5 and bodies[1]["max_tokens"] == 9
    if wire == "anthropic":
        assert bodies[1]["system"] == "be brief"
        assert bodies[0]["max_tokens"] == 1024  # the provider's default, which the API needs
    else:
        assert bodies[1]["messages"][0] == {"role": "system", "content": "be brief"}
    found = {row["id"]: row for row in check_once(tmp_path / "out.jsonl", ["p", 7, "b-1"])}
    assert found[7]["content"] == "echo: with params"
    assert found["b-1"]["model"] == "row-model"


def write_embed_input(path: Path, count: int) -> list[str]:
    """``llmfanout embed``'s rows: ``{"id", "text"}``."""
    ids = [f"doc-{i}" for i in range(count)]
    with path.open("w") as file:
        for i, key in enumerate(ids):
            file.write(json.dumps({"id": key, "text": f"text {i}"}) + "\n")
    return ids


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_openai_embeddings_batch(server: FakeBatchServer, backend: str, tmp_path: Path) -> None:
    ids = write_embed_input(tmp_path / "in.jsonl", 40)
    with (tmp_path / "in.jsonl").open("a") as file:  # a repeated id is embedded once
        file.writelines(json.dumps({"id": f"doc-{i}", "text": "again"}) + "\n" for i in range(25))
    server.advance_on_poll = True
    args = submit_args(server, "openai", "--endpoint", "embeddings", "--wait", "--backend", backend)
    done = llmfanout(*args, cwd=tmp_path, wire="openai")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: line")]
    assert notes[0] == "note: line 41 repeats id 'doc-0'; it is embedded once"
    assert len(notes) == 20 and notes[-1].startswith("note: line 60 ")
    assert "note: ... and 5 more lines repeat an earlier id" in done.stderr
    found = check_once(tmp_path / "out.jsonl", ids)
    for row in found:
        text = f"text {int(row['id'].split('-')[1])}"
        assert row["success"] and row["embedding"] == [float(len(text)), 0.5, -0.5]
        assert "content" not in row and row["usage"]["total_tokens"] > 0
    (batch,) = [b for b in server.batches.values() if b.wire == "openai"]
    _, body = batch.requests[0]
    assert body == {"model": "m-test", "input": "text 0", "encoding_format": "base64"}
    state = json.loads((tmp_path / "out.jsonl.batch.json").read_text())
    assert state["endpoint"] == "embeddings"
    wrong = submit_args(server, "anthropic", "--endpoint", "embeddings")
    refused = llmfanout(*wrong, cwd=tmp_path, wire="anthropic")
    assert refused.returncode == 2 and "embeddings batches are OpenAI's" in refused.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_embeddings_batch_refuses_rows_embed_refuses(
    server: FakeBatchServer, backend: str, tmp_path: Path
) -> None:
    write_embed_input(tmp_path / "in.jsonl", 3)
    with (tmp_path / "in.jsonl").open("a") as file:
        file.write(json.dumps({"id": "p", "prompt": "a run row"}) + "\n")
        file.write(json.dumps({"id": "e", "text": ""}) + "\n")
    args = submit_args(server, "openai", "--endpoint", "embeddings", "--backend", backend)
    sent = len(server.requests)
    refused = llmfanout(*args, cwd=tmp_path, wire="openai")
    assert refused.returncode == 2
    assert 'in.jsonl:4: "text" is missing, empty or not a string' in refused.stderr
    assert "in.jsonl:5:" in refused.stderr and "2 bad input line(s)" in refused.stderr
    assert batch_count(server, "openai") == 0 and len(server.requests) == sent
    no_model = [a for a in args if a not in ("--model", "m-test")]
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 1, "text": "t"}) + "\n")
    refused = llmfanout(*no_model, cwd=tmp_path, wire="openai")
    assert refused.returncode == 2 and "--endpoint embeddings needs --model" in refused.stderr


# -- hostile state files and secrets in commands (issue 23, items 5 and 6) ---------------------


def test_a_crafted_state_file_cannot_choose_where_a_key_goes(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 2)
    assert llmfanout(*submit_args(server, "openai"), cwd=tmp_path, wire="openai").returncode == 0
    path = tmp_path / "out.jsonl.batch.json"
    honest = json.loads(path.read_text())
    other_secret = "sk-another-secret-of-this-machine"
    env = {**environment("openai"), "OTHER_SECRET": other_secret}
    with fake_llm_server_in_thread() as elsewhere:
        crafted = [
            ({"api_key_env": "OTHER_SECRET"}, "--api-key-env OTHER_SECRET"),
            ({"base_url": elsewhere.openai_base_url}, f"--base-url {elsewhere.openai_base_url}"),
        ]
        for change, fix in crafted:
            path.write_text(json.dumps({**honest, **change}))
            sent = len(server.requests)
            for action in ("wait", "cancel", "status"):
                done = llmfanout("batch", action, "out.jsonl", cwd=tmp_path, wire="openai", env=env)
                assert other_secret not in done.stdout + done.stderr
                if action == "status":  # what was last seen, and why nothing was asked
                    assert done.returncode == 0 and fix in done.stdout, done.stdout
                else:
                    assert done.returncode == 2, done.stderr
                    assert fix in done.stderr
            assert len(server.requests) == sent
            assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"api_key_env": "A B"}, "api_key_env"),
        ({"base_url": "file:///etc/passwd"}, "base_url"),
        ({"provider": "mystery"}, "provider"),
        ({"parts": [{"index": 0, "tags": ["1"], "size": 1, "digest": "d",
                     "batch_id": "b\r\nX-Evil: 1"}]}, "batch_id"),
    ],
)  # fmt: skip
def test_a_state_file_is_checked_before_any_request(
    server: FakeBatchServer, tmp_path: Path, change: dict[str, object], named: str
) -> None:
    write_input(tmp_path / "in.jsonl", 2)
    assert llmfanout(*submit_args(server, "openai"), cwd=tmp_path, wire="openai").returncode == 0
    path = tmp_path / "out.jsonl.batch.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    sent = len(server.requests)
    done = llmfanout("batch", "wait", "out.jsonl", cwd=tmp_path, wire="openai")
    assert done.returncode == 2
    assert named in done.stderr and "not a usable batch state file" in done.stderr
    assert len(server.requests) == sent


def test_commands_recorded_or_printed_hide_passwords_and_keys() -> None:
    from llmfanout._cli._args import redact_command

    shown = redact_command(
        ["llmfanout", "run", "in", "--shared-limit", "redis://:hunter2@h:6379/0", "--api-key",
         "sk-1", "--token=abc", "--api-key-env", "NAME", "--base-url", "https://u:pw@x/v1"]
    )  # fmt: skip
    for secret in ("hunter2", "sk-1", "abc", ":pw@"):
        assert secret not in shown
    assert "redis://:***@h:6379/0" in shown and "--api-key-env NAME" in shown


def test_a_batch_that_ended_and_then_says_in_progress_exits_1(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 2)
    assert llmfanout(*submit_args(server, "openai"), cwd=tmp_path, wire="openai").returncode == 0
    server.finish()
    server.reopen_after = 1  # the poll sees it ended; reading its results, in progress
    done = llmfanout("batch", "wait", "out.jsonl", *FAST, cwd=tmp_path, wire="openai")
    assert done.returncode == 1, done.stderr
    assert "contradicts itself" in done.stderr and "Traceback" not in done.stderr
