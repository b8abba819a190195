"""Core overhead: what ``execute()`` adds per task, against a bare worker pool in the same run.

N zero-latency tasks (default 100k, concurrency 100) go through ``execute`` and through
hand-written baselines, on asyncio and on trio. Every contender calls the same provider
(a fresh zero-latency ``EchoProvider`` per run, whose ``complete`` yields once), so the
ratios compare scheduling and bookkeeping, not providers. A second pass uses a provider
whose ``complete`` only yields once and returns a prebuilt response: pure scheduling.

Contenders (ratios are against ``bare pool`` measured in the same process):

- ``bare pool``: C workers pulling from one iterator, ``results[tag] = await complete(...)``.
- ``+ TaskResult``, ``+ perf_counter pair``, ``+ emit coroutine``: the bare pool plus each
  piece of the executor's per-task path in turn (cumulative), to price them one by one.
- ``+ limiter per item``: the previous row plus an uncontended ``CapacityLimiter``
  acquire/release around every item (what the executor does *not* do: a worker holds one
  token for its whole life).
- ``spawn per task``: one task per input behind a ``CapacityLimiter`` (the rejected
  design), at N and N/10 to show its per-task cost growing with N. Run once, not best
  of k: it is far off the pace and the slowest row.
- ``asyncio.gather + Semaphore``: the usual hand-rolled asyncio answer (asyncio only).
- ``stream``: ``ParallelLLMExecutor.stream`` over a generator of tagged tasks (as the
  CLI feeds it), results taken in completion order and kept in a dict; ``stream, results
  let go``: the same, its consumer keeping none (as the CLI, which writes each to a
  file); ``hand-rolled stream (floor)``: the least any stream must do (refuse a repeated
  tag, time each call into a new result, hand it to an ``async for`` that keeps it),
  written out with nothing else, to show what of ``stream``'s ratio is its own.
- ``execute``: ``ParallelLLMExecutor.execute`` with no retry, timeout or rate limit;
  then with ``max_errors`` set (never reached) and with a sync ``on_result``, the two
  options that add work to every task; then with a 3-attempt retry policy (the CLI's
  default) whose first attempt succeeds, without and with a timeout per attempt.

Then the pieces are timed alone in a tight loop (nanoseconds per call, best of k).

Run: ``python benchmarks/bench_overhead.py`` (a few minutes on 2 cores), ``--quick`` for
a smoke run, ``--n``, ``--concurrency``, ``--repeats`` to change the sizes, ``--only
TEXT`` to run only the rows whose label has TEXT (and the baselines; with ``--exact``, whose
label is TEXT), ``--provider`` to run with one provider only, ``--cpu`` to time
by CPU time on a busy machine, ``--median`` for the median of k instead of the best,
``--no-pieces`` to skip the pieces in isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
import timeit
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel

from llmfanout import (
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RetryConfig,
    TaskResult,
)
from llmfanout._core._inputs import check_mapping
from llmfanout._core._tasks import answered

from _common import BACKENDS, CheckpointProvider
from _common import RESPONSE as _RESPONSE

Tasks = dict[str, LLMTask]
Results = dict[str, Any]
Contender = Callable[[Any, Tasks, int], Awaitable[Results]]


# -- contenders --------------------------------------------------------------------------
# Each takes (provider, {tag: LLMTask}, concurrency) and returns {tag: response or TaskResult}.


async def _pool(concurrency: int, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(work)


async def bare_pool(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    source = iter(tasks.items())

    async def worker() -> None:
        for tag, task in source:
            results[tag] = await complete(task.messages, config_overrides=None)

    await _pool(concurrency, worker)
    return results


async def with_task_result(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    source = iter(tasks.items())

    async def worker() -> None:
        for tag, task in source:
            try:
                response = await complete(task.messages, config_overrides=None)
            except Exception as exc:
                results[tag] = TaskResult(tag, False, None, exc, 0.0, 1)
            else:
                results[tag] = TaskResult(tag, True, response, None, 0.0, 1)

    await _pool(concurrency, worker)
    return results


async def with_timing(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    source = iter(tasks.items())

    async def worker() -> None:
        for tag, task in source:
            start = perf_counter()
            try:
                response = await complete(task.messages, config_overrides=None)
            except Exception as exc:
                ms = (perf_counter() - start) * 1000
                results[tag] = TaskResult(tag, False, None, exc, ms, 1)
            else:
                ms = (perf_counter() - start) * 1000
                results[tag] = TaskResult(tag, True, response, None, ms, 1)

    await _pool(concurrency, worker)
    return results


async def with_emit(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    source = iter(tasks.items())

    async def emit(result: TaskResult) -> None:
        results[result.tag] = result

    async def worker() -> None:
        for tag, task in source:
            start = perf_counter()
            try:
                response = await complete(task.messages, config_overrides=None)
            except Exception as exc:
                ms = (perf_counter() - start) * 1000
                result = TaskResult(tag, False, None, exc, ms, 1)
            else:
                ms = (perf_counter() - start) * 1000
                result = TaskResult(tag, True, response, None, ms, 1)
            await emit(result)

    await _pool(concurrency, worker)
    return results


async def with_limiter(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    source = iter(tasks.items())
    limiter = anyio.CapacityLimiter(concurrency)

    async def emit(result: TaskResult) -> None:
        results[result.tag] = result

    async def worker() -> None:
        for tag, task in source:
            async with limiter:  # never contended: one token per worker
                start = perf_counter()
                try:
                    response = await complete(task.messages, config_overrides=None)
                except Exception as exc:
                    ms = (perf_counter() - start) * 1000
                    result = TaskResult(tag, False, None, exc, ms, 1)
                else:
                    ms = (perf_counter() - start) * 1000
                    result = TaskResult(tag, True, response, None, ms, 1)
            await emit(result)

    await _pool(concurrency, worker)
    return results


async def spawn_per_task(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(tag: str, task: LLMTask) -> None:
        async with limiter:
            results[tag] = await complete(task.messages, config_overrides=None)

    async with anyio.create_task_group() as tg:
        for tag, task in tasks.items():
            tg.start_soon(one, tag, task)
    return results


async def gather_semaphore(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    results: Results = {}
    complete = provider.complete
    semaphore = asyncio.Semaphore(concurrency)

    async def one(tag: str, task: LLMTask) -> None:
        async with semaphore:
            results[tag] = await complete(task.messages, config_overrides=None)

    await asyncio.gather(*(one(tag, task) for tag, task in tasks.items()))
    return results


async def execute(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    return await executor.execute(tasks)


async def stream(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """``stream``: the same tasks, results taken in completion order."""
    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    results: Results = {}
    # A generator, as the CLI gives: read lazily, each task tagged by its own tag.
    async with executor.stream(task for task in tasks.values()) as out:
        async for result in out:
            results[result.tag] = result
    return results


class _Seen(dict[str, Any]):
    """What a consumer that lets its results go keeps: the last task's result, and how
    many results it saw (``count``), for the check that none was skipped."""

    count = 0


async def stream_let_go(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """``stream`` whose consumer handles each result and lets it go, as the CLI does
    (it writes each to a file): the 100k results never pile up for the collector."""
    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    last, seen = next(reversed(tasks)), _Seen()
    async with executor.stream(task for task in tasks.values()) as out:
        async for result in out:
            seen.count += 1
            if result.tag == last:
                seen[last] = result
    return seen


class _Handed:
    """The hand-rolled stream's buffer: workers append, the consumer takes, and sleeps
    on an event only when the buffer is empty."""

    def __init__(self) -> None:
        self.buffer: deque[TaskResult] = deque()
        self.wake: anyio.Event | None = None
        self.closed = False

    def __aiter__(self) -> _Handed:
        return self

    async def __anext__(self) -> TaskResult:
        buffer = self.buffer
        while not buffer:
            if self.closed:
                raise StopAsyncIteration
            self.wake = anyio.Event()
            await self.wake.wait()
        return buffer.popleft()

    def put(self, result: TaskResult) -> None:
        self.buffer.append(result)
        if self.wake is not None:
            self.wake.set()
            self.wake = None


async def hand_rolled_stream(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """The least any ``stream`` must do, written out: refuse a repeated tag (a set of
    the tags seen), time each call into a new result, hand it to a consumer iterating
    with ``async for``, which keeps it as the ``stream`` row's does. No pacing, no
    governor, no error isolation: a floor, not a contender."""
    complete, handed, given = provider.complete, _Handed(), set()
    source = (task for task in tasks.values())

    async def worker() -> None:
        for task in source:
            tag = task.tag
            known = len(given)
            given.add(tag)
            if len(given) == known:
                raise ValueError(f"repeated tag {tag!r}")
            start = perf_counter()
            response = await complete(task.messages, config_overrides=None)
            handed.put(answered(tag, response, (perf_counter() - start) * 1000, 1))

    async def drive() -> None:
        await _pool(concurrency, worker)
        handed.closed = True
        if handed.wake is not None:
            handed.wake.set()

    results: Results = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        async for result in handed:
            results[result.tag] = result
    return results


async def execute_max_errors(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """``max_errors`` set (never reached): each task runs in its own cancel scope."""
    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    return await executor.execute(tasks, max_errors=len(tasks))


async def execute_retry(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """A 3-attempt policy (the CLI's default) whose first attempt succeeds."""
    executor = ParallelLLMExecutor(
        provider, max_concurrency=concurrency, default_retry=RetryConfig(max_attempts=3)
    )
    return await executor.execute(tasks)


async def execute_retry_timeout(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """The same with a timeout per attempt (``--timeout``): one cancel scope per attempt."""
    executor = ParallelLLMExecutor(
        provider,
        max_concurrency=concurrency,
        default_retry=RetryConfig(max_attempts=3),
        default_timeout=60,
    )
    return await executor.execute(tasks)


async def execute_on_result(provider: Any, tasks: Tasks, concurrency: int) -> Results:
    """A sync ``on_result`` callback: the executor wraps it in a coroutine per result."""
    executor = ParallelLLMExecutor(provider, max_concurrency=concurrency)
    seen: list[TaskResult] = []
    results = await executor.execute(tasks, on_result=seen.append)
    assert len(seen) == len(tasks)
    return results


# -- measuring ---------------------------------------------------------------------------


def make_tasks(n: int) -> Tasks:
    return {
        f"t{i}": LLMTask(messages=[LLMMessage("user", f"question {i}")], tag=f"t{i}")
        for i in range(n)
    }


def _check(name: str, results: Results, tasks: Tasks) -> None:
    """A contender that skipped work must not look fast: every tag has its own answer."""
    count = results.count if isinstance(results, _Seen) else len(results)
    assert count == len(tasks), f"{name}: {count} results for {len(tasks)} tasks"
    tag = next(reversed(tasks))
    task = tasks[tag]
    value = results[tag]
    if isinstance(value, TaskResult):
        assert value.success, f"{name}: task {tag!r} failed: {value.error!r}"
        value = value.value
    assert isinstance(value, LLMResponse), f"{name}: {tag!r} -> {value!r}"
    assert value.content in ("pong", "Echo: " + task.messages[-1].content), value


# Wall time by default; ``--cpu`` reads this process's CPU time instead, which other jobs
# on a shared machine disturb far less (the work here never waits on anything outside).
CLOCK: list[Callable[[], float]] = [perf_counter]
# Best of k by default; ``--median`` takes the median instead (steadier on a noisy machine).
STATISTIC: list[Callable[[list[float]], float]] = [min]


async def _time_once(contender: Contender, provider: Any, tasks: Tasks, c: int) -> float:
    gc.collect()
    clock = CLOCK[0]
    start = clock()
    results = await contender(provider, tasks, c)
    elapsed = clock() - start
    _check(contender.__name__, results, tasks)
    return elapsed


Row = tuple[str, Contender, Tasks]

# Far off the pace (8-30x the pool) and the slowest to run: one run says enough, and
# skipping its repeats keeps the whole script within a few minutes.
RUN_ONCE: frozenset[Contender] = frozenset({spawn_per_task})


async def _measure(
    rows: list[Row], provider: Callable[[], Any], concurrency: int, repeats: int
) -> dict[str, float]:
    """Microseconds per task for each row (best or median of ``repeats``, see
    ``STATISTIC``), repeats interleaved."""
    runs: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for repeat in range(repeats):
        for label, contender, tasks in rows:
            if repeat and contender in RUN_ONCE:
                continue
            seconds = await _time_once(contender, provider(), tasks, concurrency)
            runs[label].append(seconds / len(tasks) * 1e6)
    return {label: STATISTIC[0](times) for label, times in runs.items()}


def _rows(backend: str, big: Tasks, little: Tasks) -> list[Row]:
    """The contenders; the first row at each size is the baseline for that size."""
    n, small = f"{len(big):,}", f"{len(little):,}"
    rows: list[Row] = [
        (f"bare pool, N={n}", bare_pool, big),
        ("+ TaskResult", with_task_result, big),
        ("+ perf_counter pair", with_timing, big),
        ("+ emit coroutine", with_emit, big),
        ("+ limiter per item", with_limiter, big),
        ("execute", execute, big),
        ("stream", stream, big),
        ("stream, results let go", stream_let_go, big),
        ("hand-rolled stream (floor)", hand_rolled_stream, big),
        ("execute(max_errors=N)", execute_max_errors, big),
        ("execute(on_result=list.append)", execute_on_result, big),
        ("execute, 3-attempt retry", execute_retry, big),
        ("execute, 3-attempt retry + timeout", execute_retry_timeout, big),
        ("spawn per task", spawn_per_task, big),
    ]
    if backend == "asyncio":
        rows.append(("asyncio.gather + Semaphore", gather_semaphore, big))
    rows += [
        (f"bare pool, N={small}", bare_pool, little),
        (f"execute, N={small}", execute, little),
        (f"spawn per task, N={small}", spawn_per_task, little),
    ]
    if backend == "asyncio":
        rows.append((f"asyncio.gather + Semaphore, N={small}", gather_semaphore, little))
    return rows


PROVIDERS: dict[str, Callable[[], Any]] = {
    "EchoProvider": EchoProvider,
    "checkpoint only": CheckpointProvider,
}


def bench_backend(
    backend: str,
    n: int,
    small: int,
    concurrency: int,
    repeats: int,
    only: list[str],
    exact: bool = False,
    providers: list[str] | None = None,
) -> None:
    rows = _rows(backend, make_tasks(n), make_tasks(small))
    if only:  # keep the baselines, and the rows asked for
        rows = [
            r
            for r in rows
            if r[0].startswith("bare pool") or any(o == r[0] if exact else o in r[0] for o in only)
        ]
    tables = {
        name: anyio.run(_measure, rows, factory, concurrency, repeats, backend=backend)
        for name, factory in PROVIDERS.items()
        if not providers or name in providers
    }
    baseline = {len(tasks): label for label, _, tasks in reversed(rows)}  # first row per size

    print(f"\n### {backend}: µs per task ({_stat(repeats)}), ratio to the bare pool\n")
    print("| contender | " + " | ".join(f"{name} µs | ratio" for name in tables) + " |")
    print("|---|" + "---:|---:|" * len(tables))
    for label, _, tasks in rows:
        cells = []
        for table in tables.values():
            ratio = table[label] / table[baseline[len(tasks)]]
            cells.append(f"{table[label]:.2f} | {ratio:.2f}x")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for name, table in tables.items():
        pool = table[baseline[n]]
        if "execute" not in table:
            continue
        verdict = f"{name}: execute is {table['execute'] / pool:.2f}x the bare pool (target <= 2x)"
        if "stream" in table:
            verdict += f", stream {table['stream'] / pool:.2f}x"
        if "stream, results let go" in table:
            verdict += f" ({table['stream, results let go'] / pool:.2f}x letting results go)"
        if "execute, 3-attempt retry" in table:
            retry = table["execute, 3-attempt retry"]
            verdict += f"; a 3-attempt policy is {retry / table['execute']:.2f}x execute"
        if backend == "asyncio" and "asyncio.gather + Semaphore" in table:
            gather = table["asyncio.gather + Semaphore"]
            verdict += f", {table['execute'] / gather:.2f}x gather + Semaphore (target < 1x)"
        print(verdict)
    print("(spawn per task: a single run, not best of k.)")
    if backend == "trio":
        print("(asyncio.gather + Semaphore is asyncio-only: not run on trio.)")


# -- the sync pieces, in isolation -------------------------------------------------------


def bench_pieces(repeats: int) -> None:
    """Nanoseconds per call of each piece, timed in a tight loop (no scheduling noise).

    The async pieces run in a loop with one task, so a yield there is cheaper than in a
    pool of C busy workers; the in-pool rows above give the cost that counts.
    """
    executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=1)
    mapping = make_tasks(10_000)
    task = mapping["t0"]
    pieces: dict[str, tuple[Callable[[], Any], int]] = {
        "TaskResult(...) construction": (
            lambda: TaskResult("t1", True, _RESPONSE, None, 1.0, 1),
            200_000,
        ),
        "perf_counter() pair": (lambda: (perf_counter() - perf_counter()) * 1000, 200_000),
        "executor._overrides(task)": (lambda: executor._overrides(task), 200_000),
        "check_mapping, per item (10k mapping)": (
            lambda: check_mapping(mapping, "execute", llm_only=True),
            20,
        ),
    }
    print(f"\n### pieces in isolation: ns per call (best of {max(repeats, 3)})\n")
    print("| piece | ns |")
    print("|---|---:|")
    for label, (fn, number) in pieces.items():
        seconds = min(timeit.repeat(fn, number=number, repeat=max(repeats, 3)))
        per = seconds / number * 1e9
        if "per item" in label:
            per /= len(mapping)
        print(f"| {label} | {per:.0f} |")

    async def async_pieces() -> dict[str, float]:
        async def emit(result: Any) -> None:
            pass

        limiter = anyio.CapacityLimiter(1)

        async def nowait() -> None:  # the sync calls, in a coroutine like the others
            limiter.acquire_nowait()
            limiter.release()

        async def acquire() -> None:
            async with limiter:
                pass

        async def scope() -> None:  # what max_errors puts around every task
            with anyio.CancelScope():
                pass

        number = 100_000
        out: dict[str, float] = {}
        bodies: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("awaited no-op coroutine (emit)", lambda: emit(None)),
            ("CapacityLimiter acquire_nowait + release, in a coroutine", nowait),
            ("async with CapacityLimiter (uncontended, one task)", acquire),
            ("with anyio.CancelScope(): pass", scope),
            ("anyio.lowlevel.checkpoint() (one task)", anyio.lowlevel.checkpoint),
        )
        for label, body in bodies:
            best = float("inf")
            for _ in range(max(repeats, 3)):
                start = perf_counter()
                for _ in range(number):
                    await body()
                best = min(best, perf_counter() - start)
            out[label] = best / number * 1e9
        return out

    for backend in BACKENDS:
        print(f"\n{backend}:\n")
        print("| piece | ns |")
        print("|---|---:|")
        for label, ns in anyio.run(async_pieces, backend=backend).items():
            print(f"| {label} | {ns:.0f} |")


def _stat(repeats: int) -> str:
    return f"{'median' if STATISTIC[0] is statistics.median else 'best'} of {repeats}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="tasks per run (default 100k)")
    parser.add_argument("--concurrency", type=int, default=100, help="C (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="best of k (default 3)")
    parser.add_argument("--quick", action="store_true", help="small N, one repeat: a smoke run")
    parser.add_argument(
        "--only", action="append", default=[], help="run only rows whose label has this text"
    )
    parser.add_argument("--no-pieces", action="store_true", help="skip the pieces in isolation")
    parser.add_argument(
        "--cpu", action="store_true", help="time rows by process CPU time (a busy machine)"
    )
    parser.add_argument("--median", action="store_true", help="median of k instead of best")
    parser.add_argument(
        "--exact", action="store_true", help="--only names whole labels (e.g. 'execute')"
    )
    parser.add_argument(
        "--provider",
        action="append",
        choices=sorted(PROVIDERS),
        help="run only with this provider (default: each in turn)",
    )
    args = parser.parse_args(argv)
    for name in ("n", "concurrency", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    n, repeats = (2_000, 1) if args.quick else (args.n, args.repeats)
    if args.cpu:
        CLOCK[0] = time.process_time
    if args.median:
        STATISTIC[0] = statistics.median
    small = max(n // 10, 1)
    print(
        f"bench_overhead: N={n:,} (and N/10={small:,}), C={args.concurrency}, "
        f"{_stat(repeats)}, {'CPU' if args.cpu else 'wall'} time; "
        f"Python {platform.python_version()} on {sys.platform}, {os.cpu_count()} CPUs"
    )
    started = perf_counter()
    for backend in BACKENDS:
        bench_backend(
            backend, n, small, args.concurrency, repeats, args.only, args.exact, args.provider
        )
    if not args.no_pieces:
        bench_pieces(repeats)
    print(f"\n(total {perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
