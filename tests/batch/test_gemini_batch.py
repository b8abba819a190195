"""``llmfanout batch submit --provider gemini``: batch mode end to end, and kill -9.

The fake (``support.fake_gemini_server``) runs in a thread. A kill happens while the fake
holds an upload (its bytes taken, no answer), a create call (the batch exists, its answer
never came) or a poll; the same command run again must find the batch (one batch on the
server) and write each id once. Both ways of sending requests: inlined, and an uploaded
file (``--gemini-input file``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from support.fake_gemini_server import FakeGemini, gemini_server_in_thread
from support.processes import run_cli, wait_until
from support.processes import started as start_cli

KEY = "AIza-gemini-batch-secret-0123456789"
FAST = ("--poll-interval", "0.01", "--max-poll-interval", "0.05")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with gemini_server_in_thread() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh(server: FakeGemini) -> None:
    server.requests.clear()
    server.batches.clear()
    server.hold_creates = server.hold_polls = server.hold_uploads = False
    server.polls_to_finish = 1
    server.files.clear()
    server.uploads.clear()
    server.upload_origin = None
    server.foreign_results = False


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["GOOGLE_API_KEY"] = KEY  # the fallback variable, as the official SDK reads it
    return env


def submit(server: FakeGemini, backend: str, *extra: str) -> list[str]:
    return [
        "batch", "submit", "in.jsonl", "-o", "out.jsonl", "--provider", "gemini",
        "--model", "gemini-2.5-flash", "--base-url", server.gemini_url,
        "--backend", backend, *FAST, *extra,
    ]  # fmt: skip


def llmfanout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), cwd, environment())


def started(*args: str, cwd: Path) -> AbstractContextManager[subprocess.Popen[str]]:
    return start_cli(list(args), cwd, environment())


def write_input(path: Path, count: int) -> list[str]:
    ids = [f"row-{i}" for i in range(count)]
    path.write_text("".join(json.dumps({"id": k, "prompt": f"p {k}"}) + "\n" for k in ids))
    return ids


def check_once(path: Path, ids: list[str]) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines()]
    assert Counter(row["id"] for row in found) == Counter(ids)
    for row in found:
        assert row["success"], row
        assert row["content"] == f"Echo: p {row['id']}"
    return found


def state_of(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out.jsonl.batch.json").read_text())
    return data


def no_key_anywhere(server: FakeGemini, tmp_path: Path) -> None:
    for request in server.requests:
        assert request.headers["x-goog-api-key"] == KEY
        assert KEY not in request.target
    for name in os.listdir(tmp_path):
        if (tmp_path / name).is_file():
            assert KEY not in (tmp_path / name).read_text(errors="replace")


def test_submit_and_wait(server: FakeGemini, backend: str, tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 30)
    done = llmfanout(*submit(server, backend, "--wait"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    check_once(tmp_path / "out.jsonl", ids)
    assert len(server.batches) == 1
    (create,) = [r for r in server.requests if r.path.endswith(":batchGenerateContent")]
    assert create.path == "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
    batch = create.body["batch"]
    assert batch["displayName"].startswith("llmfanout llmfanout_part=0;llmfanout_rows=30;")
    first = batch["inputConfig"]["requests"]["requests"][0]
    assert first["request"] == {"contents": [{"role": "user", "parts": [{"text": "p row-0"}]}]}
    assert first["metadata"]["key"].endswith("-0-0")
    no_key_anywhere(server, tmp_path)


@pytest.fixture(params=["inline", "file"])
def mode(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """How the requests go: inlined (what auto does with a small job), or uploaded."""
    return ("--gemini-input", str(request.param))


def test_kill_during_the_create_then_submit_again(
    server: FakeGemini, backend: str, mode: tuple[str, ...], tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 20)
    server.hold_creates = True
    with started(*submit(server, backend, *mode), cwd=tmp_path) as process:
        wait_until(lambda: len(server.batches) == 1, process)
        process.kill()
    (part,) = state_of(tmp_path)["parts"]
    file_id = "files/f1" if mode[1] == "file" else None
    assert (part["phase"], part["file_id"]) == ("creating", file_id)  # saved before create
    server.hold_creates = False
    again = llmfanout(*submit(server, backend, "--wait", *mode), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(server.batches) == 1  # found again from the list, not created twice
    uploads = sum(r.path.startswith("/upload/") for r in server.requests)
    assert uploads == (2 if file_id else 0)  # start and finalize, once: not uploaded again
    check_once(tmp_path / "out.jsonl", ids)
    no_key_anywhere(server, tmp_path)


def test_kill_while_waiting_then_wait_again(
    server: FakeGemini, backend: str, mode: tuple[str, ...], tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 20)
    server.hold_polls = True
    with started(*submit(server, backend, "--wait", *mode), cwd=tmp_path) as process:
        wait_until(lambda: any(r.method == "GET" for r in server.requests), process)
        process.kill()
    server.hold_polls = False
    # The state file's base URL is not trusted on its own: the command line names it.
    where = ("--base-url", server.gemini_url)
    again = llmfanout(
        "batch", "wait", "out.jsonl", *where, "--backend", backend, *FAST, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert len(server.batches) == 1
    check_once(tmp_path / "out.jsonl", ids)
    no_key_anywhere(server, tmp_path)


# -- an uploaded input file ----------------------------------------------------------------

FILE = ("--gemini-input", "file")


def test_file_input_submit_and_wait(server: FakeGemini, backend: str, tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 30)
    server.foreign_results = True  # a stranger's key, a key one digit longer, a repeat
    done = llmfanout(*submit(server, backend, "--wait", *FILE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    check_once(tmp_path / "out.jsonl", ids)  # only our exact keys, each once
    assert len(server.batches) == 1
    start, chunk = [r for r in server.requests if r.path.startswith("/upload/")]
    assert start.headers["x-goog-upload-protocol"] == "resumable"
    assert start.headers["x-goog-upload-command"] == "start"
    assert chunk.headers["x-goog-upload-command"] == "upload, finalize"
    assert chunk.headers["x-goog-upload-offset"] == "0"
    lines = [json.loads(line) for line in chunk.raw.splitlines()]
    assert [line["key"].rsplit("-", 1)[1] for line in lines] == [str(i) for i in range(30)]
    assert lines[0]["request"] == {"contents": [{"role": "user", "parts": [{"text": "p row-0"}]}]}
    (create,) = [r for r in server.requests if r.path.endswith(":batchGenerateContent")]
    (part,) = state_of(tmp_path)["parts"]
    assert create.body["batch"]["inputConfig"] == {"fileName": part["file_id"]}
    assert part["file_id"] == "files/f1"
    downloads = [r for r in server.requests if r.path.startswith("/download/")]
    assert downloads and downloads[0].query == {"alt": "media"}
    no_key_anywhere(server, tmp_path)


def test_kill_during_the_upload_then_submit_again(
    server: FakeGemini, backend: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 20)
    server.hold_uploads = True
    with started(*submit(server, backend, *FILE), cwd=tmp_path) as process:
        wait_until(lambda: any("upload_id" in r.query for r in server.requests), process)
        process.kill()
    assert state_of(tmp_path)["parts"][0]["file_id"] is None  # nothing to trust yet
    server.hold_uploads = False
    again = llmfanout(*submit(server, backend, "--wait", *FILE), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(server.batches) == 1
    assert list(server.files) == ["files/f1", "files/batch-b1-responses"]
    check_once(tmp_path / "out.jsonl", ids)
    no_key_anywhere(server, tmp_path)


def test_an_upload_url_on_another_host_is_not_followed(
    server: FakeGemini, backend: str, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    server.upload_origin = "http://127.0.0.2:9"
    failed = llmfanout(*submit(server, backend, *FILE), cwd=tmp_path)
    assert failed.returncode == 1
    assert "X-Goog-Upload-URL" in failed.stderr and "not on base_url's host" in failed.stderr
    assert not any("upload_id" in r.query for r in server.requests)
    assert not server.batches
    assert KEY not in failed.stderr


def test_gemini_input_is_for_gemini_only(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    args = ["batch", "submit", "in.jsonl", "-o", "out.jsonl", "--provider", "openai"]
    refused = llmfanout(*args, "--model", "m", "--dry-run", *FILE, cwd=tmp_path)
    assert refused.returncode == 2
    assert "--gemini-input is for --provider gemini" in refused.stderr
