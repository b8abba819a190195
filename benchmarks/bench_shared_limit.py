"""RedisRateLimit: accuracy and fairness of one budget shared by processes, and its cost.

    python benchmarks/bench_shared_limit.py                  # starts its own redis-server
    python benchmarks/bench_shared_limit.py --url redis://127.0.0.1:6379/0 --seconds 20

Accuracy: 4 processes (2 on asyncio, 2 on trio), each with many callers waiting, share
``--rpm`` requests a minute for ``--seconds`` seconds measured on the Redis server's
clock. What the limit allows over a window that starts with a full bucket is one second
of burst plus rate x window; the run prints how many were admitted against that, and each
process's share against an equal one. Target: within 2% in total, each within 25%.

Cost: one uncontended admission (``acquire`` then nothing) against the floor measured in
the same run: the same Lua script called directly with redis-py's sync client, and with
its asyncio client (which serves asyncio only).

Slow Redis: one process on each backend, ``--callers`` callers waiting, against a Redis
reached through a loopback proxy that delays each way by ``--delay`` seconds (0.3 and
0.6: round trips of 0.6 s and 1.2 s): admissions a second on the server's clock against
the rate allowed. One round trip admits as many callers as the budget allows, so the
rate holds while a round trip is shorter than the one second of burst.

``--json`` prints the accuracy result as one JSON line (the test suite runs a short one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import redis
import redis.asyncio

from llmfanout._flow._redislimit import _SCRIPT
from llmfanout.limits import RedisRateLimit

BACKENDS = ("asyncio", "asyncio", "trio", "trio")


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def worker(url: str, key: str, rpm: float, backend: str, callers: int) -> None:
    """One process: report ready, read the window (server time), admit until it ends."""
    limit = RedisRateLimit(url, requests_per_minute=rpm, key=key)
    client = redis.Redis.from_url(url)
    admitted: list[float] = []
    window: list[float] = []

    async def caller() -> None:
        end = window[1]
        while True:
            await limit.acquire()
            now = await anyio.to_thread.run_sync(server_time, client)
            if now >= end:
                return
            admitted.append(now)

    async def main() -> None:
        # Warm up before the window (connect, load the script, start the worker thread),
        # so that no process starts late and misses its part of the burst.
        await limit.acquire()
        print("ready", flush=True)
        window.extend(map(float, (await anyio.to_thread.run_sync(sys.stdin.readline)).split()))
        await anyio.sleep(max(0.0, window[0] - server_time(client)))
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)

    anyio.run(main, backend=backend)
    start = window[0]
    print(json.dumps({"backend": backend, "admitted": len([t for t in admitted if t >= start])}))


def accuracy(url: str, rpm: float, seconds: float, callers: int) -> dict[str, Any]:
    """Run the 4 processes over one window; return what they admitted and what was allowed."""
    key = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, key, str(rpm), backend, str(callers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for backend in BACKENDS
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a worker did not start: {line!r}")
        # Late enough for the warm-up admissions to have refilled: a full bucket at start.
        rate = rpm / 60
        start = server_time(redis.Redis.from_url(url)) + max(0.5, len(procs) / rate + 0.2)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start} {start + seconds}\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rate = rpm / 60
    allowed = max(rate, 1.0) + rate * seconds
    each = [r["admitted"] for r in results]
    return {
        "rpm": rpm,
        "seconds": seconds,
        "allowed": allowed,
        "admitted": sum(each),
        "per_process": each,
        "backends": [r["backend"] for r in results],
    }


def admission_cost(url: str, n: int) -> None:
    """Microseconds per uncontended admission, against the script called directly."""
    key = f"bench-{uuid.uuid4().hex[:8]}"
    args = ("1000000000.0", "0.0", 0, 0, 0, "0", "bench", "30.0", "3.0")
    keys = RedisRateLimit(url, requests_per_minute=1, key=key)._keys
    sync = redis.Redis.from_url(url)
    script = sync.register_script(_SCRIPT)
    script(keys=keys, args=args)
    t = time.perf_counter()
    for _ in range(n):
        script(keys=keys, args=args)
    floor = (time.perf_counter() - t) / n * 1e6
    sync.close()

    async def native() -> float:
        client = redis.asyncio.Redis.from_url(url)
        s = client.register_script(_SCRIPT)
        await s(keys=keys, args=args)
        t = time.perf_counter()
        for _ in range(n):
            await s(keys=keys, args=args)
        cost = (time.perf_counter() - t) / n * 1e6
        await client.aclose()
        return cost

    async def ours() -> float:
        limit = RedisRateLimit(url, requests_per_minute=1e9, key=key)
        await limit.acquire()
        t = time.perf_counter()
        for _ in range(n):
            await limit.acquire()
        return (time.perf_counter() - t) / n * 1e6

    asyncio_native = anyio.run(native, backend="asyncio")
    print(f"\nadmission cost, {n} in a row, uncontended (us per admission; ratio to the floor)")
    print(f"  floor: script via redis-py sync client, direct    {floor:7.0f}  1.00x")
    print(
        f"  script via redis.asyncio (asyncio only)           {asyncio_native:7.0f}  "
        f"{asyncio_native / floor:.2f}x"
    )
    for backend in ("asyncio", "trio"):
        cost = anyio.run(ours, backend=backend)
        print(
            f"  RedisRateLimit.acquire on {backend:8}                {cost:7.0f}  "
            f"{cost / floor:.2f}x"
        )


def slow_redis(url: str, delay: float, rpm: float, seconds: float, callers: int) -> None:
    """Admissions a second through a proxy ``delay`` seconds late each way, per backend."""
    from support.latency_proxy import LatencyProxy

    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    for backend in ("asyncio", "trio"):
        with LatencyProxy(("127.0.0.1", port), delay=delay) as proxy:
            got, first = anyio.run(
                _slow_run, proxy.url, url, rpm, seconds, callers, backend=backend
            )
        rate = rpm / 60
        print(
            f"  {backend:8} round trip {2 * delay:.1f} s: {got:5.2f} a second of "
            f"{rate:g} allowed ({got / rate:.2f}x); first admission {first:.1f} s"
        )


async def _slow_run(
    slow_url: str, url: str, rpm: float, seconds: float, callers: int
) -> tuple[float, float]:
    """Admissions a second over ``seconds`` (the server's clock), and the first's wait."""
    limit = RedisRateLimit(slow_url, requests_per_minute=rpm, key=uuid.uuid4().hex)
    direct = redis.Redis.from_url(url)  # the server's clock, without the delay
    started = time.perf_counter()
    await limit.acquire()
    first = time.perf_counter() - started
    start = server_time(direct) + 2.0  # past the callers' start and their burst
    seen: list[float] = []

    async def caller() -> None:
        while True:
            await limit.acquire()
            now = await anyio.to_thread.run_sync(server_time, direct)
            if now >= start + seconds:
                return
            seen.append(now)

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    direct.close()
    return len([at for at in seen if at >= start]) / seconds, first


@contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from support.redis_server import running_redis

    with running_redis() as started:
        yield started.url


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, key, rpm, backend, callers = sys.argv[2:7]
        worker(url, key, float(rpm), backend, int(callers))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Redis to use (default: start one on a free port)")
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--callers", type=int, default=16, help="waiting callers per process")
    parser.add_argument("--admissions", type=int, default=2000, help="for the cost part")
    parser.add_argument("--json", action="store_true", help="accuracy only, as one JSON line")
    parser.add_argument(
        "--slow-only", action="store_true", help="only the slow-Redis part (about 30 s)"
    )
    args = parser.parse_args()
    with server(args.url) as url:
        if args.slow_only:
            print(f"slow Redis: {args.rpm:g} requests/min, {args.callers} callers waiting")
            for delay in (0.3, 0.6):
                slow_redis(url, delay, args.rpm, 5.0, args.callers)
            return
        result = accuracy(url, args.rpm, args.seconds, args.callers)
        if args.json:
            print(json.dumps(result))
            return
        equal = result["admitted"] / len(BACKENDS)
        print(
            f"shared limit: {args.rpm:g} requests/min, {args.seconds:g} s on the server's clock, "
            f"4 processes x {args.callers} waiting callers"
        )
        print(
            f"  admitted {result['admitted']} of {result['allowed']:.0f} allowed: "
            f"{result['admitted'] / result['allowed']:.3f}x"
        )
        for backend, got in zip(result["backends"], result["per_process"], strict=True):
            print(f"  {backend:8} {got:5d}  {got / equal:.2f}x an equal share")
        admission_cost(url, args.admissions)
        print(f"\nslow Redis: {args.rpm:g} requests/min, {args.callers} callers waiting")
        for delay in (0.3, 0.6):
            slow_redis(url, delay, args.rpm, 5.0, args.callers)


if __name__ == "__main__":
    main()
