"""The CLI's cost (--prices), logging (-v, LLMFANOUT_LOG) and the base URL it reports."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from llmfanout._cli import _log

from support.fake_llm_server import Fault, fake_llm_server_in_thread
from test_cli import environment, llmfanout, write_prompts

KEY = "sk-test-observability-0123456789"
PRICES = {"gpt-test": {"input": 2.0, "cached_input": 1.0, "output": 8.0}}


def test_prices_give_the_cost_in_the_summary(tmp_path: Path) -> None:
    source, output, prices = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "p.json"
    write_prompts(source, 4)
    prices.write_text(json.dumps(PRICES))
    with fake_llm_server_in_thread() as server:
        server.add_faults(
            *(Fault.ok("an answer of some length", cached_tokens=2) for _ in range(4))
        )
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "gpt-test",
            "--base-url", server.openai_base_url, "--prices", prices,
            cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    usages = [json.loads(line)["usage"] for line in output.read_text().splitlines()]
    cost = (
        sum((u["prompt_tokens"] - 2) * 2.0 + 2 * 1.0 + u["completion_tokens"] * 8.0 for u in usages)
        / 1_000_000
    )
    shown = next(line for line in done.stderr.splitlines() if line.startswith("cost: "))
    assert shown == f"cost: ${cost:.6f}".rstrip("0")
    assert "cached prompt tokens: 8" in done.stderr


@pytest.mark.parametrize(
    ("table", "fault"),
    [
        ('{"gpt-test": {"input": 1}}', "prices['gpt-test'] has no 'output' price"),
        ('{"gpt-test": [1, 2]}', "prices['gpt-test'] is a list"),  # a TypeError
        (None, "cannot be read"),
    ],
)
@pytest.mark.parametrize(
    "command", [["run", "in.jsonl", "-o"], ["embed", "in.jsonl", "-o"], ["batch", "wait"]]
)
def test_run_embed_and_batch_refuse_a_bad_price_file_alike(
    tmp_path: Path, command: list[str], table: str | None, fault: str
) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    if table is not None:
        (tmp_path / "p.json").write_text(table)
    done = llmfanout(*command, "o.jsonl", "--prices", "p.json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"--prices: prices file 'p.json': {fault}" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("base", ["flag", "env"])
def test_the_summary_names_the_base_url_and_where_it_came_from(tmp_path: Path, base: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    write_prompts(source, 2)
    with fake_llm_server_in_thread() as server:
        url = server.openai_base_url
        flag = ["--base-url", url] if base == "flag" else []
        extra = {"OPENAI_BASE_URL": url} if base == "env" else {}
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "m", *flag,
            cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY, **extra),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    source_name = "--base-url" if base == "flag" else "OPENAI_BASE_URL"
    assert f"llmfanout: sent to openai at {url} (from {source_name})" in done.stderr
    assert f"to send to openai at {url} (from {source_name})" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (["-vv"], {}, True),
        (["-v"], {"LLMFANOUT_LOG": "debug"}, True),
        ([], {"LLMFANOUT_LOG": "DEBUG"}, True),
        ([], {}, False),
    ],
)
def test_verbose_logs_failed_attempts_and_never_the_key(
    tmp_path: Path, args: list[str], env: dict[str, str], shown: bool
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    write_prompts(source, 1)
    echoing = "bad key {api_key}, retry"  # the server quotes the key back
    with fake_llm_server_in_thread() as server:
        server.add_faults(Fault.status(500, message=echoing))
        done = llmfanout(
            "run", source, "-o", output, "--provider", "openai", "--model", "m",
            "--base-url", server.openai_base_url, *args,
            cwd=tmp_path, env=environment(OPENAI_API_KEY=KEY, **env),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr  # the retry succeeded
    assert KEY not in done.stderr and KEY not in output.read_text()
    logged = [line for line in done.stderr.splitlines() if line.startswith("llmfanout DEBUG")]
    assert bool(logged) is shown
    if shown:
        assert any("HTTP 500" in line for line in logged)


def test_verbose_works_before_and_after_the_command(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 1)
    for argv in (["-vv", "run"], ["run", "-vv"]):
        done = llmfanout(*argv, source, "-o", tmp_path / f"{argv[0]}.jsonl", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "llmfanout DEBUG llmfanout: run starting" in done.stderr


def test_a_bad_log_level_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 1)
    done = llmfanout(
        "run", source, "-o", tmp_path / "o.jsonl", cwd=tmp_path,
        env=environment(LLMFANOUT_LOG="loud"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "LLMFANOUT_LOG is 'loud'; use debug, info, warning or error" in done.stderr


@pytest.mark.parametrize(
    ("verbose", "env", "level"),
    [
        (0, None, None),
        (1, None, logging.INFO),
        (2, None, logging.DEBUG),
        (5, None, logging.DEBUG),
        (0, "warning", logging.WARNING),
        (1, "debug", logging.DEBUG),
        (2, "error", logging.DEBUG),
        (0, "15", 15),
        (0, " ", None),
    ],
)
def test_the_level_is_the_most_verbose_asked_for(
    verbose: int, env: str | None, level: int | None
) -> None:
    assert _log.level_from(verbose, env) == level


def test_lines_are_scrubbed_after_formatting_tracebacks_included() -> None:
    logger = logging.getLogger("llmfanout")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    out = io.StringIO()
    try:
        _log.configure(
            1, scrubs=[lambda text: text.replace("sk-secret", "[redacted]")], stream=out, env=""
        )
        try:
            raise RuntimeError("failed with sk-secret")
        except RuntimeError:
            logger.exception("call with %s failed", "sk-secret")
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
    assert "sk-secret" not in out.getvalue()
    assert "call with [redacted] failed" in out.getvalue()
    assert "RuntimeError: failed with [redacted]" in out.getvalue()
