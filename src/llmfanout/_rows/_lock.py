"""One writer per output: an advisory lock that names the process holding it.

The lock is a hidden file beside the output (``.NAME.lock``; ``.llmfanout.lock`` inside a
directory of shards) holding the holder's pid and command. ``flock`` releases it when the
process dies however it dies (``kill -9`` included), so a stale file never blocks a run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


class Busy(Exception):
    """Another process holds the lock; ``holder`` says which, as well as the file can."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_path(output: str) -> str:
    """Where the lock for ``output`` (a file or a directory) lives."""
    if os.path.isdir(output):
        return os.path.join(output, ".llmfanout.lock")
    folder, name = os.path.split(os.path.abspath(output))
    return os.path.join(folder, f".{name}.lock")


@contextmanager
def hold(output: str, what: str) -> Iterator[None]:
    """Hold the lock on ``output`` while the block runs; raise :class:`Busy` at once if taken.

    ``what`` (the command) is written into the lock for the message another run shows.
    Raises ``OSError`` when the lock file cannot be made (an unwritable folder).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield
        return
    path = lock_path(output)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise Busy(holder or "another process (it is starting up)") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        # The run before us unlinked this file as it finished: lock the new one instead.
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} ({what})\n".encode())
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)
