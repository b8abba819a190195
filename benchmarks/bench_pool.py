"""Pool: what routing costs per call, and how capacity adds up across deployments.

1. **Routing cost.** N tasks (default 20k, 100 in flight) through ``execute`` with a
   provider that yields once and returns a prebuilt answer: the bare provider, a pool
   of one deployment of it, and a pool of three. The difference per call is the pool's
   routing, pacing bookkeeping and answer stamping. The median of k, by CPU time, the
   contenders' runs interleaved. Twice: with a provider that returns one shared answer
   (the pool copies it to name the deployment) and with one that makes a new answer per
   call, its metadata holding a request id as the HTTP providers' hold the raw body, and
   says so (``fresh_answers``, as the HTTP providers do: the pool names the deployment
   in it, no copy), each against its own bare provider. Then hedging on (a pool of
   three, fresh answers, a delay no call reaches: what every call answered in time
   pays), with the pool entered (``async with pool``: one timer per block) and not (a
   task group per call).
2. **Capacity.** Loopback fake servers, each enforcing ``--rpm`` requests per minute
   with ``--burst`` seconds of burst (one by default: the limits bind within a second):
   M calls through one deployment, then 3M through a pool of three (each its own server
   and key). The ratio of throughputs is what three keys buy; 429s are counted.

Run: ``python benchmarks/bench_pool.py`` (about a minute), ``--quick`` for a smoke
run, ``--backend trio``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from llmfanout import (  # noqa: E402
    Deployment,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    Pool,
    RetryConfig,
)
from llmfanout.providers import OpenAIProvider  # noqa: E402

from _common import CheckpointProvider  # noqa: E402
from support.fake_llm_server import ServerLimit, serve_fake_llm  # noqa: E402


def tasks(n: int) -> dict[str, LLMTask]:
    return {f"t{i}": LLMTask([LLMMessage("user", f"p{i}")]) for i in range(n)}


async def run_once(provider: object, n: int, concurrency: int) -> float:
    pool = provider.pool if isinstance(provider, Entered) else provider
    executor = ParallelLLMExecutor(pool, max_concurrency=concurrency)  # type: ignore[arg-type]
    work = tasks(n)
    start = time.process_time()
    if isinstance(provider, Entered):
        async with provider.pool:  # its hedge host: one timer for every call
            results = await executor.execute(work)
    else:
        results = await executor.execute(work)
    elapsed = time.process_time() - start
    assert all(r.success for r in results.values())
    return elapsed


class Entered:
    """A pool the run enters (``async with pool:``), as ``llmfanout run`` and JobSpec do."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def complete(self, *args: Any, **kwargs: Any) -> LLMResponse:
        raise AssertionError("the executor is given the pool itself")


class FreshProvider(CheckpointProvider):
    """As CheckpointProvider, but each call's answer is a new one (as the HTTP providers
    make theirs), and it says so: a pool stamps it in place rather than copying it."""

    fresh_answers = True

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        await anyio.lowlevel.checkpoint()
        return LLMResponse("pong", model="checkpoint", metadata={"request_id": "r"})


async def routing(n: int, concurrency: int, repeats: int) -> None:
    contenders = {
        "bare provider": lambda: CheckpointProvider(),
        "pool of one": lambda: Pool([CheckpointProvider()]),
        "pool of three": lambda: Pool([CheckpointProvider() for _ in range(3)]),
        "bare, fresh": lambda: FreshProvider(),
        "pool of one, fresh": lambda: Pool([FreshProvider()]),
        "pool of three, fresh": lambda: Pool([FreshProvider() for _ in range(3)]),
        "hedge after 60 s": lambda: Entered(hedging(60)),
        "hedge after p99": lambda: Entered(hedging("p99")),
        "60 s, not entered": lambda: hedging(60),
        "p99, not entered": lambda: hedging("p99"),
    }
    runs: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(repeats):  # interleaved: a change in the machine's load touches each alike
        for label, make in contenders.items():
            runs[label].append(await run_once(make(), n, concurrency))
    us = {label: statistics.median(seconds) / n * 1e6 for label, seconds in runs.items()}
    print(f"routing cost, {n} calls, {concurrency} in flight (CPU, median of {repeats}):")
    print("  one shared answer (the pool copies it to add the deployment's name):")
    for label in ("bare provider", "pool of one", "pool of three"):
        line(label, us[label], us["bare provider"])
    print("  a new answer per call, fresh_answers (the pool writes the name into it):")
    for label in ("bare, fresh", "pool of one, fresh", "pool of three, fresh"):
        line(label, us[label], us["bare, fresh"])
    print("  pool of three, fresh, hedging on, the pool entered (one timer for every call):")
    for label in ("hedge after 60 s", "hedge after p99"):
        line(label, us[label], us["bare, fresh"])
    print("  the same, the pool not entered (a task group per call):")
    for label in ("60 s, not entered", "p99, not entered"):
        line(label, us[label], us["bare, fresh"])


def hedging(after: float | str) -> Pool:
    return Pool([FreshProvider() for _ in range(3)], hedge_after=after)


def line(label: str, us: float, base: float) -> None:
    print(f"    {label:<21} {us:7.2f} us/call  x{us / base:5.2f}  (+{us - base:.2f} us/call)")


async def capacity(m: int, rpm: float, concurrency: int, burst: float) -> None:
    async with serve_fake_llm() as a, serve_fake_llm() as b, serve_fake_llm() as c:
        servers = (a, b, c)
        for server in servers:
            server.limit = ServerLimit(requests_per_minute=rpm, burst=burst)

        def deployment(i: int) -> Deployment:
            provider = OpenAIProvider(
                "m", base_url=servers[i].openai_base_url, api_key=f"key-{i}-0123456789"
            )
            return Deployment(name=f"d{i}", provider=provider)

        async def timed(pool: Pool, count: int) -> float:
            executor = ParallelLLMExecutor(
                pool, max_concurrency=concurrency, default_retry=RetryConfig()
            )
            start = anyio.current_time()
            async with pool:
                results = await executor.execute(tasks(count))
            assert all(r.success for r in results.values())
            return count / (anyio.current_time() - start)

        one = await timed(Pool([deployment(0)]), m)
        sent_one = len(a.requests)
        refused_one = len(a.limited)
        three = await timed(Pool([deployment(i) for i in range(3)]), 3 * m)
        sent = sum(len(s.requests) for s in servers) - sent_one
        refused = sum(len(s.limited) for s in servers) - refused_one
    print(f"capacity, {rpm:g} rpm per deployment ({rpm / 60:g}/s), {concurrency} in flight:")
    print(f"  one deployment    {one:7.1f} calls/s  ({refused_one}/{sent_one} answered 429)")
    print(f"  three deployments {three:7.1f} calls/s  ({refused}/{sent} answered 429)")
    print(f"  ratio             x{three / one:.2f} (the sum of limits allows x3.00)")


async def main(args: argparse.Namespace) -> None:
    await routing(args.n, 100, args.repeats)
    if not args.routing_only:
        await capacity(args.m, args.rpm, 32, args.burst)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--m", type=int, default=200, help="calls through one deployment")
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burst", type=float, default=1.0, help="seconds of burst per server")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--routing-only", action="store_true", help="skip the capacity part")
    options = parser.parse_args()
    if options.quick:
        options.n, options.m, options.repeats = 2000, 60, 1
    anyio.run(main, options, backend=options.backend)
