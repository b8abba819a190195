"""Provider throughput on loopback: OpenAIProvider and AnthropicProvider against raw httpx.

The fake LLM server (``tests/fake_llm_server.py``) runs in a separate process, so the
client side (this process) is what is measured. Every contender sends the same N requests
at the same concurrency C, through one ``httpx.AsyncClient`` with the same pool limits
(``max_connections = max_keepalive_connections = C``):

- ``raw httpx``: C workers doing ``await client.post(url, json=body, headers=...)``,
  ``raise_for_status()``, ``response.json()`` and picking out the answer text: the least a
  hand-written client does.
- ``provider.complete``: C workers calling ``await provider.complete(messages)``: request
  building, error mapping, response parsing into an ``LLMResponse``.
- ``executor.execute``: ``ParallelLLMExecutor(provider, max_concurrency=C)`` over N tasks,
  retry policy on: the whole library path (OpenAI only).

Two scenarios:

- ``zero``: the server answers at once (default C=10): the client is CPU-bound, so
  requests/s is the inverse of the client's cost per request.
- ``latency``: every answer takes ``--latency`` seconds, +/-50% at random (default 0.1 s,
  C=50), as a model would: throughput is bounded by C / latency, and the question is
  whether the client keeps up and what CPU it spends per request.

Contenders run interleaved, ``--repeats`` times each; the table shows the median
requests/s, its ratio to ``raw httpx`` of the same wire format (the target is >= 0.90),
and the client's CPU time per request.

Run: ``python benchmarks/bench_providers.py`` (a few minutes on 2 cores), ``--quick``
for a smoke run; ``--scenario``, ``--n``, ``--concurrency``, ``--latency``,
``--repeats``, ``--backend`` change it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter, process_time

import anyio
import httpx

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig
from llmfanout.providers import AnthropicProvider, OpenAIProvider

SERVER = Path(__file__).resolve().parent.parent / "tests" / "fake_llm_server.py"
KEY = "sk-bench"
MESSAGES = [LLMMessage("system", "Be brief."), LLMMessage("user", "How are you today?")]

Run = Callable[[int, int], Awaitable[None]]


@contextmanager
def server_process(latency: float) -> Iterator[str]:
    """Start the fake server in its own process; yield its base URL."""
    command = [sys.executable, str(SERVER), "--latency", str(latency), "--spread", "0.5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def workers(n: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> None:
    """C workers sharing N calls of ``one``."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


def raw_openai(base_url: str) -> Run:
    url = base_url + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {KEY}"}
    body = {
        "model": "bench",
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
    }

    async def run(n: int, concurrency: int) -> None:
        async with httpx.AsyncClient(limits=limits(concurrency)) as client:

            async def one() -> None:
                response = await client.post(url, json=body, headers=headers)
                response.raise_for_status()
                text = response.json()["choices"][0]["message"]["content"]
                assert text

            await workers(n, concurrency, one)

    return run


def raw_anthropic(base_url: str) -> Run:
    url = base_url + "/v1/messages"
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {
        "model": "bench",
        "max_tokens": 1024,
        "system": MESSAGES[0].content,
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES[1:]],
    }

    async def run(n: int, concurrency: int) -> None:
        async with httpx.AsyncClient(limits=limits(concurrency)) as client:

            async def one() -> None:
                response = await client.post(url, json=body, headers=headers)
                response.raise_for_status()
                text = "".join(b["text"] for b in response.json()["content"])
                assert text

            await workers(n, concurrency, one)

    return run


def provider_complete(make: Callable[[int], OpenAIProvider | AnthropicProvider]) -> Run:
    async def run(n: int, concurrency: int) -> None:
        async with make(concurrency) as provider:

            async def one() -> None:
                response = await provider.complete(MESSAGES)
                assert response.content

            await workers(n, concurrency, one)

    return run


def executor_execute(make: Callable[[int], OpenAIProvider]) -> Run:
    retry = RetryConfig(max_attempts=3, initial_delay=0.01)

    async def run(n: int, concurrency: int) -> None:
        tasks = {str(i): LLMTask(MESSAGES) for i in range(n)}
        async with make(concurrency) as provider:
            executor = ParallelLLMExecutor(
                provider, max_concurrency=concurrency, default_retry=retry
            )
            results = await executor.execute(tasks)
        assert all(r.success for r in results.values())

    return run


def contenders(base_url: str) -> list[tuple[str, str, Run]]:
    def openai(concurrency: int) -> OpenAIProvider:
        return OpenAIProvider(
            "bench", base_url=base_url + "/v1", api_key=KEY, max_connections=concurrency
        )

    def anthropic(concurrency: int) -> AnthropicProvider:
        return AnthropicProvider(
            "bench", base_url=base_url, api_key=KEY, max_connections=concurrency
        )

    return [
        ("openai", "raw httpx", raw_openai(base_url)),
        ("openai", "provider.complete", provider_complete(openai)),
        ("openai", "executor.execute", executor_execute(openai)),
        ("anthropic", "raw httpx", raw_anthropic(base_url)),
        ("anthropic", "provider.complete", provider_complete(anthropic)),
    ]


async def measure(run: Run, n: int, concurrency: int) -> tuple[float, float]:
    """Requests per second, and client CPU microseconds per request."""
    start, cpu = perf_counter(), process_time()
    await run(n, concurrency)
    return n / (perf_counter() - start), (process_time() - cpu) / n * 1e6


def bench(
    backend: str, base_url: str, n: int, concurrency: int, repeats: int, latency: float
) -> None:
    rows = contenders(base_url)
    rates: dict[tuple[str, str], list[float]] = {(w, name): [] for w, name, _ in rows}
    costs: dict[tuple[str, str], list[float]] = {(w, name): [] for w, name, _ in rows}
    for _, _, run in rows:  # warm up: imports, caches, the server's first connections
        anyio.run(measure, run, min(n, 300), concurrency, backend=backend)
    for repeat in range(repeats):
        order = rows if repeat % 2 == 0 else rows[::-1]
        for wire, name, run in order:
            rate, cost = anyio.run(measure, run, n, concurrency, backend=backend)
            rates[(wire, name)].append(rate)
            costs[(wire, name)].append(cost)
    ideal = f", at most {concurrency / latency:.0f} req/s" if latency else ""
    print(f"  {backend}: N={n}, concurrency={concurrency}, median of {repeats}{ideal}")
    print(f"    {'wire':<10} {'contender':<18} {'req/s':>7} {'vs raw':>7} {'CPU us/req':>11}")
    for wire, name, _ in rows:
        rate = statistics.median(rates[(wire, name)])
        raw = statistics.median(rates[(wire, "raw httpx")])
        cost = statistics.median(costs[(wire, name)])
        print(f"    {wire:<10} {name:<18} {rate:>7.0f} {rate / raw:>7.2f} {cost:>11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=["zero", "latency", "both"], default="both")
    parser.add_argument("--n", type=int, help="requests per run (default 3000, 1000)")
    parser.add_argument("--concurrency", type=int, help="default 10 (zero), 50 (latency)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds, latency scenario")
    parser.add_argument("--repeats", type=int, help="runs per contender (default 5, 3)")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=300, 1 repeat")
    args = parser.parse_args()
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    scenarios = ["zero", "latency"] if args.scenario == "both" else [args.scenario]
    print(
        f"python {platform.python_version()}, httpx {httpx.__version__}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    for scenario in scenarios:
        zero = scenario == "zero"
        latency = 0.0 if zero else args.latency
        concurrency = args.concurrency or (10 if zero else 50)
        n = 300 if args.quick else args.n or (3000 if zero else 1000)
        repeats = 1 if args.quick else args.repeats or (5 if zero else 3)
        print(f"\nscenario {scenario}: server latency {latency:g} s")
        with server_process(latency) as base_url:
            for backend in backends:
                bench(backend, base_url, n, concurrency, repeats, latency)


if __name__ == "__main__":
    main()
