"""Batch jobs: what a big job costs on our side, against the floor measured in the same run.

A provider batch spends hours at the provider; what we add is planning (validate, encode,
split, write the request files), the state file, and reading results back into one
result per task. For N tasks (default 100k, in parts of 50,000) against the loopback
fake (``tests/support/fake_batch_server.py``, in this process) on each backend:

- ``plan``: :func:`submit_batch`'s checking and splitting alone (no network), against the
  floor of building the same request bodies and writing them as JSON lines.
- ``submit``: the whole submit (plan, upload, create, the state file saved at each step).
- ``results``: every part's results, downloaded and parsed into ``TaskResult`` values,
  against the floor of ``json.loads`` on the same result lines.
- the state file's size and the time of one atomic save; the peak of Python memory
  (tracemalloc) during the plan.

Run: ``python benchmarks/bench_batch.py`` (about a minute), ``--quick`` for a smoke run,
``--n`` to change the size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import tracemalloc
from pathlib import Path
from time import perf_counter

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llmfanout import LLMMessage, LLMTask, OpenAIProvider
from llmfanout._batch._api import OpenAIBatchAPI
from llmfanout._batch._jobs import Polling
from llmfanout._batch._plan import plan_parts
from llmfanout._batch._state import load, save
from llmfanout._batch._submit import submit_batch

from _common import BACKENDS
from support.fake_batch_server import serve_fake_batches

FAST = Polling(interval=0.001, max_interval=0.01, retry_wait=0.01)


def tasks(n: int) -> list[LLMTask]:
    return [
        LLMTask([LLMMessage("user", f"Label this review, number {i}: fine.")], tag=f"r{i}")
        for i in range(n)
    ]


def plan_floor(given: list[LLMTask], folder: str, provider: OpenAIProvider) -> float:
    """The least a plan must do: each request body as a JSON line in a file (best of 3)."""
    api = OpenAIBatchAPI(provider)
    best = float("inf")
    for _ in range(3):
        started = perf_counter()
        with open(os.path.join(folder, "floor.jsonl"), "wb") as file:
            for i, task in enumerate(given):
                body = {**provider._params, "messages": [{"role": "user", "content": "x"}]}
                body["messages"][0]["content"] = task.messages[0].content
                file.write(api.line(f"x-0-{i}", body))
        best = min(best, perf_counter() - started)
    return best


def plan(given: list[LLMTask], folder: str, provider: OpenAIProvider) -> tuple[float, int]:
    """Seconds to plan (best of 3), then the peak of memory in one more, traced, run."""
    api = OpenAIBatchAPI(provider)
    best = float("inf")
    for _ in range(3):
        started = perf_counter()
        plan_parts(api, given, "bench001", folder, api.max_requests, api.max_bytes)
        best = min(best, perf_counter() - started)
    tracemalloc.start()
    plan_parts(api, given, "bench001", folder, api.max_requests, api.max_bytes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


async def end_to_end(given: list[LLMTask], folder: str) -> dict[str, float]:
    async with serve_fake_batches() as server:
        provider = OpenAIProvider("gpt-bench", base_url=server.openai_base_url, api_key="sk-b")
        async with provider:
            state = os.path.join(folder, f"s-{anyio.current_time()}.json")
            started = perf_counter()
            job = await submit_batch(provider, given, state=state, polling=FAST)
            submitted = perf_counter() - started
            server.finish()
            await job.wait(provider)
            lines = [
                raw for batch in server.batches.values() for raw in _result_lines(server, batch)
            ]
            started = perf_counter()
            count = 0
            for part in job.parts:
                async for _ in job.part_results(provider, part.index):
                    count += 1
            read = perf_counter() - started
    assert count == len(given)
    started = perf_counter()
    for raw in lines:
        json.loads(raw)
    floor = perf_counter() - started
    record = load(state)
    started = perf_counter()
    save(record, state)
    saved = perf_counter() - started
    return {
        "submit": submitted,
        "results": read,
        "results_floor": floor,
        "state_bytes": os.path.getsize(state),
        "save": saved,
    }


def _result_lines(server: object, batch: object) -> list[bytes]:
    files = server.files  # type: ignore[attr-defined]
    return files[batch.output_file_id].splitlines()  # type: ignore[attr-defined,no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run (N = 5,000)")
    args = parser.parse_args()
    n = 5_000 if args.quick else args.n
    print(f"bench_batch: N={n}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    given = tasks(n)
    provider = OpenAIProvider("gpt-bench", api_key="sk-bench")
    with tempfile.TemporaryDirectory() as folder:
        floor = plan_floor(given, folder, provider)
        planned, peak = plan(given, folder, provider)
        print(
            f"plan     {n / planned:>10,.0f} rows/s   floor {n / floor:>10,.0f} rows/s   "
            f"ratio {planned / floor:.2f}   peak Python memory {peak / 2**20:.1f} MiB "
            f"({peak / n:.0f} B/row)"
        )
        for backend in BACKENDS:
            got = anyio.run(end_to_end, given, folder, backend=backend)
            print(
                f"{backend:<7}  submit {n / got['submit']:>10,.0f} rows/s   results "
                f"{n / got['results']:>9,.0f} rows/s (floor {n / got['results_floor']:,.0f}, "
                f"ratio {got['results'] / got['results_floor']:.1f})   state "
                f"{got['state_bytes'] / 2**20:.1f} MiB, saved in {got['save'] * 1000:.0f} ms"
            )


if __name__ == "__main__":
    main()
