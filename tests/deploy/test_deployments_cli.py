"""``llmfanout run --deployments FILE`` against several loopback servers, and its checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support.fake_llm_server import Fault, fake_llm_server_in_thread

sys.path.insert(0, str(Path(__file__).parent.parent / "cli"))
from test_cli import assert_each_once, environment, llmfanout, write_prompts

KEYS = {"KEY_ONE": "sk-one-0123456789abcdef", "KEY_TWO": "sk-two-0123456789abcdef"}


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_rows_name_their_deployment_and_no_key_is_anywhere(tmp_path: Path, backend: str) -> None:
    source, output, listing = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "d.json"
    ids = write_prompts(source, 40)
    with fake_llm_server_in_thread(backend) as one, fake_llm_server_in_thread(backend) as two:
        # One deployment refuses its key now and then: the rows go to the other.
        two.fault_for = lambda request: (
            Fault.status(401, message="bad key {api_key}") if request.index % 2 else None
        )
        listing.write_text(
            json.dumps(
                [
                    {"name": "east", "provider": "openai", "model": "m",
                     "base_url": one.openai_base_url, "api_key_env": "KEY_ONE", "rpm": 60000},
                    {"name": "west", "provider": "openai", "model": "m",
                     "base_url": two.openai_base_url, "api_key_env": "KEY_TWO", "weight": 2},
                ]
            )
        )  # fmt: skip
        done = llmfanout(
            "run", source, "-o", output, "--deployments", listing, "--backend", backend,
            "--concurrency", "4", cwd=tmp_path, env=environment(**KEYS),
        )  # fmt: skip
        assert {r.api_key for r in one.requests} == {KEYS["KEY_ONE"]}
        assert {r.api_key for r in two.requests} <= {KEYS["KEY_TWO"]}
    assert done.returncode == 0, done.stderr
    found = assert_each_once(output, ids)
    assert all(row["success"] for row in found)
    assert {row["deployment"] for row in found} <= {"east", "west"}
    assert "deployments:" in done.stderr and "east" in done.stderr
    everything = done.stdout + done.stderr + output.read_text() + listing.read_text()
    for key in KEYS.values():
        assert key not in everything


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "a", "provider": "openai", "model": "m", "api_key": "sk-x"},
            "'api_key' holds a secret",
        ),
        ({"name": "a", "provider": "cohere", "model": "m"}, "provider is 'cohere'"),
        ({"name": "a", "provider": "openai", "model": "m", "rpm": -1}, "rpm is -1"),
        ({"name": "a", "provider": "openai", "model": "m", "fallback_for": ["mood"]}, "'mood'"),
        ({"name": "a", "provider": "openai", "model": "m", "colour": 1}, "unknown field 'colour'"),
        ({"name": "a", "provider": "openai", "api_key_env": "KEY_ONE"}, "give its model"),
        ({"name": "a", "provider": "openai", "model": "m", "api_key_env": "NOPE_KEY"}, "NOPE_KEY"),
    ],
)
def test_a_bad_deployments_file_is_refused_before_anything_is_sent(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    source, output, listing = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "d.json"
    write_prompts(source, 2)
    listing.write_text(json.dumps([entry]))
    done = llmfanout(
        "run", source, "-o", output, "--deployments", listing, cwd=tmp_path,
        env=environment(**KEYS),
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "'a'" in done.stderr or "deployment 1" in done.stderr
    assert "sk-x" not in done.stderr
    assert not output.exists() or not output.read_text()
