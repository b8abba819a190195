"""A loopback server that answers every request with bytes a test wrote by hand.

For what a well-behaved server never does (a key echoed in a reason phrase, a body that
drips a byte at a time, a gzip bomb), which :mod:`fake_llm_server` cannot be made to say::

    async def answer(stream, request):
        await stream.send(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nhi")

    async with serve_raw(answer) as server:
        ...  # server.base_url, server.requests
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc

Answer = Callable[[anyio.abc.SocketStream, bytes], Awaitable[None]]
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class RawServer:
    """The running server: its address, and every request it read (head and body)."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_connections = 0


async def _read_request(stream: anyio.abc.SocketStream, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive()
        if not data:
            return None
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        body += await stream.receive()
    buffer[:] = body[length:]
    return head + b"\r\n\r\n" + bytes(body[:length])


@asynccontextmanager
async def serve_raw(answer: Answer) -> AsyncIterator[RawServer]:
    """Serve on a free loopback port; ``answer(stream, request)`` writes each response.

    The connection stays open for the next request once ``answer`` returns; it closes
    when ``answer`` raises or the block is left.
    """
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        server = RawServer(listener.extra(anyio.abc.SocketAttribute.local_port))

        async def handle(stream: anyio.abc.SocketStream) -> None:
            server.connections += 1
            server.open_connections += 1
            buffer = bytearray()
            try:
                async with stream:
                    while (request := await _read_request(stream, buffer)) is not None:
                        server.requests.append(request)
                        await answer(stream, request)
            except _GONE:
                pass
            finally:
                server.open_connections -= 1

        tg.start_soon(listener.serve, handle, tg)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def response(
    status: str = "200 OK", body: bytes = b"{}", headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A whole HTTP/1.1 response with a content-length."""
    lines = [f"HTTP/1.1 {status}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
