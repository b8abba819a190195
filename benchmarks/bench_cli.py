"""`llmfanout run` against its floor: a bare anyio pool doing the same work per row.

    python benchmarks/bench_cli.py [--rows 100000] [--concurrency 500] [--latency 0.02]

Each contender runs in a fresh process on the same input file:

- ``io only``: workers pulling lines, ``json.loads``, the same sleep, ``json.dumps``, a
  buffered file: the JSONL I/O alone.
- ``floor``: the same rows read, parsed, turned into ``LLMTask``s, answered by the echo
  provider (its ``complete`` called straight, with the latency), serialised and appended
  by a bare anyio pool: what any program doing this job must spend. Ratios are to it.
- ``executor``: the floor's file handling around ``ParallelLLMExecutor.stream`` (3
  attempts, as the CLI): what the scheduler costs, apart from the CLI.
- ``llmfanout``: the CLI (echo provider, default flags otherwise: 3 attempts, the
  validating first pass, crash-safe writes).

Prints wall time, CPU time per row and the ratios to the floor (wall and CPU; CPU sets
throughput once latency is not the bottleneck), on asyncio and trio; ``--repeat k``
takes the median of k runs, alternating the contenders.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BACKENDS

IO_ONLY = r"""
import json, sys, anyio

source, output, backend = sys.argv[1], sys.argv[2], sys.argv[3]
concurrency, latency = int(sys.argv[4]), float(sys.argv[5])

async def main():
    with open(source, "rb") as lines, open(output, "w") as out:
        async def worker():
            for raw in lines:
                row = json.loads(raw)
                await anyio.sleep(latency)
                text = "Echo: " + row["prompt"]
                out.write(json.dumps({"id": row["id"], "success": True, "content": text}) + "\n")

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)

anyio.run(main, backend=backend)
"""

FLOOR = r"""
import json, sys, anyio
from llmfanout import EchoProvider, LLMMessage, LLMTask

source, output, backend = sys.argv[1], sys.argv[2], sys.argv[3]
concurrency, latency = int(sys.argv[4]), float(sys.argv[5])

async def main():
    provider = EchoProvider(latency=latency, record_calls=False)
    with open(source, "rb") as lines, open(output, "w") as out:
        async def worker():
            for raw in lines:
                row = json.loads(raw)
                task = LLMTask([LLMMessage("user", row["prompt"])], tag=row["id"])
                response = await provider.complete(task.messages)
                line = {"id": task.tag, "success": True, "content": response.content}
                out.write(json.dumps(line) + "\n")

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)

anyio.run(main, backend=backend)
"""

# The floor's file handling around the library's executor (3 attempts, as the CLI): what
# the scheduler costs, apart from the CLI's checks, bookkeeping and crash-safe writes.
EXECUTOR = r"""
import json, sys, anyio
from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig

source, output, backend = sys.argv[1], sys.argv[2], sys.argv[3]
concurrency, latency = int(sys.argv[4]), float(sys.argv[5])

async def main():
    executor = ParallelLLMExecutor(
        EchoProvider(latency=latency, record_calls=False),
        max_concurrency=concurrency,
        default_retry=RetryConfig(max_attempts=3),
    )
    with open(source, "rb") as lines, open(output, "w") as out:
        tasks = (
            LLMTask([LLMMessage("user", row["prompt"])], tag=row["id"])
            for row in map(json.loads, lines)
        )
        async with executor.stream(tasks) as results:
            async for result in results:
                text = result.value.content
                out.write(json.dumps({"id": result.tag, "success": True, "content": text}) + "\n")

anyio.run(main, backend=backend)
"""


def measure(command: list[str], output: Path) -> tuple[float, float]:
    """Wall seconds and child CPU seconds of one fresh process."""
    output.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (median)")
    parser.add_argument("--only", choices=BACKENDS, help="one backend")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "in.jsonl", Path(folder) / "out.jsonl"
        with source.open("w") as file:
            for i in range(args.rows):
                file.write(json.dumps({"id": f"row-{i}", "prompt": f"Summarise item {i}"}) + "\n")
        print(
            f"{args.rows} rows, {args.concurrency} in flight, {args.latency * 1000:g} ms per "
            f"call; median of {args.repeat}; "
            f"ideal {args.rows * args.latency / args.concurrency:.2f} s"
        )
        print(
            f"{'backend':8} {'contender':10} {'wall s':>8} {'CPU us/row':>11} "
            f"{'wall/floor':>11} {'CPU/floor':>10}"
        )
        for backend in (args.only,) if args.only else BACKENDS:
            common = [str(source), str(output), backend, str(args.concurrency), str(args.latency)]
            cli = [
                sys.executable, "-m", "llmfanout", "run", str(source), "-o", str(output),
                "--concurrency", str(args.concurrency), "--echo-latency", str(args.latency),
                "--backend", backend, "--quiet",
            ]  # fmt: skip
            commands = {
                "io only": [sys.executable, "-c", IO_ONLY, *common],
                "floor": [sys.executable, "-c", FLOOR, *common],
                "executor": [sys.executable, "-c", EXECUTOR, *common],
                "llmfanout": cli,
            }
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for _ in range(args.repeat):  # alternated, so drifting load hits all alike
                for name, command in commands.items():
                    runs[name].append(measure(command, output))
                    rows = sum(1 for _ in output.open("rb"))
                    assert rows == args.rows, f"{name} wrote {rows} rows of {args.rows}"
            results = {
                name: (
                    statistics.median(wall for wall, _ in times),
                    statistics.median(cpu for _, cpu in times),
                )
                for name, times in runs.items()
            }
            floor_wall, floor_cpu = results["floor"]
            for name, (wall, cpu) in results.items():
                print(
                    f"{backend:8} {name:10} {wall:8.2f} {cpu / args.rows * 1e6:11.1f} "
                    f"{wall / floor_wall:10.2f}x {cpu / floor_cpu:9.2f}x"
                )
            print(
                f"{backend}: llmfanout run is {results['llmfanout'][1] / floor_cpu:.2f}x "
                "its floor in CPU (target <= 1.5x)"
            )


if __name__ == "__main__":
    main()
