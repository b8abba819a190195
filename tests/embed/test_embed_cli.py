"""``llmfanout embed`` end to end in subprocesses: outputs, bad input, kill -9 and resume.

The fake server runs in a thread; a kill happens while the server holds a request
(``hold_after``), so rows are on disk and more are in flight. Waits are for conditions
with a deadline; every subprocess is reaped in a ``finally``.
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

from llmfanout.providers._echo import echo_vector

from support.fake_gemini_server import FakeGemini, fake_vector, gemini_server_in_thread, tokens
from support.processes import run_cli, wait_until
from support.processes import started as start_cli

KEY = "sk-embed-cli-secret-0123456789"
VARIABLES = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with gemini_server_in_thread() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh(server: FakeGemini) -> None:
    server.requests.clear()
    server.script.clear()
    server.hold_after = None


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["OPENAI_API_KEY"] = env["GEMINI_API_KEY"] = KEY
    return env


def llmfanout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["embed", *args], cwd, environment())


def started(*args: str, cwd: Path) -> AbstractContextManager[subprocess.Popen[str]]:
    return start_cli(["embed", *args], cwd, environment())


def write_input(path: Path, count: int) -> dict[str, str]:
    texts = {f"row-{i}": f"text {i} " + "x" * (i % 13) for i in range(count)}
    path.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in texts.items()))
    return texts


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_echo_rows_one_per_id(tmp_path: Path, backend: str) -> None:
    texts = write_input(tmp_path / "in.jsonl", 50)
    done = llmfanout("in.jsonl", "-o", "out.jsonl", "--backend", backend, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = rows(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in out) == sorted(texts)
    for row in out:
        assert set(row) == {"id", "success", "embedding", "error", "model"}
        assert row["success"] and row["error"] is None
        assert row["embedding"] == list(echo_vector(texts[row["id"]]))
    assert "embedded 50 of 50 rows in 1 requests" in done.stderr


def test_repeated_ids_are_embedded_once_and_the_notes_end_in_a_count(
    tmp_path: Path, backend: str
) -> None:
    texts = write_input(tmp_path / "in.jsonl", 5)
    with (tmp_path / "in.jsonl").open("a") as file:  # lines 6 to 35 repeat row-0 .. row-4
        file.writelines(
            json.dumps({"id": f"row-{i % 5}", "text": "again"}) + "\n" for i in range(30)
        )
    done = llmfanout("in.jsonl", "-o", "out.jsonl", "--backend", backend, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = rows(tmp_path / "out.jsonl")
    assert Counter(r["id"] for r in out) == Counter(list(texts))
    assert all(r["embedding"] == list(echo_vector(texts[r["id"]])) for r in out)  # first rows
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: line")]
    assert notes[0] == "note: line 6 repeats id 'row-0'; it is embedded once"
    assert len(notes) == 20 and notes[-1].startswith("note: line 25 ")
    assert "note: ... and 10 more lines repeat an earlier id" in done.stderr


def test_resume_cuts_a_torn_line_and_retry_failed_reruns_only_failures(
    tmp_path: Path, backend: str
) -> None:
    texts = write_input(tmp_path / "in.jsonl", 5)
    recorded = [
        {"id": "row-0", "success": True, "embedding": [0.5], "error": None, "model": "echo"},
        {"id": "row-1", "success": False, "embedding": None, "error": {}, "model": None},
        # a bad input line's row: recorded as done, never run again
        {"id": "row-2", "success": False, "embedding": None, "error": {}, "line": 3},
    ]
    (tmp_path / "out.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in recorded) + '{"id": "row-3", "succ'
    )
    args = ["in.jsonl", "-o", "out.jsonl", "--backend", backend, "--resume"]
    resumed = llmfanout(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = rows(tmp_path / "out.jsonl")  # the torn line is gone: every line parses
    assert [r["id"] for r in out] == ["row-0", "row-1", "row-2", "row-3", "row-4"]
    assert "embedded 2 of 2 rows" in resumed.stderr
    again = llmfanout(*args, "--retry-failed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "embedded 1 of 1 rows" in again.stderr
    out = {r["id"]: r for r in rows(tmp_path / "out.jsonl")}
    assert sorted(out) == sorted(texts) and len(rows(tmp_path / "out.jsonl")) == 5
    assert out["row-1"]["embedding"] == list(echo_vector(texts["row-1"]))
    assert out["row-0"]["embedding"] == [0.5] and out["row-2"]["line"] == 3


def test_resume_does_not_record_a_bad_line_twice(tmp_path: Path, backend: str) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": ""}\n')
    args = ["in.jsonl", "-o", "out.jsonl", "--backend", backend, "--skip-invalid"]
    first = llmfanout(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    for again in (["--resume"], ["--resume", "--retry-failed"]):
        resumed = llmfanout(*args, *again, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert Counter(r["id"] for r in rows(tmp_path / "out.jsonl")) == {"a": 1, "b": 1}
    plain = llmfanout(*args[:-1], "--resume", cwd=tmp_path)  # recorded: not refused again
    assert plain.returncode == 0, plain.stderr


def test_bad_input_is_refused_before_anything_is_sent(tmp_path: Path, server: FakeGemini) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n[3]\n')
    args = ["in.jsonl", "-o", "out.jsonl", "--provider", "openai", "--model", "m"]
    done = llmfanout(*args, "--base-url", server.openai_url, cwd=tmp_path)
    assert done.returncode == 2
    assert 'in.jsonl:2: "text" is missing' in done.stderr
    assert "in.jsonl:3: a JSON list" in done.stderr
    assert server.requests == []
    skipped = llmfanout(*args, "--base-url", server.openai_url, "--skip-invalid", cwd=tmp_path)
    assert skipped.returncode == 1
    out = {r.get("line"): r for r in rows(tmp_path / "out.jsonl")}
    assert out[None]["success"] and out[2]["error"]["type"] == "InvalidInput"


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_kill_9_then_resume_embeds_each_id_once(
    tmp_path: Path, server: FakeGemini, backend: str, provider: str
) -> None:
    texts = write_input(tmp_path / "in.jsonl", 1000)
    url = server.openai_url if provider == "openai" else server.gemini_url
    args = ["in.jsonl", "-o", "out.jsonl", "--provider", provider, "--model", "emb"]
    args += ["--base-url", url, "--max-inputs", "100", "--backend", backend]
    args += ["--vectors", "base64"] if provider == "openai" else []
    server.hold_after = 3
    with started(*args, "--concurrency", "2", cwd=tmp_path) as process:
        wait_until(lambda: lines(tmp_path / "out.jsonl") >= 300, process)
        wait_until(lambda: len(server.embedding_requests()) == 5, process)  # 2 held
        process.kill()
    assert lines(tmp_path / "out.jsonl") < 1000
    again = llmfanout(*args, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    server.hold_after = None
    resumed = llmfanout(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = rows(tmp_path / "out.jsonl")
    assert Counter(r["id"] for r in out) == Counter(list(texts))  # each id once
    for row in out:
        assert row["success"]
        if provider == "openai":
            from llmfanout.providers._embeddings_format import decode_base64

            assert list(decode_base64(row["embedding"])) == fake_vector(texts[row["id"]])
        else:
            assert row["embedding"] == fake_vector(texts[row["id"]])
    for request in server.requests:
        assert KEY not in request.target
    assert KEY not in (tmp_path / "out.jsonl").read_text()


def test_npy_shards_survive_a_kill(tmp_path: Path, server: FakeGemini, backend: str) -> None:
    np = pytest.importorskip("numpy")
    texts = write_input(tmp_path / "in.jsonl", 700)
    args = ["in.jsonl", "-o", "vectors", "--format", "npy", "--provider", "openai"]
    args += ["--model", "emb", "--base-url", server.openai_url, "--max-inputs", "100"]
    args += ["--shard-rows", "200", "--concurrency", "1", "--backend", backend]
    server.hold_after = 3
    index = tmp_path / "vectors" / "index.jsonl"
    with started(*args, cwd=tmp_path) as process:
        wait_until(lambda: lines(index) >= 200, process)
        wait_until(lambda: len(server.embedding_requests()) == 4, process)
        process.kill()
    server.hold_after = None
    resumed = llmfanout(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    recorded = rows(index)
    assert Counter(r["id"] for r in recorded) == Counter(list(texts))
    shards = {name: np.load(tmp_path / "vectors" / name) for name in {r["shard"] for r in recorded}}
    assert set(os.listdir(tmp_path / "vectors")) == {"index.jsonl", *shards}
    for row in recorded:
        vector = shards[row["shard"]][row["row"]]
        assert vector.tolist() == fake_vector(texts[row["id"]])


def test_prices_print_the_cost(tmp_path: Path, server: FakeGemini, backend: str) -> None:
    texts = write_input(tmp_path / "in.jsonl", 30)
    (tmp_path / "prices.json").write_text(json.dumps({"m-embed": {"input": 0.1, "output": 0}}))
    args = ["in.jsonl", "-o", "out.jsonl", "--provider", "openai", "--model", "m-embed"]
    args += ["--base-url", server.openai_url, "--prices", "prices.json", "--backend", backend]
    done = llmfanout(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cost = sum(tokens(t) for t in texts.values()) * 0.1 / 1e6
    assert f"; cost: ${cost:.6f}".rstrip("0") in done.stderr
    (tmp_path / "prices.json").write_text(json.dumps({"other": {"input": 0.1, "output": 0}}))
    echo = llmfanout("in.jsonl", "-o", "echo.jsonl", "--prices", "prices.json", cwd=tmp_path)
    assert "cost: $0.00 (not counted, no price or no usage: echo x1)" in echo.stderr


def test_a_bad_price_table_stops_the_run_first(tmp_path: Path, server: FakeGemini) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    (tmp_path / "prices.json").write_text('{"m": {"input": -1, "output": 0}}')
    args = ["in.jsonl", "-o", "out.jsonl", "--provider", "openai", "--model", "m"]
    done = llmfanout(
        *args, "--base-url", server.openai_url, "--prices", "prices.json", cwd=tmp_path
    )
    assert done.returncode == 2 and "--prices: " in done.stderr and "input is -1" in done.stderr
    assert server.requests == [] and not (tmp_path / "out.jsonl").exists()


def test_trio_without_trio_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from llmfanout._cli._main import main

    write_input(tmp_path / "in.jsonl", 3)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trio" else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "in.jsonl", "-o", "out.jsonl", "--backend", "trio"]) == 2
    assert "pip install 'llmfanout[trio]'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
