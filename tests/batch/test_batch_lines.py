"""A batch results download read line by line (issue 23 item 9): lines split anywhere
come out whole, and a line past the cap fails the download clearly, on asyncio and trio."""

from __future__ import annotations

import anyio.abc
import pytest

from llmfanout import OpenAIProvider
from llmfanout._batch import _http
from llmfanout._batch._http import BatchHTTP
from llmfanout.errors import ResponseFormatError

from support.raw_http_server import serve_raw

pytestmark = pytest.mark.anyio

LINES = [b'{"custom_id": "r-0"}', b"", b'{"custom_id": "r-1", "x": "' + b"y" * 5000 + b'"}']


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


async def download(body: bytes, size: int) -> list[bytes] | ResponseFormatError:
    """The lines, or the error (returned: raised, the server's task group would wrap it)."""

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(chunked(body, size))

    async with (
        serve_raw(answer) as raw,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k") as p,
    ):
        try:
            return [line async for line in BatchHTTP(p).lines("/files/f/content")]
        except ResponseFormatError as exc:
            return exc


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
async def test_lines_split_anywhere_come_out_whole(size: int) -> None:
    body = b"\n".join(LINES) + b"\n" + b'{"tail": 1}'
    assert await download(body, size) == [LINES[0], LINES[2], b'{"tail": 1}']


@pytest.mark.parametrize("size", [100, 1 << 20])
async def test_a_line_past_the_cap_fails_the_download(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(_http, "MAX_LINE", 4000)
    error = await download(b"\n".join(LINES), size)
    assert isinstance(error, ResponseFormatError)
    assert "longer than 4000 bytes" in str(error)
