"""HTTP at the concurrency users run: requests/s and client CPU per request, C = 16..1000.

An OpenAI-compatible loopback server answers every POST after ``--latency`` seconds (50 ms
by default), in its own process pinned to core 0 (``taskset``, where it exists). Each
contender runs in a fresh process pinned to core 1, with C workers calling for a fixed
time (after a warm-up that opens the connections), each parsing the JSON answer:

- ``raw socket``: an asyncio Protocol per connection, hand-parsed: the floor.
- ``aiohttp``: one ``ClientSession`` (its C parser), the yardstick.
- ``httpx``: one ``AsyncClient`` with its default pool sized to C.
- ``llmfanout complete``: ``OpenAIProvider.complete`` on asyncio and on trio.
- ``llmfanout complete httpx`` (only when named in ``--contenders``): the same over a
  given ``httpx.AsyncClient`` (``http_client=``, the path proxies take), to set beside
  ``httpx`` alone in the same run.
- ``llmfanout stream``: ``ParallelLLMExecutor.stream`` over an endless input, the whole
  library path (retry policy on), on asyncio and on trio.

Printed per C: requests/s, share of the ideal (C / latency), client CPU per request
(microseconds), the ratios to aiohttp measured in the same run (of requests/s, higher
is better; of CPU per request, lower is better), and for llmfanout the time (and CPU time) to cancel
the run with C calls in flight (every socket closed). ``--latency 1000`` makes a server
that never answers in time: what is left to measure is the cancellation. The machine may
be shared: the load average is printed with each table, and the ratios (same run, same
server) are what to compare.

Run: ``python benchmarks/bench_providers.py`` (about 3 minutes); ``--quick`` for a smoke
run; ``--concurrency 16 500``, ``--seconds``, ``--latency``, ``--contenders`` change it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

BODY = json.dumps(
    {
        "model": "bench",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How are you today?"},
        ],
    }
).encode()
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: How are you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    }
).encode()
KEY = "sk-bench-0123456789"
CONTENDERS = [
    "raw socket",
    "aiohttp",
    "httpx",
    "llmfanout complete asyncio",
    "llmfanout complete trio",
    "llmfanout stream asyncio",
    "llmfanout stream trio",
]
# On request (--contenders): the httpx path (http_client=, proxies), beside plain httpx.
ON_REQUEST = ["llmfanout complete httpx asyncio", "llmfanout complete httpx trio"]


# -- the server: a raw asyncio Protocol, so it is never the bottleneck -------------------


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_1\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = _content_length(buffer[:end])
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            self.loop.call_later(self.latency, self._answer)
        self.buffer = buffer

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.response)


async def _serve(latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _ServerProtocol(latency), "127.0.0.1", 0, backlog=4096
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# -- the contenders ----------------------------------------------------------------------


class _Meter:
    """Counts completions; marks the window [warm-up end, warm-up end + seconds)."""

    def __init__(self) -> None:
        self.done = 0
        self.stop = False


def _answer_text(body: bytes) -> str:
    text = json.loads(body)["choices"][0]["message"]["content"]
    assert text
    return str(text)


async def _raw_socket(url: str, concurrency: int, meter: _Meter) -> None:
    host, port = url.removeprefix("http://").split(":")
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
        % (host.encode(), KEY.encode(), len(BODY), BODY)
    )

    class Client(asyncio.Protocol):
        buffer = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            transport.write(request)

        def data_received(self, data: bytes) -> None:
            buffer = self.buffer + data
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            length = _content_length(buffer[:end])
            if len(buffer) < end + 4 + length:
                self.buffer = buffer
                return
            _answer_text(buffer[end + 4 : end + 4 + length])
            self.buffer = buffer[end + 4 + length :]
            meter.done += 1
            if not meter.stop:
                self.transport.write(request)

    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(concurrency):
        transport, _ = await loop.create_connection(Client, host, int(port))
        transports.append(transport)
    try:
        await asyncio.Event().wait()
    finally:
        for transport in transports:
            transport.close()


async def _workers(concurrency: int, meter: _Meter, one: Callable[[], Awaitable[None]]) -> None:
    import anyio

    async def worker() -> None:
        while not meter.stop:
            await one()
            meter.done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def _aiohttp(url: str, concurrency: int, meter: _Meter) -> None:
    import aiohttp

    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url + "/v1/chat/completions", data=BODY, headers=headers) as r:
                r.raise_for_status()
                _answer_text(await r.read())

        await _workers(concurrency, meter, one)


async def _httpx(url: str, concurrency: int, meter: _Meter) -> None:
    import httpx

    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def one() -> None:
            response = await client.post(
                url + "/v1/chat/completions", content=BODY, headers=headers
            )
            response.raise_for_status()
            _answer_text(response.content)

        await _workers(concurrency, meter, one)


def _provider(url: str, concurrency: int, client: Any = None) -> Any:
    from llmfanout.providers import OpenAIProvider

    return OpenAIProvider(
        "bench",
        base_url=url + "/v1",
        api_key=KEY,
        max_connections=concurrency,
        timeout=600,
        http_client=client,
    )


async def _complete(url: str, concurrency: int, meter: _Meter) -> None:
    from llmfanout import LLMMessage

    messages = [LLMMessage("system", "Be brief."), LLMMessage("user", "How are you today?")]
    async with _provider(url, concurrency) as provider:

        async def one() -> None:
            assert (await provider.complete(messages)).content

        await _workers(concurrency, meter, one)


async def _complete_httpx(url: str, concurrency: int, meter: _Meter) -> None:
    import httpx

    from llmfanout import LLMMessage

    messages = [LLMMessage("system", "Be brief."), LLMMessage("user", "How are you today?")]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        httpx.AsyncClient(limits=limits) as client,
        _provider(url, concurrency, client) as provider,
    ):

        async def one() -> None:
            assert (await provider.complete(messages)).content

        await _workers(concurrency, meter, one)


async def _stream(url: str, concurrency: int, meter: _Meter) -> None:
    from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig

    task = LLMTask([LLMMessage("system", "Be brief."), LLMMessage("user", "How are you today?")])

    def endless() -> Any:
        while not meter.stop:
            yield task

    async with _provider(url, concurrency) as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=concurrency, default_retry=RetryConfig(max_attempts=3)
        )
        async with executor.stream(endless()) as results:
            async for result in results:
                assert result.success, result.error
                meter.done += 1


_RUNS: dict[str, tuple[Callable[[str, int, _Meter], Awaitable[None]], str]] = {
    "raw socket": (_raw_socket, "asyncio"),
    "aiohttp": (_aiohttp, "asyncio"),
    "httpx": (_httpx, "asyncio"),
    "llmfanout complete asyncio": (_complete, "asyncio"),
    "llmfanout complete trio": (_complete, "trio"),
    "llmfanout complete httpx asyncio": (_complete_httpx, "asyncio"),
    "llmfanout complete httpx trio": (_complete_httpx, "trio"),
    "llmfanout stream asyncio": (_stream, "asyncio"),
    "llmfanout stream trio": (_stream, "trio"),
}


def _client(name: str, url: str, concurrency: int, warmup: float, seconds: float) -> None:
    """Run one contender; print its figures as one JSON line."""
    import anyio

    run, backend = _RUNS[name]
    meter = _Meter()
    figures: dict[str, float] = {}

    def cpu() -> float:
        times = os.times()
        return times.user + times.system

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, url, concurrency, meter)
                await anyio.sleep(warmup)
                done, used, start = meter.done, cpu(), time.perf_counter()
                await anyio.sleep(seconds)
                elapsed = time.perf_counter() - start
                count = meter.done - done
                figures["rate"] = count / elapsed
                figures["cpu_ms"] = (cpu() - used) / max(count, 1) * 1000
                cancel, cancel_cpu = time.perf_counter(), cpu()
                scope.cancel()
        figures["cancel_ms"] = (time.perf_counter() - cancel) * 1000
        figures["cancel_cpu_ms"] = (cpu() - cancel_cpu) * 1000

    anyio.run(main, backend=backend)
    print(json.dumps(figures), flush=True)


# -- the driver --------------------------------------------------------------------------


def _pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


def _measure(
    name: str, url: str, concurrency: int, warmup: float, seconds: float
) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--client",
        name,
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--seconds",
        str(seconds),
    ]
    done = subprocess.run(
        _pinned(1, command), capture_output=True, text=True, timeout=seconds * 10 + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} at C={concurrency} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 100, 500, 1000])
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per answer")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument(
        "--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS + ON_REQUEST
    )
    parser.add_argument("--quick", action="store_true", help="C=16 and 500, 1 s windows")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.latency))
        return
    if args.client:
        _client(args.client, args.url, args.concurrency[0], args.warmup, args.seconds)
        return
    if args.quick:
        args.concurrency, args.seconds, args.warmup = [16, 500], 1.0, 1.0

    import aiohttp
    import httpx

    print(
        f"python {platform.python_version()}, httpx {httpx.__version__}, aiohttp "
        f"{aiohttp.__version__}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, taskset {'yes' if shutil.which('taskset') else 'no'}"
    )
    server = subprocess.Popen(
        _pinned(0, [sys.executable, __file__, "--serve", "--latency", str(args.latency)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        for concurrency in args.concurrency:
            ideal = concurrency / args.latency
            load = os.getloadavg()
            print(
                f"\nC={concurrency}: ideal {ideal:.0f} req/s ({args.latency * 1000:g} ms "
                f"answers), load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
            )
            print(
                f"  {'contender':<28} {'req/s':>7} {'of ideal':>8} {'CPU us/req':>10} "
                f"{'req/s x aiohttp':>15} {'CPU x aiohttp':>13} {'cancel ms (CPU)':>15}"
            )
            figures = {
                name: _measure(name, url, concurrency, args.warmup, args.seconds)
                for name in args.contenders
            }
            yardstick = figures.get("aiohttp")
            for name, row in figures.items():
                rate = cpu = f"{'-':>13}"
                if yardstick:  # aiohttp in the same run: the ratios (CPU: lower is better)
                    rate = f"{row['rate'] / yardstick['rate']:13.2f}"
                    cpu = f"{row['cpu_ms'] / yardstick['cpu_ms']:13.2f}"
                cancel = (
                    f"{row['cancel_ms']:9.0f} ({row['cancel_cpu_ms']:3.0f})"
                    if name.startswith("llmfanout")
                    else ""
                )
                print(
                    f"  {name:<28} {row['rate']:7.0f} {row['rate'] / ideal:8.2f} "
                    f"{row['cpu_ms'] * 1000:10.0f}   {rate} {cpu} {cancel}"
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


if __name__ == "__main__":
    main()
