"""One HTTP/1.1 response as httptools parses it: status, headers, body chunks, its end.

httptools (llhttp, the C parser uvicorn uses) calls back into :class:`Exchange` as bytes
are fed to it; the body's bytes pass through an :class:`~._base.Inflow` (decompressed,
capped) as they come. Pure code: nothing here touches a socket.
"""

from __future__ import annotations

import httptools

from ._base import HeadersTooLarge, Inflow, TransportError

MAX_HEADERS = 100  # as h11 and aiohttp bound a response's header block
MAX_HEAD_BYTES = 64 * 1024


class _Beyond(Exception):
    """Raised in a callback to stop the parser at the end of our response."""


def encode_headers(headers: dict[str, str]) -> bytes:
    """A header block's lines (without the blank line that ends it)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


class Exchange:
    """httptools callbacks for one response: status, headers, body chunks, completion.

    ``error`` holds a failure met in a callback (the body past its cap, bad compressed
    data); the reader raises it after the feed.
    """

    __slots__ = (
        "chunks",
        "complete",
        "error",
        "head_bytes",
        "headers",
        "headers_done",
        "inflow",
        "keep_alive",
        "length_known",
        "max_bytes",
        "messages",
        "n_headers",
        "parser",
        "reason",
        "status",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.inflow = Inflow(max_bytes)
        self.error: TransportError | None = None
        self.length_known = False
        self.messages = 0
        self.n_headers = 0  # across informational answers too: endless 103s are capped
        self.head_bytes = 0  # bytes read before the headers were in (see Pool._feed)
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the end of our response: nothing of ours
            raise _Beyond
        self.messages += 1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.n_headers += 1
        if self.n_headers > MAX_HEADERS:
            self.error = HeadersTooLarge(f"it has more than {MAX_HEADERS} headers")
            raise _Beyond
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        if self.parser is not None:
            self.status = self.parser.get_status_code()
        headers = self.headers
        self.length_known = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        encoding = headers.get("content-encoding")
        if encoding:
            self.inflow = Inflow(self.max_bytes, encoding)
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.error is not None:
            return
        try:
            body = self.inflow.take(body)
        except TransportError as exc:
            self.error = exc
            self.chunks.clear()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an informational answer (103): the real one follows
            self.reason, self.headers, self.headers_done, self.messages = "", {}, False, 0
            return
        # Asked here: llhttp forgets the connection's fate once the message is done.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()
        self.complete = True

    def body(self) -> bytes:
        """The body chunks parsed so far, taken out as one."""
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks.pop()
        data = b"".join(chunks)
        chunks.clear()
        return data
