"""Adaptive concurrency (AIMD) against two kinds of refusals, with and without pacing.

- ``overload``: the loopback fake server answers 429 (no headers, no ``Retry-After``) to a
  request that finds more than ``--capacity`` (8) in flight: refusals that grow with our
  concurrency. The figure should settle near the capacity with few refusals.
- ``random``: it refuses 30% of requests with 429 and 15% with 503, ``Retry-After: 1``,
  at random whatever the load (a proxy in front of a pool, a chaos layer). Cutting does
  not help: the run should stay near ``--cap`` in flight and take about as long paced as
  unpaced.

Each runs ``paced`` (the defaults) and ``unpaced`` (``pacing=False, adaptive=False``, as
``--no-pacing --no-adaptive``), in the same process, on one event loop with the server.
The figures, on the server's side: the mean of the calls in flight each request found
(itself included), the share of requests refused, and the wall time; the ratios compare
paced with unpaced, and the concurrency with the capacity (``overload``) or the cap
(``random``).

Run: ``python benchmarks/bench_aimd.py`` (about a minute), ``--backend trio``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from llmfanout import (  # noqa: E402
    BackoffStrategy,
    LLMMessage,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    RetryConfig,
)

from support.fake_llm_server import serve_fake_llm  # noqa: E402

LIMIT = 25.0  # seconds a run may take before it is stopped and reported as held


# What ``llmfanout run`` does: 3 attempts, jittered waits, 10 minutes' patience with 429s.
RETRY = RetryConfig(max_attempts=3, backoff_strategy=BackoffStrategy.JITTER)
HOWS = {  # name: (pacing, adaptive)
    "paced": (True, True),  # the defaults
    "aimd": (False, True),  # adaptive concurrency alone
    "unpaced": (False, False),  # --no-pacing --no-adaptive: neither
}


async def one_run(
    scenario: str,
    *,
    pacing: bool,
    adaptive: bool,
    rows: int,
    cap: int,
    capacity: int,
    latency: float,
) -> dict[str, float]:
    async with serve_fake_llm() as server:
        server.latency, server.latency_spread = latency, 0.2
        if scenario == "overload":
            server.overload_after = capacity
        else:
            server.refuse_at_random(share_429=0.3, share_503=0.15, seed=7)
        tasks = {f"r{i}": LLMTask(messages=[LLMMessage("user", f"row {i}")]) for i in range(rows)}
        async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as p:
            executor = ParallelLLMExecutor(
                p, max_concurrency=cap, default_retry=RETRY, pacing=pacing, adaptive=adaptive
            )
            started = time.perf_counter()
            done = 0
            with anyio.move_on_after(LIMIT):
                results = await executor.execute(tasks)
                done = sum(r.success for r in results.values())
            took = time.perf_counter() - started
    seen = server.in_flight_seen
    requests = len(server.requests)
    return {
        "seconds": took,
        "done": done,
        "in_flight": statistics.fmean(seen) if seen else 0.0,
        "refused": len(server.limited) / max(1, requests),
        "end_figure": executor.concurrency,
    }


async def main_async(args: argparse.Namespace) -> None:
    for scenario in ("overload", "random"):
        runs = {}
        for how, (pacing, adaptive) in HOWS.items():
            runs[how] = await one_run(
                scenario,
                pacing=pacing,
                adaptive=adaptive,
                rows=args.rows,
                cap=args.cap,
                capacity=args.capacity,
                latency=args.latency,
            )
        target = args.capacity if scenario == "overload" else args.cap
        what = f"past {args.capacity}" if scenario == "overload" else "45% refused at random"
        print(f"\n{scenario} ({what}; cap {args.cap}, {args.rows} rows)")
        for how, r in runs.items():
            held = " (stopped: held)" if r["done"] < args.rows else ""
            print(
                f"  {how:8} {r['seconds']:6.2f} s{held}  done {r['done']:.0f}  "
                f"in flight {r['in_flight']:5.1f} ({r['in_flight'] / target:.2f}x "
                f"{'capacity' if scenario == 'overload' else 'cap'})  "
                f"refused {r['refused']:.0%}  figure at the end {r['end_figure']:.0f}"
            )
        for how in ("paced", "aimd"):
            ratio = runs[how]["seconds"] / runs["unpaced"]["seconds"]
            print(f"  {how} / unpaced time: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--cap", type=int, default=32, help="max_concurrency")
    parser.add_argument("--capacity", type=int, default=8, help="overload past this many")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per answer")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(main_async, args, backend=args.backend)


if __name__ == "__main__":
    main()
