"""Ctrl-C (a real SIGINT) stops a running execute cleanly on each backend."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import anyio
    from llmfanout import DeterministicTask, LLMMessage, LLMTask, ParallelLLMExecutor

    in_flight = 0

    class Hang:
        async def complete(self, messages, config_overrides=None):
            global in_flight
            in_flight += 1
            try:
                await anyio.sleep_forever()
            finally:
                in_flight -= 1

    in_thread = 0

    def blocking():
        global in_thread
        in_thread += 1
        time.sleep(0.3)  # a thread cannot be interrupted: the run waits for it
        in_thread -= 1

    async def main():
        executor = ParallelLLMExecutor(Hang(), max_concurrency=4)
        tasks = {str(i): LLMTask([LLMMessage("user", str(i))]) for i in range(3)}
        tasks["thread"] = DeterministicTask(blocking)
        async with anyio.create_task_group() as tg:
            tg.start_soon(executor.execute_mixed, tasks)
            while in_flight < 3 or not in_thread:
                await anyio.sleep(0.01)
            print("ready", flush=True)
            await anyio.sleep_forever()

    interrupted = False
    try:
        anyio.run(main, backend=sys.argv[1])
    except* KeyboardInterrupt:  # trio delivers it to main(), inside this script's task group
        interrupted = True
    if not interrupted:
        print("finished without interrupt", flush=True)
        sys.exit(0)
    print(f"interrupted in_flight={in_flight} in_thread={in_thread}", flush=True)
    sys.exit(130)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigint_stops_execute_and_leaves_nothing_running(backend: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert out.strip() == "interrupted in_flight=0 in_thread=0"
