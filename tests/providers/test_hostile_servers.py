"""Servers that break HTTP on purpose (issue 23), against both transports, on asyncio and trio.

Two responses in one write, header blocks without end, a protocol switch nobody asked
for, a stream left open after its terminal event, one endless SSE line: each fails the
call clearly (or answers with the first response only) and never leaves a connection in
an unknown state in the pool.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig
from llmfanout.errors import ProviderError, ResponseFormatError, ServerError
from llmfanout.providers import OpenAIProvider
from llmfanout.testing import set_testing

from support.raw_http_server import RawServer, response, serve_raw

pytestmark = pytest.mark.anyio

MESSAGES = [LLMMessage("user", "hi")]
TRANSPORTS = ["pool", "httpx"]


def answer_body(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"content": text}}]}).encode()


@asynccontextmanager
async def provider_for(raw: RawServer, transport: str, **options: Any) -> AsyncIterator[Any]:
    """An OpenAIProvider on ``raw``: over our pool, or over a given httpx client."""
    if transport == "pool":
        async with OpenAIProvider("m", base_url=raw.base_url, api_key="k", **options) as p:
            yield p
        return
    async with (
        httpx.AsyncClient() as client,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k", http_client=client, **options) as p,
    ):
        yield p


async def run_once(provider: Any, overrides: dict[str, Any] | None = None) -> Any:
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3))
    task = LLMTask(MESSAGES, config_overrides=overrides)
    with set_testing(True):  # a retry (the bug these tests guard against) does not wait
        [result] = (await executor.execute({"t": task})).values()
    return result


# -- item 3: two responses in one read ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_error_followed_in_the_same_write_by_a_success_is_the_error(
    transport: str,
) -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        if len(raw.requests) == 1:
            await stream.send(
                response("500 Internal Server Error", b"") + response(body=answer_body("smuggled"))
            )
        else:
            await stream.send(response(body=answer_body("fresh")))

    async with serve_raw(answer) as raw, provider_for(raw, transport) as provider:
        with pytest.raises(ServerError) as caught:
            await provider.complete(MESSAGES)
        assert caught.value.status_code == 500
        # The bytes past the first response never answer a later request.
        assert (await provider.complete(MESSAGES)).content == "fresh"
    assert raw.connections == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_two_successes_in_one_write_are_not_merged(transport: str) -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        first = response(body=answer_body("first"), headers=(("x-request-id", "one"),))
        second = response(body=answer_body("second"), headers=(("x-request-id", "two"),))
        await stream.send(first + second if len(raw.requests) == 1 else first)

    async with serve_raw(answer) as raw, provider_for(raw, transport) as provider:
        answer_one = await provider.complete(MESSAGES)
        answer_two = await provider.complete(MESSAGES)
    assert answer_one.content == answer_two.content == "first"
    assert answer_one.metadata["request_id"] == "one"
    assert raw.connections == 2  # the connection that carried extra bytes was closed


# -- item 4: the header block is capped -------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(f"x-h{i}", "v") for i in range(101)],  # too many
        [("x-big", "v" * (1 << 20))],  # one too long
    ],
    ids=["count", "bytes"],
)
async def test_a_header_block_past_its_caps_fails_without_retry(
    headers: list[tuple[str, str]],
) -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(body=answer_body("x"), headers=tuple(headers)))

    async with serve_raw(answer) as raw, provider_for(raw, "pool") as provider:
        result = await run_once(provider)
    assert isinstance(result.error, ResponseFormatError)
    assert result.error.retryable is False and result.attempts == 1
    assert "headers" in str(result.error)


async def test_endless_headers_are_cut_off_early() -> None:
    """A server that never ends its header block: the call fails once 64 KiB have come."""
    sent = 0

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        nonlocal sent
        await stream.send(b"HTTP/1.1 200 OK\r\n")
        while True:
            line = b"x-%d: %s\r\n" % (sent, b"v" * 100)
            await stream.send(line)
            sent += len(line)

    async with serve_raw(answer) as raw, provider_for(raw, "pool") as provider:
        with pytest.raises(ResponseFormatError, match="headers"):
            await provider.complete(MESSAGES)
    assert sent < 16 << 20


# -- item 12: a protocol switch ----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_switching_protocols_is_a_provider_error_not_retried(transport: str) -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
            b"\r\n\x81\x02hi"
        )

    async with serve_raw(answer) as raw, provider_for(raw, transport) as provider:
        result = await run_once(provider)
    assert isinstance(result.error, ProviderError)
    assert result.error.retryable is False and result.attempts == 1
    assert len(raw.requests) == 1


# -- item 7: a stream left open after its terminal event --------------------------------

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def sse_chunk(text: str) -> bytes:
    event = b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode()
    events = event + b"\n\ndata: [DONE]\n\n"
    return b"%x\r\n%s\r\n" % (len(events), events)


# httpx nests async generators without closing them: leaving a body early on trio makes
# trio warn about the inner ones (the connection is closed all the same).
HTTPX_LEFT_EARLY = pytest.param(
    "httpx", marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
)


@pytest.mark.parametrize("transport", ["pool", HTTPX_LEFT_EARLY])
async def test_a_stream_left_open_after_done_ends_the_call_at_once(transport: str) -> None:
    closed = anyio.Event()

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(SSE_HEAD + sse_chunk("whole"))  # and never the last chunk
        try:
            while await stream.receive():
                pass
        except anyio.EndOfStream:
            pass
        closed.set()
        raise anyio.EndOfStream  # this connection is over

    async with serve_raw(answer) as raw, provider_for(raw, transport, timeout=120) as provider:
        with anyio.fail_after(30):  # a guard: today's bug waits the 120 s read timeout
            answer_ = await provider.complete(MESSAGES, {"stream": True})
            await closed.wait()  # the connection was closed, not kept
    assert answer_.content == "whole"
    assert answer_.metadata["streamed"] is True


async def test_a_stream_ended_with_its_done_event_keeps_the_connection() -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(SSE_HEAD + sse_chunk("whole") + b"0\r\n\r\n")

    async with serve_raw(answer) as raw, provider_for(raw, "pool") as provider:
        for _ in range(3):
            assert (await provider.complete(MESSAGES, {"stream": True})).content == "whole"
    assert raw.connections == 1


# -- item 9: one endless line ------------------------------------------------------------


async def test_an_sse_line_past_its_cap_fails_the_call_clearly() -> None:
    """17 MiB in one line, sent in pieces: held as pieces (linear), refused past 16 MiB."""
    piece = b"x" * (1 << 20)

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(SSE_HEAD)
        await stream.send(b"%x\r\ndata: \r\n" % len(b"data: "))
        for _ in range(17):
            await stream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await stream.send(b"2\r\n\n\n\r\n0\r\n\r\n")

    async with serve_raw(answer) as raw, provider_for(raw, "pool") as provider:
        result = await run_once(provider, {"stream": True})
    assert isinstance(result.error, ResponseFormatError) and result.attempts == 1
    assert "longer than 16777216 characters" in str(result.error)
