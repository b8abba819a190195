"""Streaming and flow control: memory, cost per task as N grows, latency-bound efficiency,
rate-limit accuracy; with aiometer (``amap``, ``max_at_once``/``max_per_second``) alongside.

Four measurements, each on asyncio and on trio, each against baselines run in the same
process (ratios, not microseconds, are the result: the machine is shared and noisy):

1. **Memory**: 1M tasks, each its own ``LLMTask``, through ``stream()`` from a generator,
   against ``execute()`` over a prebuilt mapping and ``aiometer.amap`` over a list (it
   takes a sequence, not a generator). Each contender runs in a fresh child process, which
   reports its time per task and its peak RSS (``ru_maxrss``) against its RSS before.
2. **Cost per task in N**: zero-latency tasks (a provider that yields once) at 10k, 100k
   and 1M through ``execute`` and ``stream`` (from a mapping and from a generator),
   against a bare worker-pool loop storing into a dict (``execute``'s baseline) and one
   sending into a memory stream (``stream``'s); and ``aiometer.amap``. The cost must not
   grow with N.
3. **Latency-bound efficiency**: N=10k tasks of 20 ms latency at C=500; wall time against
   the ideal N x L / C (target >= 98%), and against the floor of the event loop itself:
   C bare tasks sleeping L, N / C times each, with no pool, provider or results.
4. **Rate-limit accuracy**: an endless stream against ``RateLimit(requests_per_minute=)``
   (and ``tokens_per_minute=``), calls counted over 10 s once the one-second burst is
   spent, against the set rate (target within 2%); ``aiometer``'s ``max_per_second``
   (no burst) the same way.

Run: ``python benchmarks/bench_stream.py`` (about 10 minutes on 2 cores), ``--quick`` for
a smoke run, ``--only memory,overhead,latency,rate`` for a part.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from time import perf_counter
from typing import Any

import aiometer
import anyio
import anyio.lowlevel

from llmfanout import (
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RateLimit,
    TaskResult,
)

from _common import BACKENDS, CheckpointProvider
from _common import RESPONSE as _RESPONSE


class LatencyProvider:
    """Sleeps ``latency`` seconds per call: a model that takes its time."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        await anyio.sleep(self.latency)
        return _RESPONSE


class StartLog:
    """Wraps a provider and records when each call starts (for the rate measurement)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        self.starts.append(anyio.current_time())
        await anyio.lowlevel.checkpoint()
        return _RESPONSE


def _check(name: str, count: int, n: int, last: Any) -> None:
    """A contender that skipped work must not look fast."""
    assert count == n, f"{name}: {count} results for {n} tasks"
    if isinstance(last, TaskResult):
        assert last.success, f"{name}: {last.error!r}"
        last = last.value
    if isinstance(last, tuple):
        last = last[1]
    assert last is _RESPONSE, f"{name}: {last!r}"


# -- contenders: each takes (provider, inputs, concurrency) and returns (count, a result) --

Inputs = dict[str, Any]  # "mapping": {tag: task}, "pairs": [(tag, task)], "make": () -> iterator


async def bare_pool(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    """C workers pulling from one iterator into a dict: ``execute``'s baseline."""
    results: dict[str, Any] = {}
    complete = provider.complete
    source = iter(inputs["mapping"].items())

    async def worker() -> None:
        for tag, task in source:
            results[tag] = await complete(task.messages, config_overrides=None)

    async with anyio.create_task_group() as tg:
        for _ in range(c):
            tg.start_soon(worker)
    return len(results), results[tag_of_last(inputs)]


async def bare_stream(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    """The same workers sending ``(tag, response)`` into a memory stream that the caller
    reads: ``stream``'s baseline."""
    complete = provider.complete
    source = iter(inputs["mapping"].items())
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](c)

    async def worker() -> None:
        for tag, task in source:
            await send.send((tag, await complete(task.messages, config_overrides=None)))

    async def drive() -> None:
        async with send, anyio.create_task_group() as tg:
            for _ in range(c):
                tg.start_soon(worker)

    count, last = 0, None
    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        async with receive:
            async for item in receive:
                count, last = count + 1, item
    return count, last


async def execute(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    results = await ParallelLLMExecutor(provider, max_concurrency=c).execute(inputs["mapping"])
    return len(results), results[tag_of_last(inputs)]


async def _drain_stream(executor: ParallelLLMExecutor, tasks: Any) -> tuple[int, Any]:
    count, last = 0, None
    async with executor.stream(tasks) as results:
        async for result in results:
            count, last = count + 1, result
    return count, last


async def stream_mapping(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    return await _drain_stream(ParallelLLMExecutor(provider, max_concurrency=c), inputs["mapping"])


async def stream_generator(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    executor = ParallelLLMExecutor(provider, max_concurrency=c)
    return await _drain_stream(executor, inputs["make"]())


async def aiometer_amap(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    """``aiometer.amap(fn, pairs, max_at_once=c)``: one task per input behind a semaphore.

    ``fn`` does what the executor does per task (catch the error, build a TaskResult), so
    the two deliver the same thing. ``amap`` takes a sequence: the input is a list.
    """
    complete = provider.complete

    async def one(pair: tuple[str, LLMTask]) -> TaskResult:
        tag, task = pair
        start = perf_counter()
        try:
            response = await complete(task.messages, config_overrides=None)
        except Exception as exc:
            return TaskResult(tag, False, None, exc, (perf_counter() - start) * 1000, 1)
        return TaskResult(tag, True, response, None, (perf_counter() - start) * 1000, 1)

    count, last = 0, None
    async with aiometer.amap(one, inputs["pairs"], max_at_once=c) as results:
        async for result in results:
            count, last = count + 1, result
    return count, last


def tag_of_last(inputs: Inputs) -> str:
    return inputs["last"]  # type: ignore[no-any-return]


Contender = Callable[[Any, Inputs, int], Awaitable[tuple[int, Any]]]


def make_inputs(n: int, *, distinct: bool, prebuilt: bool, pairs: bool = False) -> Inputs:
    """``n`` tasks as a generator factory and, if ``prebuilt``, as a mapping (and pairs).

    With ``distinct`` every task is its own object with its own prompt (what a real batch
    holds in memory); without, one task object is shared (to time scheduling alone).
    """
    shared = LLMTask([LLMMessage("user", "question")])

    def task(i: int) -> LLMTask:
        return LLMTask([LLMMessage("user", f"question {i}")]) if distinct else shared

    def make() -> Iterator[LLMTask]:
        return (task(i) for i in range(n))

    inputs: Inputs = {"make": make, "last": str(n - 1)}
    if prebuilt:
        inputs["mapping"] = {str(i): task(i) for i in range(n)}
        if pairs:
            inputs["pairs"] = list(inputs["mapping"].items())
    return inputs


# -- 1. memory: each contender alone in a child process ----------------------------------

MEMORY_CONTENDERS: dict[str, Contender] = {
    "stream() from a generator": stream_generator,
    "execute() over a prebuilt mapping": execute,
    "aiometer.amap over a prebuilt list": aiometer_amap,
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_child(name: str, backend: str, n: int, c: int) -> None:
    """Run one contender over ``n`` distinct tasks; print what it cost as JSON."""
    contender = MEMORY_CONTENDERS[name]
    gc.collect()
    before = _rss_mb()
    start = perf_counter()  # building the input counts: a generator builds as it goes
    inputs = make_inputs(
        n,
        distinct=True,
        prebuilt=contender is not stream_generator,
        pairs=contender is aiometer_amap,
    )
    count, last = anyio.run(contender, CheckpointProvider(), inputs, c, backend=backend)
    seconds = perf_counter() - start
    _check(name, count, n, last)
    print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": _peak_mb()}))


def bench_memory(n: int, c: int) -> None:
    print(f"\n## 1. Memory: N={n:,} distinct tasks, C={c} (each row a fresh process)\n")
    print("| backend | contender | µs per task | peak RSS MB | growth MB | ratio (time) |")
    print("|---|---|---:|---:|---:|---:|")
    for backend in BACKENDS:
        rows = {}
        for name in MEMORY_CONTENDERS:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", name, backend, str(n), str(c)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows[name] = json.loads(out.strip().splitlines()[-1])
        base = rows["stream() from a generator"]["seconds"]
        for name, row in rows.items():
            us = row["seconds"] / n * 1e6
            print(
                f"| {backend} | {name} | {us:.2f} | {row['peak_mb']:.0f} | "
                f"{row['peak_mb'] - row['before_mb']:.0f} | {row['seconds'] / base:.2f}x |"
            )
    print("\n(growth: peak RSS minus RSS before the input was built; ratio: time against")
    print("stream() from a generator; the time includes building the input.)")


# -- 2. cost per task as N grows ----------------------------------------------------------

OVERHEAD_ROWS: list[tuple[str, Contender, str]] = [
    ("bare pool -> dict", bare_pool, ""),
    ("execute (mapping)", execute, "bare pool -> dict"),
    ("bare pool -> memory stream", bare_stream, ""),
    ("stream (mapping)", stream_mapping, "bare pool -> memory stream"),
    ("stream (generator)", stream_generator, "bare pool -> memory stream"),
    ("aiometer.amap (list)", aiometer_amap, "bare pool -> memory stream"),
]


async def _best(
    rows: list[tuple[str, Contender, str]], inputs: Inputs, n: int, c: int, repeats: int
) -> dict[str, float]:
    best = {name: float("inf") for name, _, _ in rows}
    for _ in range(repeats):  # interleaved, so drift hits every row alike
        for name, contender, _ in rows:
            gc.collect()
            start = perf_counter()
            count, last = await contender(CheckpointProvider(), inputs, c)
            seconds = perf_counter() - start
            _check(name, count, n, last)
            best[name] = min(best[name], seconds / n * 1e6)
    return best


def bench_overhead(sizes: list[int], c: int, repeats: int, big_repeats: int) -> None:
    print(f"\n## 2. Cost per task as N grows: zero-latency tasks, C={c}\n")
    print(f"(best of {repeats}; best of {big_repeats} at N >= 1M)\n")
    for backend in BACKENDS:
        table: dict[int, dict[str, float]] = {}
        for n in sizes:
            inputs = make_inputs(n, distinct=False, prebuilt=True, pairs=True)
            k = big_repeats if n >= 1_000_000 else repeats
            table[n] = anyio.run(_best, OVERHEAD_ROWS, inputs, n, c, k, backend=backend)
            del inputs
            gc.collect()
        print(f"\n### {backend}: µs per task (ratio to its bare baseline)\n")
        print(
            "| contender | " + " | ".join(f"N={n:,}" for n in sizes) + " | largest / smallest N |"
        )
        print("|---|" + "---:|" * (len(sizes) + 1))
        for name, _, baseline in OVERHEAD_ROWS:
            cells = []
            for n in sizes:
                us = table[n][name]
                ratio = f" ({us / table[n][baseline]:.2f}x)" if baseline else ""
                cells.append(f"{us:.2f}{ratio}")
            growth = table[sizes[-1]][name] / table[sizes[0]][name]
            print(f"| {name} | " + " | ".join(cells) + f" | {growth:.2f} |")


# -- 3. latency-bound efficiency ----------------------------------------------------------


async def sleep_floor(provider: Any, inputs: Inputs, c: int) -> tuple[int, Any]:
    """No pool, no provider, no results: C tasks that each sleep L, N / C times over.

    The event loop's own floor for this workload: timer wake-ups arrive a little late
    and C of them a round take turns on one thread.
    """
    n = len(inputs["mapping"])
    rounds, latency = n // c, provider.latency

    async def sleeper() -> None:
        for _ in range(rounds):
            await anyio.sleep(latency)

    async with anyio.create_task_group() as tg:
        for _ in range(c):
            tg.start_soon(sleeper)
    return n, _RESPONSE


LATENCY_ROWS: list[tuple[str, Contender, str]] = [
    ("sleep floor (C sleepers, no pool)", sleep_floor, ""),
    ("bare pool -> dict", bare_pool, ""),
    ("execute (mapping)", execute, ""),
    ("stream (generator)", stream_generator, ""),
    ("aiometer.amap (list)", aiometer_amap, ""),
]


async def _latency(
    inputs: Inputs, n: int, c: int, latency: float, repeats: int
) -> dict[str, float]:
    best = {name: float("inf") for name, _, _ in LATENCY_ROWS}
    for _ in range(repeats):
        for name, contender, _ in LATENCY_ROWS:
            gc.collect()
            start = perf_counter()
            count, last = await contender(LatencyProvider(latency), inputs, c)
            best[name] = min(best[name], perf_counter() - start)
            _check(name, count, n, last)
    return best


def bench_latency(n: int, c: int, latency: float, repeats: int) -> None:
    ideal = n * latency / c
    print(f"\n## 3. Latency-bound efficiency: N={n:,}, L={latency * 1000:.0f} ms, C={c}\n")
    print(f"ideal N x L / C = {ideal:.3f} s; best of {repeats}\n")
    print("| backend | contender | wall s | efficiency (ideal / wall) | vs sleep floor |")
    print("|---|---|---:|---:|---:|")
    inputs = make_inputs(n, distinct=False, prebuilt=True, pairs=True)
    for backend in BACKENDS:
        best = anyio.run(_latency, inputs, n, c, latency, repeats, backend=backend)
        floor = best["sleep floor (C sleepers, no pool)"]
        for name, seconds in best.items():
            print(
                f"| {backend} | {name} | {seconds:.3f} | {ideal / seconds:.1%} | "
                f"{floor / seconds:.1%} |"
            )


# -- 4. rate-limit accuracy ---------------------------------------------------------------


async def _rate_ours(rate: float, window: float, by_tokens: bool, c: int) -> list[float]:
    provider = StartLog()
    tokens = 50
    limit = (
        RateLimit(tokens_per_minute=rate * tokens * 60)
        if by_tokens
        else RateLimit(requests_per_minute=rate * 60)
    )
    executor = ParallelLLMExecutor(provider, max_concurrency=c, rate_limit=limit)
    task = LLMTask([LLMMessage("user", "x")], estimated_tokens=tokens)

    def endless() -> Iterator[LLMTask]:
        while True:
            yield task

    deadline = anyio.current_time() + 1 + window + 0.2
    async with executor.stream(endless()) as results:
        async for _ in results:
            if anyio.current_time() >= deadline:
                break
    return provider.starts


async def _rate_aiometer(rate: float, window: float, c: int) -> list[float]:
    provider = StartLog()
    count = int(rate * (1 + window + 0.5))  # enough to outlast the window

    async def one(_: int) -> LLMResponse:
        return await provider.complete(())

    deadline = anyio.current_time() + 1 + window + 0.2
    async with aiometer.amap(one, range(count), max_at_once=c, max_per_second=rate) as results:
        async for _ in results:
            if anyio.current_time() >= deadline:
                break
    return provider.starts


def _count_window(starts: list[float], window: float) -> tuple[int, int]:
    """Calls started in [1 s, 1 s + window) after the first (the burst spent), and in
    the first ``window`` seconds (burst included)."""
    first = starts[0]
    steady = sum(1 for s in starts if first + 1 <= s < first + 1 + window)
    whole = sum(1 for s in starts if s < first + window)
    return steady, whole


def bench_rate(rate: float, window: float, c: int) -> None:
    print(f"\n## 4. Rate-limit accuracy: {rate:g} calls/s set, counted over {window:g} s\n")
    print("(steady: calls started from 1 s after the first on, once the one-second burst is")
    print("spent; whole: the first window, burst included. aiometer has no burst.)\n")
    print("| backend | limiter | steady rate /s | error | whole-window rate /s |")
    print("|---|---|---:|---:|---:|")
    for backend in BACKENDS:
        runs = {
            "RateLimit(requests_per_minute)": anyio.run(
                _rate_ours, rate, window, False, c, backend=backend
            ),
            "RateLimit(tokens_per_minute), 50 tokens a call": anyio.run(
                _rate_ours, rate, window, True, c, backend=backend
            ),
            "aiometer max_per_second": anyio.run(_rate_aiometer, rate, window, c, backend=backend),
        }
        for name, starts in runs.items():
            steady, whole = _count_window(starts, window)
            achieved = steady / window
            print(
                f"| {backend} | {name} | {achieved:.1f} | {achieved / rate - 1:+.2%} | "
                f"{whole / window:.1f} |"
            )


# -- main ---------------------------------------------------------------------------------

PARTS = ("memory", "overhead", "latency", "rate")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-child"]:
        name, backend, n, c = argv[1:5]
        memory_child(name, backend, int(n), int(c))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts ({', '.join(PARTS)})"
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; use {PARTS}")
    quick = args.quick
    print(
        f"bench_stream{' --quick' if quick else ''}: Python {platform.python_version()} on "
        f"{sys.platform}, {os.cpu_count()} CPUs"
    )
    started = perf_counter()
    if "memory" in parts:
        bench_memory(20_000 if quick else 1_000_000, 100)
    if "overhead" in parts:
        sizes = [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000]
        bench_overhead(sizes, 100, 1 if quick else 3, 1 if quick else 2)
    if "latency" in parts:
        bench_latency(1_000 if quick else 10_000, 50 if quick else 500, 0.02, 1 if quick else 3)
    if "rate" in parts:
        bench_rate(200.0, 1.0 if quick else 10.0, 50)
    print(f"\n(total {perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
