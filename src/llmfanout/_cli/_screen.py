"""What ``llmfanout run`` shows and where it writes: the writer, the display, signals, messages."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus

from .._rows._input_rows import Scan
from .._rows._job import Job, RowStream
from .._rows._output_rows import (
    Recovered,
    RowWriter,
    encode,
)
from ._args import EXIT_FAILED, EXIT_OK, redact_command
from ._deployments import deployments_table
from ._display import Display, make_display
from ._observe import StatsFile


@attrs.define(eq=False)
class Screen:
    """What a run shows and where it writes: the writer, the display, signals, messages."""

    args: argparse.Namespace
    argv: list[str]
    found: Scan
    recovered: Recovered | None
    writer: RowWriter
    job: Job
    display: Display = attrs.field(init=False)
    signal: int | None = attrs.field(init=False, default=None)
    write_error: OSError | None = attrs.field(init=False, default=None)
    # cancelled by a signal or a write error
    scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    # rows held back: never sent (the run stopped), or refused the key
    unsent: int = attrs.field(init=False, default=0)
    # the first answer refusing the key, if any
    refused: str | None = attrs.field(init=False, default=None)
    stats: StatsFile | None = attrs.field(init=False, default=None)  # --stats-json

    def __attrs_post_init__(self) -> None:
        job = self.job
        self.display = make_display(self.found.to_write, quiet=self.args.quiet, stream=sys.stderr)
        self.display.concurrency = lambda: (job.concurrency, job.spec.concurrency)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to the output in one write; on failure (a full disk) stop the run.

        Rows the run never sent (it stopped early) and rows refused for the key are left
        out, so that ``--resume`` sends exactly those.
        """
        if self.write_error is not None or not rows:
            return
        if any(row["error"] is not None and row["error"]["type"] in _HELD for row in rows):
            rows = self.hold_back(rows)
        try:
            self.writer.write(encode(rows), len(rows))
        except OSError as exc:
            self.write_error = exc
            if self.scope is not None:
                self.scope.cancel()
            return
        record = self.display.record
        for row in rows:
            usage = row["usage"]
            record(row["success"], usage.get("total_tokens") if usage else None)

    def hold_back(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows to write; count the others, and remember why the run stopped."""
        kept = []
        for row in rows:
            error = row["error"]
            if error is None or error["type"] not in _HELD:
                kept.append(row)
                continue
            self.unsent += 1
            if error["type"] == "AuthenticationError" and self.refused is None:
                self.refused = error["message"]
        return kept

    async def execute(self, rows: Iterator[Any]) -> int:
        """Send the rows, write the results; the exit status."""
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            self.scope = scope = anyio.CancelScope()
            await tg.start(self.watch_signals, scope)
            self.announce()
            self.display.start()
            tg.start_soon(self.display.run)
            if self.stats is not None:
                tg.start_soon(self.stats.run)
            try:
                with scope:
                    async with self.job.run(rows) as stream:
                        await self.pump(stream, scope)
            finally:
                self.display.stop()
                tg.cancel_scope.cancel()
        self.writer.close()
        self.report(time.monotonic() - started)
        if self.stats is not None:
            stopped = "stopped" if self.unsent else "finished"
            self.stats.write("interrupted" if self.signal is not None else stopped)
        if self.write_error is not None:
            print(
                f"llmfanout: error: cannot write to {self.args.output} ({self.write_error}); "
                f"the {self.writer.rows} rows before it are safe there. Fix the cause, then "
                "run the same command with --resume",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if self.signal is not None:
            return self.interrupted(self.signal)
        if self.unsent:
            return self.stopped()
        return EXIT_FAILED if self.failed_in_output() else EXIT_OK

    def stopped(self) -> int:
        """Say why the run stopped early and how to finish it; the exit status."""
        command = ["llmfanout", *self.argv]
        if "--resume" not in command:
            command.append("--resume")
        if self.refused is not None:
            reason = self.refused
            fix = (
                f"the server refused the API key: check {self.job.spec.key_variable} (and "
                "what the key may access), then run"
            )
        elif self.job.cost_cap_reached:
            reason = f"the spend cap was reached (--max-cost {self.args.max_cost:g} USD)"
            fix = "raise --max-cost if need be, then run"
        else:
            limit = self.args.max_errors
            reason = f'{limit} rows failed (--max-errors {limit}); see their "error"'
            fix = "fix the cause, then run (add --retry-failed to send the failed rows again)"
        print(
            f"llmfanout: stopped early: {reason}\nllmfanout: {self.unsent} rows were not "
            f"written to {self.args.output} and will be sent by --resume; {fix}:\n"
            f"    {redact_command(command)}",
            file=sys.stderr,
        )
        return EXIT_FAILED

    async def pump(self, stream: RowStream, scope: anyio.CancelScope) -> None:
        """Write rows as they complete, every row ready at that moment in one write."""
        try:
            while batch := await stream.batch():
                self.write(batch)
        finally:
            if scope.cancel_called:  # save what finished before the cancellation
                self.write(stream.ready())

    def failed_in_output(self) -> int:
        """Failed rows in the output: this run's and, on resume, those it already held."""
        return self.display.failed + (self.recovered.failed if self.recovered else 0)

    async def watch_signals(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None]
    ) -> None:
        """On SIGINT or SIGTERM, cancel ``scope``: the calls in flight stop, the rest stays."""
        if sys.platform == "win32":  # no signal receivers there: Ctrl-C raises as usual
            task_status.started()
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self.signal is None:
                    self.signal = signum
                    scope.cancel()

    def announce(self) -> None:
        """Say what is about to happen (on standard error)."""
        if self.args.quiet:
            return
        found, already = self.found, ""
        if self.recovered is not None and self.recovered.rows:
            already = f" ({self.recovered.rows} already in {self.args.output})"
        bad = len(found.bad) - found.bad_recorded
        invalid = f", {bad} bad lines recorded as failed" if bad else ""
        print(
            f"llmfanout: {found.to_run} rows to send to {self.args.provider}{self.where()} "
            f"(model {self.job.model or 'per row'}), {self.args.concurrency} at a time, "
            f"into {self.args.output}{already}{invalid}",
            file=sys.stderr,
            flush=True,
        )

    def where(self) -> str:
        """`` at URL (from where)``: the base URL the provider uses, and who chose it."""
        url = getattr(self.job.provider, "base_url", None)
        if not isinstance(url, str):
            return ""
        variable = getattr(self.job.provider, "base_url_env", "")
        if self.args.base_url:
            source = "--base-url"
        elif variable and os.environ.get(variable, "").strip():
            source = variable
        else:
            source = "the default"
        return f" at {url} (from {source})"

    def report(self, elapsed: float) -> None:
        """The summary, on standard error."""
        if self.args.quiet:
            return
        # How many calls were in flight at the end, when the server made the run cut it.
        adapted = self.job.concurrency
        adapted_or_none = adapted if adapted < self.job.spec.concurrency else None
        summary = self.job.summary.summary(elapsed=elapsed, concurrency=adapted_or_none)
        print(str(summary), file=sys.stderr)
        stats = getattr(self.job.provider, "stats", None)
        if getattr(self.job.spec, "deployments", None) and callable(stats):
            print(deployments_table(stats(), self.job.spec.prices), file=sys.stderr)
        elif self.args.provider != "echo":
            print(f"llmfanout: sent to {self.args.provider}{self.where()}", file=sys.stderr)
        output, written = self.args.output, self.writer.rows
        line = f"llmfanout: wrote {written} rows to {output}"
        if self.recovered is not None and self.recovered.rows:
            line += f", which now holds {written + self.recovered.rows}"
        if self.job.bad_rows:
            line += f"; {self.job.bad_rows} of them for bad input lines"
        print(line, file=sys.stderr)
        failed = self.failed_in_output()
        if failed and self.signal is None:
            print(
                f'llmfanout: {failed} rows in {self.args.output} failed (see their "error"); '
                "to send them again, run the same command with --resume --retry-failed",
                file=sys.stderr,
            )

    def interrupted(self, signum: int) -> int:
        """Say how to finish the run; the exit status for a run stopped by ``signum``."""
        written = self.writer.rows
        left = self.found.to_write - written
        command = ["llmfanout", *self.argv]
        if "--resume" not in command:
            command.append("--resume")
        print(
            f"llmfanout: interrupted; {written} rows are safely in {self.args.output}, "
            f"{left} still to do. To finish, run:\n    {redact_command(command)}",
            file=sys.stderr,
        )
        return 128 + signum


_HELD = frozenset({"TaskAborted", "AuthenticationError"})
"""Error types of rows not written: never sent (the run stopped), or refused for the key."""
