"""The fake LLM server's other entry points: a thread for sync callers, a script for processes.

Other suites (the CLI's, the provider benchmark) start it these ways, so they are tested here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support.fake_llm_server import Fault, fake_llm_server_in_thread

SERVER = Path(__file__).resolve().parents[1] / "support" / "fake_llm_server.py"


@pytest.mark.usefixtures("no_stray_threads")
def test_server_in_a_thread_answers_sync_clients() -> None:
    with fake_llm_server_in_thread() as server, httpx.Client() as client:
        server.add_faults(Fault.status(429, retry_after="1"))
        url = server.openai_base_url + "/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        refused = client.post(url, json=body)
        answered = client.post(url, json=body)
        assert server.base_url.startswith("http://127.0.0.1:")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert answered.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert [r.prompt for r in server.requests] == ["hi", "hi"]


def test_server_as_a_script_prints_its_url_and_serves() -> None:
    process = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client() as client:
            response = client.post(
                base_url + "/v1/messages",
                json={
                    "model": "c",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "yo"}],
                },
            )
        assert response.json()["content"] == [{"type": "text", "text": "echo: yo"}]
        assert response.headers["request-id"] == "req_0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
