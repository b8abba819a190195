"""One writer per output: an advisory lock that names the process holding it.

The lock is a hidden file beside the output (``.NAME.lock``; ``.llmfanout.lock`` inside a
directory of shards) holding the holder's pid and command. ``flock`` releases it when the
process dies however it dies (``kill -9`` included), so a stale file never blocks a run.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
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


def _open_lock(path: str) -> int:
    """The lock file, made anew (never through a link), or one a dead process left.

    A link planted at the lock's path is refused (``OSError``), never followed: we would
    truncate and write its target. So is anything there that is not a regular file.
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | nofollow | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise OSError(
            errno.EINVAL, f"the lock file {path} is a link or not a regular file; remove it"
        )
    return fd


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
        fd = _open_lock(path)
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
        os.fchmod(fd, 0o600)  # a lock left by an older release may be readable by all
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} ({what})\n".encode())
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)
