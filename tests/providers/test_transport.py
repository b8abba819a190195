"""The providers' connection layer against real loopback servers, on asyncio and trio.

Connection reuse counted on the server, idle connections the server closed, cancellation
of a hung server, TLS with a private CA, response size caps, the total deadline, the
request and stream primitives, and base URLs from the environment.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httptools
import httpx
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig
from llmfanout.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ProviderError,
    RateLimitError,
    ResponseFormatError,
)
from llmfanout.providers import AnthropicProvider, OpenAIProvider
from llmfanout.providers._transports._base import TooLarge
from llmfanout.providers._transports._h1 import Exchange
from llmfanout.providers._transports._httpx import HTTPXTransport
from llmfanout.providers._transports._origin import default_ssl_context
from llmfanout.providers._transports._pool import Pool

from support import fake_llm_server
from support.fake_llm_server import FakeLLMServer, Fault, serve_fake_llm
from support.raw_http_server import serve_raw

pytestmark = pytest.mark.anyio

KEY = "sk-transport-test-0123456789"
MESSAGES = [LLMMessage("user", "hi")]
ONCE = RetryConfig(max_attempts=1)


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def openai(base_url: str, **options: Any) -> OpenAIProvider:
    options.setdefault("api_key", KEY)
    return OpenAIProvider("m", base_url=base_url, **options)


def tasks(prefix: str, n: int) -> dict[str, LLMTask]:
    return {f"{prefix}{i}": LLMTask([LLMMessage("user", f"{prefix}{i}")]) for i in range(n)}


# -- reuse, idle closes, cancellation ----------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_many_requests_reuse_at_most_c_connections(server: FakeLLMServer, kind: str) -> None:
    concurrency = 8
    if kind == "openai":
        provider: OpenAIProvider | AnthropicProvider = openai(
            server.openai_base_url, max_connections=concurrency
        )
    else:
        provider = AnthropicProvider(
            "m", base_url=server.anthropic_base_url, api_key=KEY, max_connections=concurrency
        )
    async with provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=concurrency, default_retry=ONCE)
        results = await executor.execute(tasks("t", 300))
    assert all(r.success for r in results.values())
    assert len(server.requests) == 300
    assert server.connections_opened <= concurrency
    assert server.peak_connections <= concurrency


async def test_a_server_closing_idle_connections_fails_no_task(server: FakeLLMServer) -> None:
    """Connections the server closed while idle are never reused: no retry is needed."""
    async with openai(server.openai_base_url, max_connections=4) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=4, default_retry=ONCE)
        first = await executor.execute(tasks("a", 40))
        assert all(r.success and r.attempts == 1 for r in first.values())
        opened = server.connections_opened
        # Returns once each connection it closed has ended on the server: no wait on a
        # count of open connections, which a connection from elsewhere would hold up.
        await server.close_idle_connections()
        second = await executor.execute(tasks("b", 40))
    assert all(r.success and r.attempts == 1 for r in second.values())
    assert server.connections_opened > opened  # the closed ones were replaced, not reused


async def test_a_fake_server_wait_that_never_ends_fails_the_test(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's waits have a deadline: a bug fails one test with a message, never
    hangs the suite."""
    monkeypatch.setattr(fake_llm_server, "WAIT_LIMIT", 0.05)
    with pytest.raises(AssertionError, match=r"waited 0.05 s for 1 requests: 0 requests"):
        await server.wait_for_requests(1)
    async with await anyio.connect_tcp("127.0.0.1", server.port) as client:  # kept open
        await client.send(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        await client.receive()  # answered: the server counts the connection
        with pytest.raises(AssertionError, match=r"every connection to close: .* 1 connections"):
            await server.wait_for_no_connections()


async def test_connections_expire_after_keepalive(server: FakeLLMServer) -> None:
    async with openai(server.openai_base_url) as provider:
        await provider.complete(MESSAGES)
        [pool] = [provider._transport()]
        assert isinstance(pool, Pool)
        pool._expiry = 0.0  # every idle connection is now too old
        await provider.complete(MESSAGES)
    assert server.connections_opened == 2


async def test_connection_close_from_the_server_is_not_reused() -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        body = json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()
        await stream.send(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await stream.aclose()

    async with serve_raw(answer) as raw, openai(raw.base_url) as provider:
        for _ in range(3):
            assert (await provider.complete(MESSAGES)).content == "x"
    assert raw.connections == 3


async def test_cancelling_many_calls_on_a_hung_server_closes_every_socket(
    server: FakeLLMServer,
) -> None:
    n = 200
    server.fault_for = lambda request: Fault.hang()
    async with openai(server.openai_base_url, max_connections=n) as provider:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(provider.complete, MESSAGES)
                await server.wait_for_requests(n)
                scope.cancel()
        assert scope.cancelled_caught
        pool = provider._transport()
        assert isinstance(pool, Pool) and pool.open_connections == 0
        with anyio.fail_after(30):  # generous: the server sees every close
            await server.wait_for_no_connections()


async def test_a_pool_wait_times_out_with_advice(server: FakeLLMServer) -> None:
    gate = anyio.Event()
    server.add_faults(Fault.ok(gate=gate))
    timeout = httpx.Timeout(10.0, pool=0.05)
    provider = openai(server.openai_base_url, max_connections=1, timeout=timeout)
    async with provider, anyio.create_task_group() as tg:
        tg.start_soon(provider.complete, MESSAGES)
        await server.wait_for_requests(1)
        with pytest.raises(APITimeoutError, match="max_connections"):
            await provider.complete(MESSAGES)
        gate.set()


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[FakeLLMServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    async with serve_fake_llm(ssl_context=context) as running:
        yield running


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_tls_with_the_ca_given_succeeds(tls_server: FakeLLMServer, ca_file: str) -> None:
    async with openai(tls_server.openai_base_url, verify=ca_file) as provider:
        for _ in range(3):
            answer = await provider.complete(MESSAGES)
            assert answer.content == "echo: hi"
    assert tls_server.connections_opened == 1


async def test_tls_with_an_ssl_context_succeeds(tls_server: FakeLLMServer, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with openai(tls_server.openai_base_url, verify=context) as provider:
        assert (await provider.complete(MESSAGES)).content == "echo: hi"


@pytest.fixture
def ssl_cert_file(ca_file: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    default_ssl_context.cache_clear()
    yield
    default_ssl_context.cache_clear()


@pytest.mark.usefixtures("ssl_cert_file")
async def test_tls_honours_ssl_cert_file(tls_server: FakeLLMServer) -> None:
    async with openai(tls_server.openai_base_url) as provider:
        assert (await provider.complete(MESSAGES)).content == "echo: hi"


async def test_tls_without_the_ca_fails_clearly(tls_server: FakeLLMServer) -> None:
    async with openai(tls_server.openai_base_url) as provider:
        with pytest.raises(APIConnectionError) as caught:
            await provider.complete(MESSAGES)
    message = str(caught.value)
    assert "certificate verif" in message.lower()
    assert "verify=" in message and "SSL_CERT_FILE" in message
    assert not tls_server.requests


# -- size caps (issue 9 item 2) ----------------------------------------------------------


def _huge_answer(status: str, size: int, *, chunked: bool = False) -> Any:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        if chunked:
            await stream.send(f"HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        else:
            await stream.send(f"HTTP/1.1 {status}\r\ncontent-length: {size}\r\n\r\n".encode())
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            await stream.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            await stream.send(b"0\r\n\r\n")

    return answer


@pytest.mark.parametrize(
    ("status", "chunked"), [("200 OK", False), ("500 Oops", False), ("200 OK", True)]
)
async def test_a_body_past_max_response_bytes_is_refused(status: str, chunked: bool) -> None:
    limit = 1 << 20
    answer = _huge_answer(status, 8 << 20, chunked=chunked)
    async with serve_raw(answer) as raw, openai(raw.base_url, max_response_bytes=limit) as p:
        executor = ParallelLLMExecutor(p, default_retry=RetryConfig(max_attempts=3))
        [result] = (await executor.execute(tasks("big", 1))).values()
    assert isinstance(result.error, ResponseFormatError)
    assert result.error.retryable is False and result.attempts == 1
    assert "max_response_bytes=1048576" in str(result.error)


async def test_a_gzip_bomb_is_stopped_after_decompression() -> None:
    limit = 1 << 20
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # ~64 KB on the wire

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (len(bomb), bomb)
        )

    async with serve_raw(answer) as raw, openai(raw.base_url, max_response_bytes=limit) as p:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseFormatError, match="max_response_bytes"):
                await p.complete(MESSAGES)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * limit  # the 64 MiB it would inflate to never exist at once


async def test_a_gzipped_answer_is_decoded() -> None:
    body = gzip.compress(json.dumps({"choices": [{"message": {"content": "zipped"}}]}).encode())

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )

    async with serve_raw(answer) as raw, openai(raw.base_url) as provider:
        assert (await provider.complete(MESSAGES)).content == "zipped"
    assert b"accept-encoding: gzip, deflate" in raw.requests[0]


async def test_max_response_bytes_applies_to_a_given_http_client() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = openai("http://api.test/v1", http_client=client, max_response_bytes=1000)
        with pytest.raises(ResponseFormatError, match="max_response_bytes"):
            await provider.complete(MESSAGES)


# -- the total deadline (issue 9 item 3) -------------------------------------------------


async def test_a_slow_drip_server_meets_the_total_timeout() -> None:
    """One byte at a time never trips the read timeout; the attempt's deadline ends it."""

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
        while True:
            await stream.send(b" ")
            await anyio.sleep(0.01)

    async with serve_raw(answer) as raw, openai(raw.base_url, timeout=5.0, total_timeout=0.3) as p:
        with pytest.raises(APITimeoutError, match="total_timeout") as caught:
            await p.complete(MESSAGES)
    assert caught.value.retryable


def test_every_attempt_has_a_total_deadline_by_default() -> None:
    provider = openai("http://127.0.0.1:9/v1")
    assert provider.total_timeout == 600.0
    assert math.isfinite(provider._timeouts.total)


def test_a_bad_total_timeout_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="total_timeout is 0"):
        openai("http://127.0.0.1:9/v1", total_timeout=0)


# -- the request and stream primitives ---------------------------------------------------


async def test_request_returns_status_headers_and_body(server: FakeLLMServer) -> None:
    async with openai(server.openai_base_url) as provider:
        body = {"model": "m", "messages": [{"role": "user", "content": "raw"}]}
        response = await provider.request("POST", "/chat/completions", json=body)
        assert response.status == 200
        assert response.headers["x-request-id"] == "req_0"
        assert json.loads(response.content)["choices"][0]["message"]["content"] == "echo: raw"
        with pytest.raises(BadRequestError) as caught:
            await provider.request("GET", "/files")
        assert caught.value.status_code == 404
    [first, second] = server.requests
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert second.method == "GET" and second.path == "/v1/files"


async def test_request_sends_bytes_with_their_content_type(server: FakeLLMServer) -> None:
    async with openai(server.openai_base_url) as provider:
        with pytest.raises(BadRequestError):
            await provider.request(
                "POST", "/files", content=b"--b\r\n\r\n--b--", content_type="multipart/form-data"
            )
    [request] = server.requests
    assert request.headers["content-type"] == "multipart/form-data"
    assert request.body == b"--b\r\n\r\n--b--"


async def test_request_refuses_another_host(server: FakeLLMServer) -> None:
    async with openai(server.openai_base_url) as provider:
        with pytest.raises(ValueError, match="only sent to base_url's host"):
            await provider.request("GET", "https://elsewhere.example/v1/files")
        response = await provider.request(
            "POST", server.openai_base_url + "/chat/completions", json={"messages": []}
        )
        assert response.status == 200


async def test_stream_reads_chunks_and_reuses_the_connection(server: FakeLLMServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "s"}]}
    async with openai(server.openai_base_url) as provider:
        for _ in range(3):
            async with provider.stream("POST", "/chat/completions", json=body) as response:
                assert response.status == 200
                data = b"".join([chunk async for chunk in response])
            assert json.loads(data)["choices"][0]["message"]["content"] == "echo: s"
    assert server.connections_opened == 1


async def test_stream_left_early_closes_the_connection(server: FakeLLMServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "s"}]}
    server.add_faults(Fault.stall())
    async with openai(server.openai_base_url, timeout=5.0) as provider:
        async with provider.stream("POST", "/chat/completions", json=body) as response:
            async for _ in response:
                break  # the server will never send the rest
        await server.wait_for_no_connections()
        assert (await provider.complete(MESSAGES)).content == "echo: hi"
    assert server.connections_opened == 2


async def test_stream_raises_for_an_error_status(server: FakeLLMServer) -> None:
    server.add_faults(Fault.status(429, retry_after="3"))
    async with openai(server.openai_base_url) as provider:
        with pytest.raises(RateLimitError) as caught:
            async with provider.stream("POST", "/chat/completions", json={}):
                pytest.fail("the block must not run for an error status")
    assert caught.value.retry_after == 3.0


async def test_stream_read_times_out(server: FakeLLMServer) -> None:
    server.add_faults(Fault.stall())
    async with openai(server.openai_base_url, timeout=0.2) as provider:
        with pytest.raises(APITimeoutError, match="read timeout"):
            async with provider.stream("POST", "/chat/completions", json={}) as response:
                await response.read()


async def test_error_headers_reach_the_error(server: FakeLLMServer) -> None:
    server.add_faults(Fault.status(429, headers={"x-ratelimit-remaining-requests": "0"}))
    async with openai(server.openai_base_url) as provider:
        with pytest.raises(RateLimitError) as caught:
            await provider.complete(MESSAGES)
    assert caught.value.headers is not None
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"


# -- transports chosen, base URLs from the environment ---------------------------------


def test_an_environment_proxy_goes_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    proxied = openai("https://api.example/v1")
    direct = openai("https://internal.example/v1")

    async def main() -> None:
        assert isinstance(proxied._transport(), HTTPXTransport)
        assert isinstance(direct._transport(), Pool)
        await proxied.aclose()
        await direct.aclose()

    anyio.run(main)


@pytest.mark.parametrize(
    ("cls", "variable", "default"),
    [
        (OpenAIProvider, "OPENAI_BASE_URL", "https://api.openai.com/v1"),
        (AnthropicProvider, "ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    ],
)
def test_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, cls: type[OpenAIProvider], variable: str, default: str
) -> None:
    """Issue 13 item 4: the variable is honoured; an explicit base_url wins."""
    monkeypatch.delenv(variable, raising=False)
    assert cls("m", api_key=KEY).base_url == default
    monkeypatch.setenv(variable, "http://localhost:8000/v1/")
    assert cls("m", api_key=KEY).base_url == "http://localhost:8000/v1"
    assert cls("m", api_key=KEY, base_url="http://other:1").base_url == "http://other:1"
    monkeypatch.setenv(variable, "localhost:8000")
    with pytest.raises(ValueError, match=variable):
        cls("m", api_key=KEY)


async def test_base_url_from_the_environment_is_where_requests_go(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    async with OpenAIProvider("m", api_key=KEY) as provider:
        assert (await provider.complete(MESSAGES)).content == "echo: hi"
    assert len(server.requests) == 1


# -- a request that never reached the server, and one that may have -------------------


async def test_a_request_that_never_left_is_sent_again_on_a_new_connection(
    server: FakeLLMServer,
) -> None:
    """The server reset an idle connection and the zero-time poll missed it (a race): the
    write fails, so the server never saw the request, and a new connection serves it."""

    class Reset(anyio.abc.ByteStream):
        def __init__(self, inner: anyio.abc.ByteStream) -> None:
            self.inner = inner

        async def send(self, item: bytes) -> None:
            raise anyio.BrokenResourceError  # what a write to a reset socket raises

        async def receive(self, max_bytes: int = 65536) -> bytes:
            raise AssertionError("nothing was sent, so nothing is read")

        async def send_eof(self) -> None:
            await self.inner.send_eof()

        async def aclose(self) -> None:
            await self.inner.aclose()

    async with openai(server.openai_base_url) as provider:
        executor = ParallelLLMExecutor(provider, default_retry=ONCE)
        assert (await executor.execute(tasks("a", 1)))["a0"].success
        pool = provider._transport()
        assert isinstance(pool, Pool)
        [idle] = pool._idle
        idle.stream = Reset(idle.stream)
        [result] = (await executor.execute(tasks("b", 1))).values()
    assert result.success and result.attempts == 1
    assert [r.prompt for r in server.requests] == ["a0", "b0"]
    assert server.connections_opened == 2


async def test_a_request_that_may_have_reached_the_server_is_not_resent(
    server: FakeLLMServer,
) -> None:
    async with openai(server.openai_base_url) as provider:
        await provider.complete(MESSAGES)  # the connection is now idle, and reused next
        server.add_faults(Fault.disconnect())
        with pytest.raises(APIConnectionError) as caught:
            await provider.complete(MESSAGES)
    assert caught.value.retryable  # the executor's RetryConfig decides, not the transport
    assert len(server.requests) == 2  # it arrived once and was not sent again


# -- parsing: any split of the bytes gives the same response -----------------------------


def _wire(body: bytes, *, chunked: bool, gzipped: bool) -> bytes:
    payload = gzip.compress(body) if gzipped else body
    head = b"HTTP/1.1 200 OK\r\nx-request-id: r1\r\n"
    if gzipped:
        head += b"content-encoding: gzip\r\n"
    if not chunked:
        return head + b"content-length: %d\r\n\r\n" % len(payload) + payload
    pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + b"transfer-encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


@given(
    body=st.binary(max_size=2000),
    chunked=st.booleans(),
    gzipped=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_a_response_split_anywhere_parses_the_same(
    body: bytes, chunked: bool, gzipped: bool, cuts: list[int]
) -> None:
    wire = _wire(body, chunked=chunked, gzipped=gzipped)
    exchange = Exchange(max_bytes=1 << 20)
    parser = httptools.HttpResponseParser(exchange)
    exchange.parser = parser
    edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        parser.feed_data(wire[start:end])
    assert exchange.complete and exchange.keep_alive and exchange.error is None
    assert exchange.status == 200 and exchange.headers["x-request-id"] == "r1"
    assert exchange.body() == body


@given(body=st.binary(min_size=1, max_size=5000), limit=st.integers(min_value=0, max_value=6000))
def test_the_size_cap_holds_for_any_body(body: bytes, limit: int) -> None:
    exchange = Exchange(max_bytes=limit)
    parser = httptools.HttpResponseParser(exchange)
    exchange.parser = parser
    parser.feed_data(_wire(body, chunked=False, gzipped=True))
    if len(body) > limit:
        assert isinstance(exchange.error, TooLarge) and sum(map(len, exchange.chunks)) == 0
    else:
        assert exchange.error is None and exchange.body() == body


@pytest.mark.parametrize("cancel_after", [1, 7, 20])  # 8 hung calls fill the pool by 22
async def test_cancellation_at_any_point_leaks_no_connection_slot(
    server: FakeLLMServer, cancel_after: int
) -> None:
    """Every slot comes back: after cancelling calls midway, the pool's count of open
    connections is exactly its idle ones, and a full-size round still gets through."""
    server.fault_for = lambda request: Fault.hang() if request.index % 3 == 0 else None
    async with openai(server.openai_base_url, max_connections=8) as provider:
        pool = provider._transport()
        assert isinstance(pool, Pool)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(provider.complete, MESSAGES)
                await server.wait_for_requests(cancel_after)
                scope.cancel()
        assert pool.open_connections == len(pool._idle) <= 8
        await server.close_idle_connections()  # and some die while idle, too
        server.fault_for = None
        executor = ParallelLLMExecutor(provider, max_concurrency=8, default_retry=ONCE)
        results = await executor.execute(tasks("after", 16))
    assert all(r.success for r in results.values())


async def test_an_inner_async_with_keeps_the_connections_of_the_outer(
    server: FakeLLMServer,
) -> None:
    """Blocks nest (a library's inside yours): only the outermost closes, once."""
    hello: list[Any] = [{"role": "user", "content": "hello"}]
    provider = openai(server.openai_base_url, max_connections=1)

    async def inner() -> None:
        async with provider:
            await provider.complete(hello)
            raise ValueError("inner")

    async with provider:
        await provider.complete(hello)
        with pytest.raises(ValueError, match="inner"):
            await inner()
        await provider.complete(hello)  # still open, on the same connection
        assert server.connections_opened == 1
    await server.wait_for_no_connections()
    with pytest.raises(ProviderError, match="closed"):
        await provider.complete(hello)
