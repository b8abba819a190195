"""The response cache: a fully cached re-run of ``llmfanout run --cache`` against the CLI's floor.

    python benchmarks/bench_cache.py [--rows 10000] [--concurrency 100] [--repeat 3]

In fresh processes on one input file, on asyncio and trio:

- ``echo, no cache``: ``llmfanout run`` with the echo provider (the CLI's own floor);
- ``--cache, cold``: the same with ``--cache FILE``: every row a miss, stored;
- ``--cache, warm``: the same again: every row a hit, nothing sent.

Prints wall time, CPU time per row and the ratios to the floor (target: warm at most 2x;
the floor and the warm re-run are alternated ``--repeat`` times and the best of each kept,
as the load of a shared machine moves),
then, in this process: the CPU of a hit through ``ParallelLLMExecutor`` at 100 calls in
flight (target < 50 us), the CPU a miss adds to a call (target < 10% of a 50 ms call),
and the file's size per cached answer with this process's peak memory. The default 10k
rows keep a run under two minutes on a shared machine; ``--rows 100000`` is the issue's
size, ``--rows 1000000 --only size`` its file-size point.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from llmfanout import EchoProvider, LLMTask, ParallelLLMExecutor
from llmfanout.cache import SQLiteCache

from _common import BACKENDS


def cli(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``llmfanout`` run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmfanout", *args], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def bench_cli(rows: int, concurrency: int, repeat: int, folder: Path) -> None:
    source = folder / "in.jsonl"
    with source.open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"id": i, "prompt": f"question number {i}"}) + "\n")
    for backend in BACKENDS:
        common = ["run", str(source), "--backend", backend, "--concurrency", str(concurrency)]
        common += ["--quiet", "--max-attempts", "1"]
        cache = folder / f"{backend}.db"
        cold = cli([*common, "-o", str(folder / f"cold-{backend}.jsonl"), "--cache", str(cache)])
        floors, warms = [], []
        for k in range(repeat):  # alternated, best of each: the machine's load moves
            floors.append(cli([*common, "-o", str(folder / f"floor-{backend}-{k}.jsonl")]))
            out = folder / f"warm-{backend}-{k}.jsonl"
            warms.append(cli([*common, "-o", str(out), "--cache", str(cache)]))
        floor = min(floors)
        warm = min(warms)
        print(f"\n{backend}, {rows:,} rows, concurrency {concurrency} (best of {repeat})")
        for label, (wall, cpu) in (
            ("echo, no cache", floor),
            ("--cache, cold", cold),
            ("--cache, warm", warm),
        ):
            print(
                f"  {label:<16} {wall:7.2f} s  {cpu / rows * 1e6:7.1f} us CPU/row"
                f"  {wall / floor[0]:5.2f}x the floor ({cpu / floor[1]:.2f}x its CPU)"
            )


def tasks(n: int, offset: int = 0) -> dict[str, LLMTask]:
    return {str(i): LLMTask([{"role": "user", "content": f"q{i + offset}"}]) for i in range(n)}


async def library(folder: Path, backend: str) -> None:
    n = 5000
    cache = SQLiteCache(folder / f"lib-{backend}.db")
    executor = ParallelLLMExecutor(EchoProvider(record_calls=False), max_concurrency=100)
    cached = ParallelLLMExecutor(EchoProvider(record_calls=False), max_concurrency=100, cache=cache)
    await cached.execute(tasks(n))  # fill it

    async def cpu(run: object) -> float:
        start = time.process_time()
        await run  # type: ignore[misc]
        return (time.process_time() - start) / n * 1e6

    plain = min([await cpu(executor.execute(tasks(n))) for _ in range(3)])
    hit = min([await cpu(cached.execute(tasks(n))) for _ in range(3)])
    misses = [await cpu(cached.execute(tasks(n, offset=(k + 1) * n))) for k in range(3)]
    miss = min(misses)
    print(f"\nlibrary, {backend}, 100 in flight, {n:,} calls (CPU per call)")
    print(f"  no cache (echo)  {plain:6.1f} us")
    print(f"  hit              {hit:6.1f} us   (target < 50 us)")
    print(
        f"  miss             {miss:6.1f} us   adds {miss - plain:5.1f} us: "
        f"{(miss - plain) / 50_000 * 100:.2f}% of a 50 ms call (target < 10%)"
    )


async def size(folder: Path, rows: int) -> None:
    cache = SQLiteCache(folder / "size.db")
    executor = ParallelLLMExecutor(
        EchoProvider(record_calls=False), max_concurrency=200, cache=cache
    )
    chunk = 10_000
    for start in range(0, rows, chunk):
        await executor.execute(tasks(min(chunk, rows - start), offset=start))
    stats = cache.stats()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nfile for {stats.entries:,} short answers: {stats.file_bytes / 1e6:.1f} MB "
        f"({stats.file_bytes / stats.entries:.0f} bytes each); peak RSS of this process "
        f"{peak:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the floor and the warm re-run (best kept)"
    )
    parser.add_argument("--only", choices=("cli", "library", "size"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        if args.only in (None, "cli"):
            bench_cli(args.rows, args.concurrency, args.repeat, path)
        if args.only in (None, "library"):
            for backend in BACKENDS:
                anyio.run(library, path, backend, backend=backend)
        if args.only in (None, "size"):
            anyio.run(size, path, args.rows)


if __name__ == "__main__":
    main()
