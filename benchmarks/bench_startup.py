"""What a process pays before its first call: ``import llmfanout`` and a small CLI run,
against the floor of the interpreter and of the libraries llmfanout cannot do without.

    python benchmarks/bench_startup.py [--repeat 7] [--rows 20] [--quick]

Each contender runs in a fresh process, alternating, ``--repeat`` times; the median wall
time is printed, with the ratio to ``deps floor`` (an interpreter importing anyio, attrs
and trio: what any anyio program on both backends starts with):

- ``python``: ``python -c pass``.
- ``deps floor``: ``import anyio, attrs, trio``.
- ``import llmfanout``.
- ``echo run``: ``import llmfanout``, then an ``EchoProvider`` executor runs ``--rows``
  tasks on asyncio and on trio.
- ``llmfanout run``: ``python -m llmfanout run`` over ``--rows`` rows with the echo
  provider and ``--quiet``.
- ``import httpx, rich``: what the two libraries llmfanout now loads only where they
  serve (a proxy or a user's ``http_client``; a bar on a terminal) would add.

Also prints ``python -X importtime``'s total for ``import llmfanout`` (median), which
leaves out the interpreter's own start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ECHO_RUN = r"""
import sys, anyio
from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor

rows = int(sys.argv[1])
executor = ParallelLLMExecutor(EchoProvider())
tasks = {str(i): LLMTask([LLMMessage("user", f"hi {i}")]) for i in range(rows)}
for backend in ("asyncio", "trio"):
    async def main():
        await executor.execute(tasks)
    anyio.run(main, backend=backend)
"""


def _wall(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - started


def _importtime() -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import llmfanout"],
        check=True,
        capture_output=True,
        text=True,
    )
    last = [line for line in done.stderr.splitlines() if line.rstrip().endswith("| llmfanout")]
    return int(last[-1].split("|")[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 repeats")
    options = parser.parse_args()
    if options.quick:
        options.repeat = 2
    py = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        rows = Path(folder, "rows.jsonl")
        rows.write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": f"hi {i}"}) + "\n" for i in range(options.rows)
            )
        )
        output = Path(folder, "out.jsonl")
        contenders = {
            "python": [py, "-c", "pass"],
            "deps floor": [py, "-c", "import anyio, attrs, trio"],
            "import llmfanout": [py, "-c", "import llmfanout"],
            "echo run": [py, "-c", ECHO_RUN, str(options.rows)],
            "llmfanout run": [
                py,
                "-m",
                "llmfanout",
                "run",
                str(rows),
                "-o",
                str(output),
                "--quiet",
            ],
            "import httpx, rich": [py, "-c", "import httpx, rich.console, rich.progress"],
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        imports: list[float] = []
        for _ in range(options.repeat):
            for name, args in contenders.items():
                output.unlink(missing_ok=True)
                times[name].append(_wall(args))
            imports.append(_importtime())
    floor = statistics.median(times["deps floor"])
    print(f"median of {options.repeat}, wall time of a fresh process; ratio to the deps floor")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:20} {median * 1000:8.0f} ms  {median / floor:5.2f}x")
    print(
        f"{'importtime total':20} {statistics.median(imports) * 1000:8.0f} ms  (import llmfanout)"
    )


if __name__ == "__main__":
    main()
