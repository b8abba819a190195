"""A loopback TCP proxy that delays every byte by a fixed time each way: a slow network.

    with LatencyProxy(("127.0.0.1", redis_port), delay=0.3) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"   # every round trip now takes 0.6 s more

Each direction of each connection has a reader thread, which stamps what it reads with
the time it is due, and a writer thread, which sends it then: order is kept and the
delay does not grow with the traffic (it is latency, not a slow link). ``mute=True``
accepts connections and reads what is sent but never connects upstream or answers:
a server that is never reached. ``connections`` counts the connections accepted.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from types import TracebackType


class LatencyProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``, ``delay`` seconds late each way."""

    def __init__(self, upstream: tuple[str, int], delay: float, *, mute: bool = False) -> None:
        self.upstream = upstream
        self.delay = delay
        self.mute = mute
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    def __enter__(self) -> LatencyProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """A Redis URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        """Stop: close every socket, and wait for the threads."""
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(client)
            if self.mute:
                self._spawn(self._swallow, client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                due: queue.Queue[tuple[float, bytes]] = queue.Queue()
                self._spawn(self._read, source, due)
                self._spawn(self._write, sink, due)

    def _swallow(self, sock: socket.socket) -> None:
        while True:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    def _read(self, source: socket.socket, due: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            due.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, sink: socket.socket, due: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            at, data = due.get()
            # The latency itself, not a synchronisation: each chunk leaves when it is due.
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
