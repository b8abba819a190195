"""``llmfanout run``'s observability flags: ``--otel`` and ``--stats-json FILE``."""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from typing import Any

import anyio

from .._report._stats import RunStats, deployment, write_atomically
from .._rows._job import Job
from ._args import UsageError, positive_float


def add_arguments(run: Any) -> None:
    """Add the flags to the ``run`` parser."""
    run.add_argument(
        "--otel",
        action="store_true",
        help="send OpenTelemetry spans and metrics (GenAI conventions) over OTLP, set up by "
        "the OTEL_* environment variables (needs: pip install opentelemetry-sdk "
        "opentelemetry-exporter-otlp-proto-http)",
    )
    run.add_argument(
        "--otel-capture-content",
        action="store_true",
        help="with --otel: record the messages and answers on the spans (off by default)",
    )
    run.add_argument(
        "--stats-json",
        metavar="FILE",
        help="keep the run's summary as JSON in FILE (counts, tokens, cost, latency and time "
        "to first token quantiles, per model): rewritten whole every --stats-interval "
        "seconds and at the end",
    )
    run.add_argument(
        "--stats-interval",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between --stats-json writes (default 5)",
    )


def start(args: argparse.Namespace, stack: ExitStack) -> None:
    """Check the flags; with ``--otel``, set up the SDK (flushed when ``stack`` closes)."""
    if args.otel_capture_content and not args.otel:
        raise UsageError("--otel-capture-content goes with --otel")
    if args.otel:
        from .._telemetry._setup import SetupError, configure_otlp

        try:
            stack.callback(configure_otlp())
        except SetupError as exc:
            raise UsageError(str(exc)) from None


class StatsFile:
    """The ``--stats-json`` file of a run: written at the start, periodically, at the end."""

    def __init__(self, path: str, interval: float, job: Job) -> None:
        self.path = path
        self.interval = interval
        self.job = job
        self.started = time.monotonic()
        job.stats = RunStats(deployment(job.provider), job.spec.prices)

    def write(self, state: str = "running") -> None:
        """Write the document now (``state``: running, finished, interrupted, stopped)."""
        stats = self.job.stats
        assert stats is not None
        document = stats.document(
            self.job.summary, elapsed=time.monotonic() - self.started, state=state
        )
        write_atomically(self.path, document)

    async def run(self) -> None:
        """Rewrite the file every ``interval`` seconds until cancelled."""
        while True:
            await anyio.sleep(self.interval)
            self.write()


def stats_file(args: argparse.Namespace, job: Job) -> StatsFile | None:
    """The run's stats file, written once now (so it exists from the start), or None."""
    if not args.stats_json:
        return None
    stats = StatsFile(args.stats_json, args.stats_interval, job)
    try:
        stats.write()
    except OSError as exc:
        raise UsageError(f"--stats-json: cannot write {args.stats_json!r} ({exc})") from None
    return stats
