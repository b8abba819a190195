"""llmfanout.ray.map_rows: rows through Ray actors sharing one Redis rate limit.

    python benchmarks/bench_ray.py                      # 2000 rows, 2 actors, 3000/min
    python benchmarks/bench_ray.py --rows 4000 --rpm 6000 --latency 0.5

A local Ray (``num_cpus=2``), a redis-server and the test suite's fake LLM server (each
answer after ``--latency`` seconds), all on 127.0.0.1. ``map_rows`` runs ``--rows`` rows
on ``--actors`` actors, each with an OpenAI provider pointed at the fake server and a
``RedisRateLimit`` shared through ``JobSpec(shared_limit=...)``. What the limit allows:
one second of burst, then ``rpm / 60`` a second, so ``(rows - burst) / rate`` seconds
from the first call to the last. The run prints the time from the first request the
server saw to the last one (the server's clock), and the wall time of the whole
``map_rows`` (which adds starting the actors), against that, and checks that every id
came back exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import ray
import ray.data

from llmfanout import JobSpec
from llmfanout.ray import map_rows

from support.fake_llm_server import fake_llm_server_in_thread
from support.redis_server import running_redis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight per actor")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    os.environ["OPENAI_API_KEY"] = "bench"  # the actors inherit it from the driver
    with running_redis() as redis_server, fake_llm_server_in_thread() as llm:
        llm.latency = args.latency
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            spec = JobSpec(
                provider="openai",
                model="m",
                base_url=llm.openai_base_url,
                concurrency=args.concurrency,
                rpm=args.rpm,
                shared_limit=redis_server.url,
                max_attempts=3,
            )
            rows = [{"id": i, "prompt": f"row {i}"} for i in range(args.rows)]
            ds = ray.data.from_items(rows)
            started = time.monotonic()  # the fake server's clock (asyncio's loop time)
            out = map_rows(ds, spec, actors=args.actors, batch_size=args.batch_size).take_all()
            ended = time.monotonic()
            wall = ended - started
        finally:
            ray.shutdown()
        times = sorted(r.time for r in llm.requests)
    counts = Counter(row["id"] for row in out)
    once = len(counts) == args.rows and set(counts.values()) == {1}
    ok = sum(row["success"] for row in out)
    rate = args.rpm / 60
    allowed = max(0.0, args.rows - max(rate, 1.0)) / rate
    span = times[-1] - times[0]
    print(
        f"map_rows: {args.rows} rows, {args.actors} actors x {args.concurrency} in flight, "
        f"shared limit {args.rpm:g}/min, {args.latency:g} s per answer"
    )
    print(f"  every id exactly once: {once}; {ok} succeeded; {len(times)} requests sent")
    print(f"  the limit allows {allowed:.1f} s from the first call to the last")
    print(f"  first to last request (server clock) {span:.1f} s: {span / allowed:.3f}x")
    print(f"  wall time of map_rows, actors' start included {wall:.1f} s: {wall / allowed:.3f}x")
    print(
        f"  of which before the first request {times[0] - started:.1f} s, "
        f"after the last {ended - times[-1]:.1f} s"
    )


if __name__ == "__main__":
    main()
