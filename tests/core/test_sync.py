"""execute_sync and friends: from a plain script, and from inside a running event loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmfanout import (
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
)
from llmfanout._core import _sync as sync_module

from support.fake_llm_server import FakeLLMServer, Fault, fake_llm_server_in_thread

SYNC_BACKENDS = ["asyncio", "trio"]
ROOT = Path(__file__).resolve().parents[2]


def tasks(n: int) -> dict[str, LLMTask]:
    return {f"t{i}": LLMTask([{"role": "user", "content": f"q{i}"}]) for i in range(n)}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with fake_llm_server_in_thread() as running:
        yield running


def openai(server: FakeLLMServer) -> OpenAIProvider:
    return OpenAIProvider("m", base_url=server.openai_base_url, api_key="k")


@pytest.mark.usefixtures("no_stray_threads")
@pytest.mark.parametrize("backend", SYNC_BACKENDS)
def test_execute_sync_from_plain_code(server: FakeLLMServer, backend: str) -> None:
    executor = ParallelLLMExecutor(openai(server), max_concurrency=3)
    first = executor.execute_sync(tasks(5), backend=backend)
    again = executor.execute_sync(tasks(2), backend=backend)  # a new loop, a new pool
    assert [r.value.content for r in first.values()] == [f"echo: q{i}" for i in range(5)]
    assert [r.value.content for r in again.values()] == ["echo: q0", "echo: q1"]


@pytest.mark.anyio
@pytest.mark.usefixtures("no_stray_threads")
@pytest.mark.parametrize("backend", SYNC_BACKENDS)
async def test_execute_sync_inside_a_running_loop(server: FakeLLMServer, backend: str) -> None:
    # As in a notebook cell: sync code called while this thread's event loop runs.
    assert sync_module.loop_running()
    executor = ParallelLLMExecutor(openai(server), max_concurrency=3)
    results = executor.execute_sync(tasks(4), backend=backend)
    assert all(r.success for r in results.values())
    assert [r.value.content for r in results.values()] == [f"echo: q{i}" for i in range(4)]
    await anyio.lowlevel.checkpoint()  # the outer loop is still fine


@pytest.mark.anyio
@pytest.mark.parametrize("backend", SYNC_BACKENDS)
async def test_mixed_and_sequential_sync_inside_a_running_loop(backend: str) -> None:
    executor = ParallelLLMExecutor(EchoProvider())
    mixed = executor.execute_mixed_sync(
        {"llm": LLMTask([LLMMessage("user", "hi")]), "fn": DeterministicTask(len, ("abc",))},
        backend=backend,
    )
    assert mixed["llm"].value.content == "Echo: hi" and mixed["fn"].value == 3
    chain = executor.execute_sequential_sync(
        [LLMTask([LLMMessage("user", "a")]), LLMTask([LLMMessage("user", "b")])],
        pass_result=True,
        backend=backend,
    )
    assert [r.tag for r in chain] == ["step_0", "step_1"]
    assert chain[1].value.content == "Echo: b"


@pytest.mark.parametrize("backend", SYNC_BACKENDS)
def test_sync_calls_from_plain_code_use_the_backend_asked_for(backend: str) -> None:
    seen: list[str] = []

    def record(_: object) -> None:
        import sniffio

        seen.append(sniffio.current_async_library())

    executor = ParallelLLMExecutor(EchoProvider())
    executor.execute_sync(tasks(1), backend=backend, on_result=record)
    assert seen == [backend]


def test_an_unknown_backend_is_refused_before_any_work() -> None:
    provider = EchoProvider()
    with pytest.raises(ValueError, match="execute_sync: backend is 'curio'; use 'asyncio'"):
        ParallelLLMExecutor(provider).execute_sync(tasks(1), backend="curio")
    assert provider.call_count == 0


def test_bad_input_raises_the_same_error_as_the_async_call() -> None:
    with pytest.raises(TypeError, match=r"execute: task 'x' is a str; give an LLMTask"):
        ParallelLLMExecutor(EchoProvider()).execute_sync({"x": "hello"})  # type: ignore[dict-item]


@pytest.mark.anyio
async def test_an_error_from_on_result_propagates_from_the_thread() -> None:
    def boom(_: object) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        ParallelLLMExecutor(EchoProvider()).execute_sync(tasks(2), on_result=boom)


class Blocking:
    """A provider whose calls wait until cancelled, reporting start and cancellation."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


@pytest.mark.usefixtures("no_stray_threads")
@pytest.mark.parametrize("backend", SYNC_BACKENDS)
def test_an_interrupt_while_waiting_on_the_thread_cancels_the_work(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "loop_running", lambda: True)  # take the thread path
    provider = Blocking()

    def interrupt() -> None:
        provider.started.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt)
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ParallelLLMExecutor(provider).execute_sync(tasks(1), backend=backend)
    finally:
        sender.join()
    assert provider.cancelled.is_set()  # the work was cancelled, and its thread has ended


def test_execute_sync_from_a_script(server: FakeLLMServer, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from llmfanout import LLMTask, OpenAIProvider, ParallelLLMExecutor

            provider = OpenAIProvider("m", base_url={server.openai_base_url!r}, api_key="k")
            executor = ParallelLLMExecutor(provider)
            tasks = {{"a": LLMTask([{{"role": "user", "content": "from a script"}}])}}
            for backend in ("asyncio", "trio"):
                print(executor.execute_sync(tasks, backend=backend)["a"].value.content)
            """
        )
    )
    server.add_faults(Fault.ok("one"), Fault.ok("two"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["one", "two"]
