"""Bytes past a response on the httpx path (issue 23 item 3), on asyncio and trio.

h11, under httpx and httpcore, keeps what follows a response in its buffer; unchecked,
httpcore pools the connection and the next request on it (another task's) is answered
with those bytes. These tests send a response and more in one write, and check that the
task gets its own response, that the connection is closed (a new one for the next
request, counted on the server), that clean connections are still reused, and that where
we cannot see into httpx (the guard) every request of ours asks for ``Connection: close``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor
from llmfanout.providers import OpenAIProvider
from llmfanout.providers._transports import _httpx
from llmfanout.providers._transports._base import Request, Timeouts
from llmfanout.providers._transports._httpx import HTTPXTransport

from support.raw_http_server import response, serve_raw

pytestmark = pytest.mark.anyio

TIMEOUTS = Timeouts(connect=10, read=10, write=10, pool=10, total=30)
GET = Request("GET", "/x", b"", None, TIMEOUTS, 1 << 20)


def answer_body(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"content": text}}]}).encode()


def chunked(status: str, body: bytes) -> bytes:
    framed = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
    head = f"HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    return head + framed + b"0\r\n\r\n"


def has_close(request: bytes) -> bool:
    head = request.partition(b"\r\n\r\n")[0].lower()
    return b"\r\nconnection: close" in head


@pytest.fixture
def blind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An httpx whose insides have moved: the path to h11's parser leads nowhere, and the
    probe (run afresh) finds it so."""
    monkeypatch.setattr(_httpx, "_TO_PARSER", ("_stream", "_moved"))
    monkeypatch.setattr(_httpx._Sight, "proved", None)
    yield
    _httpx._Sight.proved = None  # the next test probes the real httpx again


async def test_the_probe_sees_past_a_response_with_the_installed_httpx() -> None:
    """If this fails, an httpx or httpcore upgrade moved what _TO_PARSER follows: every
    request over httpx would then ask for Connection: close. Update the path."""
    assert await _httpx._probe() is True


# -- the first response, and only it -----------------------------------------------------

statuses = st.sampled_from(["200 OK", "500 Internal Server Error", "404 Not Found"])
stray = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.just(response(body=b"smuggled")),
    st.just(chunked("200 OK", b"smuggled")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, body=st.binary(max_size=300), framing=st.booleans(), extra=stray)
async def test_bytes_after_a_response_never_answer_the_next_request(
    status: str, body: bytes, framing: bool, extra: bytes
) -> None:
    first = chunked(status, body) if framing else response(status, body)

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(first + extra if len(raw.requests) == 1 else response(body=b"fresh"))

    async with (
        serve_raw(answer) as raw,
        httpx.AsyncClient() as client,
    ):
        transport = HTTPXTransport(client, raw.base_url, {}, owned=False)
        got = await transport.send(GET)
        assert (got.status, got.content) == (int(status[:3]), body)
        again = await transport.send(GET)
        assert (again.status, again.content) == (200, b"fresh")
    assert raw.connections == 2  # the connection that carried the extra bytes was closed


async def test_each_of_many_tasks_gets_its_own_answer() -> None:
    """Every response comes with a stray second one naming another task: run concurrently
    over a given client, each task still gets exactly its own answer."""

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        sent = json.loads(request.partition(b"\r\n\r\n")[2])["messages"][0]["content"]
        await stream.send(
            response(body=answer_body(sent)) + response(body=answer_body("not " + sent))
        )

    tasks = {f"t{i}": LLMTask([LLMMessage("user", f"t{i}")]) for i in range(40)}
    async with (
        serve_raw(answer) as raw,
        httpx.AsyncClient() as client,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k", http_client=client) as provider,
    ):
        results = await ParallelLLMExecutor(provider, max_concurrency=8).execute(tasks)
    assert {tag: r.value.content for tag, r in results.items()} == {t: t for t in tasks}
    assert raw.connections == len(raw.requests) == len(tasks)


async def test_through_an_environment_proxy_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw server as a forward proxy (HTTP_PROXY): our own httpx client, same rule."""

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        assert request.startswith(b"POST http://llm.invalid/v1/chat/completions ")
        n = len(raw.requests)
        await stream.send(response(body=answer_body(f"r{n}")) + response(body=b"smuggled"))

    async with serve_raw(answer) as raw:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, raw.base_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        provider = OpenAIProvider("m", base_url="http://llm.invalid/v1", api_key="k")
        async with provider:
            assert isinstance(provider._transport(), HTTPXTransport)
            for n in (1, 2):
                assert (await provider.complete([LLMMessage("user", "hi")])).content == f"r{n}"
    assert raw.connections == 2


async def test_a_clean_connection_is_still_reused() -> None:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(body=answer_body("ok")))

    async with (
        serve_raw(answer) as raw,
        httpx.AsyncClient() as client,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k", http_client=client) as provider,
    ):
        for _ in range(5):
            assert (await provider.complete([LLMMessage("user", "hi")])).content == "ok"
    assert raw.connections == 1
    assert not any(has_close(request) for request in raw.requests)


# -- the guard: where we cannot see, no connection outlives its response -----------------


@pytest.mark.usefixtures("blind")
async def test_where_httpx_hides_the_parser_every_request_asks_for_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="llmfanout")

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        n = len(raw.requests)
        await stream.send(response(body=answer_body(f"r{n}")) + response(body=b"smuggled"))

    async with (
        serve_raw(answer) as raw,
        httpx.AsyncClient() as client,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k", http_client=client) as provider,
    ):
        for n in (1, 2, 3):
            assert (await provider.complete([LLMMessage("user", "hi")])).content == f"r{n}"
        # The client is the user's: their own requests on it are left as they were.
        mine = await client.get(raw.base_url + "/mine")
    assert mine.status_code == 200
    assert [has_close(r) for r in raw.requests] == [True, True, True, False]
    assert raw.connections == 4
    assert _httpx._Sight.proved is False
    [warning] = [r for r in caplog.records if "Connection: close" in r.getMessage()]
    assert "please report it" in warning.getMessage()


class HidingTransport(httpx.AsyncBaseTransport):
    """A user's transport that wraps httpx's and re-wraps each response's stream: the
    connection underneath is out of our sight."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        got = await self.inner.handle_async_request(request)
        return httpx.Response(
            got.status_code, headers=got.headers, stream=Rewrapped(got), extensions=got.extensions
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class Rewrapped(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()


async def test_a_transport_hiding_its_connections_gets_close_after_its_first_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="llmfanout")

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(body=answer_body("ok")))

    async with (
        serve_raw(answer) as raw,
        httpx.AsyncClient(transport=HidingTransport()) as client,
        OpenAIProvider("m", base_url=raw.base_url, api_key="k", http_client=client) as provider,
    ):
        for _ in range(3):
            assert (await provider.complete([LLMMessage("user", "hi")])).content == "ok"
    assert [has_close(r) for r in raw.requests] == [False, True, True]
    [warning] = [r for r in caplog.records if "Connection: close" in r.getMessage()]
    assert raw.base_url in warning.getMessage()
