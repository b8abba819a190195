"""Running ``python -m llmfanout`` in subprocesses: to completion, or started to be killed.

Waits are for conditions with a deadline (never a sleep standing for an event); every
started process is reaped in a ``finally``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

DEADLINE = 60.0  # seconds: generous, since every wait ends early on success


def run_cli(args: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m llmfanout ARGS`` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "llmfanout", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=DEADLINE,
        check=False,
    )


@contextmanager
def started(args: list[str], cwd: Path, env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``python -m llmfanout ARGS`` running for the block; killed and reaped after it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llmfanout", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=DEADLINE)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    """Poll ``condition`` until it holds; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert process.poll() is None, f"exited early: {process.communicate()}"
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.005)
