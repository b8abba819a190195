"""No password in any file or message: the lock, "busy", "To finish, run:", a JobSpec's repr."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import redis

from llmfanout import JobSpec
from llmfanout._rows._lock import lock_path

from support.redis_server import running_redis

PASSWORD = "hunter2-redis-secret"
DEADLINE = 60.0


def test_a_jobspec_repr_redacts_its_shared_limit_like_redisratelimit() -> None:
    spec = JobSpec(shared_limit=f"redis://:{PASSWORD}@cache:6379/0", rpm=60)
    assert PASSWORD not in repr(spec)
    assert "redis://cache:6379/0" in repr(spec)


def test_the_redis_password_is_in_no_lock_file_and_no_message(tmp_path: Path) -> None:
    with running_redis() as server:
        client = redis.Redis(port=server.port)
        client.config_set("requirepass", PASSWORD)
        client.close()
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        source.write_text("".join(json.dumps({"id": i, "prompt": "p"}) + "\n" for i in range(3)))
        argv = [sys.executable, "-m", "llmfanout", "run", str(source), "-o", str(output)]
        argv += ["--echo-latency", "30", "--concurrency", "1", "--rpm", "600"]
        argv += ["--shared-limit", url, "--quiet"]
        first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            lock = Path(lock_path(str(output)))
            deadline = time.monotonic() + DEADLINE
            # Polling the file system for the lock: the only sign the run is under way.
            while not (lock.exists() and lock.read_text()):
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
            assert PASSWORD not in lock.read_text()
            assert "redis://:***@127.0.0.1" in lock.read_text()
            second = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
            assert second.returncode == 2
            assert "being written by another run" in second.stderr
            assert PASSWORD not in second.stderr
            first.send_signal(signal.SIGINT)
            _, stderr = first.communicate(timeout=DEADLINE)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 130
        assert "To finish, run:" in stderr and "--resume" in stderr
        assert PASSWORD not in stderr
