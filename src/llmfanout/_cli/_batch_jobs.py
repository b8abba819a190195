"""``llmfanout batch wait|status|cancel``: the job a state file records, and its display.

``wait`` polls, and appends one row per input id to OUTPUT as each provider batch ends:
the rows of ``llmfanout run`` plus ``batch_id``. ``status`` shows the counts (as last
seen, without a key); ``cancel`` asks the provider to stop the unfinished batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from functools import partial
from typing import IO, TYPE_CHECKING, Any

import anyio
import attrs

from .._batch._jobs import BatchJob, BatchProgress, Polling
from .._batch._state import state_path
from .._core._tasks import TaskResult
from .._report._cost import CostTally
from .._report._summary import format_usd
from .._rows._output_rows import (
    OutputCorrupt,
    RowWriter,
    cut_torn_line,
    encode,
    recover,
    result_row,
)
from .._rows._spec import FALLBACK_KEY_VARIABLES, KEY_VARIABLES, key_variable
from .._rows._structured_rows import checked_result, structured_fields
from .._structured._schema import Schema, schema_for
from ..providers._http import HTTPProvider
from ._args import EXIT_FAILED, EXIT_OK, UsageError, redact_command
from ._display import terminal_console

if TYPE_CHECKING:
    from rich.progress import Progress

PER_ROW = "per-row"  # the provider's model when every row names its own
BATCH_DISCOUNT = 0.5  # both providers bill batch requests at half the list price


def provider_for(
    name: str, model: str, base_url: str | None, key_env: str | None, *, required: bool = True
) -> HTTPProvider:
    variable = key_env or key_variable(name)
    key = os.environ.get(variable, "").strip() or ("" if required else "dry-run")
    if not key:
        raise UsageError(
            f"--provider {name} needs an API key in the {variable} environment variable "
            f"(keys are never taken from a flag); set it, e.g. export {variable}=... "
            "(a local server that needs no key accepts any value)"
        )
    from ..providers import AnthropicProvider, GeminiProvider, OpenAIProvider

    classes: dict[str, type[HTTPProvider]] = {
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
        "gemini": GeminiProvider,
    }
    cls = classes[name]
    options: dict[str, Any] = {"base_url": base_url} if base_url else {}
    try:
        return cls(model, api_key=key, api_key_env=variable, **options)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _own_variables(provider: str) -> set[str | None]:
    """The variables a provider's key is read from by default (its own, and a fallback)."""
    return {KEY_VARIABLES[provider], FALLBACK_KEY_VARIABLES.get(provider)}


def job_provider(args: argparse.Namespace, job: BatchJob) -> HTTPProvider:
    """The provider for a recorded job, where the command line (not the state file) says.

    A state file is only a record: it may not choose the variable the key is read from
    (one of the provider's own names, or ``--api-key-env``), nor the host it is sent to
    (the job's base URL must be the one this command would use anyway: ``--base-url``,
    else the provider's environment variable, else its default).
    """
    variable = args.api_key_env
    recorded = job.api_key_env
    if variable is None and recorded is not None and recorded not in _own_variables(job.provider):
        raise UsageError(
            f"{state_path(args.output)} says the key is in {recorded}; a state file cannot "
            f"choose where a key comes from: if that is right, pass --api-key-env {recorded}"
        )
    provider = provider_for(job.provider, job.model, args.base_url, variable)
    if provider.base_url != job.base_url.rstrip("/"):
        where = "--base-url" if args.base_url else f"{provider.base_url_env} or the default"
        raise UsageError(
            f"{state_path(args.output)} records the base URL {job.base_url}, but this command "
            f"would send the key to {provider.base_url} ({where}); the key goes only where "
            f"the command line says: if you trust that address, pass --base-url {job.base_url}"
        )
    return provider


def wait_command(output: str, job: BatchJob) -> str:
    """``llmfanout batch wait OUTPUT``, with the flags this job needs (a base URL, a key name)."""
    from ..providers import AnthropicProvider, OpenAIProvider

    cls = OpenAIProvider if job.provider == "openai" else AnthropicProvider
    command = ["llmfanout", "batch", "wait", output]
    if job.base_url.rstrip("/") != cls.default_base_url:
        command += ["--base-url", job.base_url]
    if job.api_key_env and job.api_key_env not in _own_variables(job.provider):
        command += ["--api-key-env", job.api_key_env]
    return redact_command(command)


def polling_of(args: argparse.Namespace) -> Polling:
    interval = getattr(args, "poll_interval", 5.0)
    cap = getattr(args, "max_poll_interval", 60.0)
    return Polling(interval=interval, max_interval=max(interval, cap))


# -- wait, status, cancel ----------------------------------------------------------------


def job_schema(args: argparse.Namespace, job: BatchJob) -> Schema | None:
    """The schema answers are validated against: the one the submit recorded, else
    ``--schema``; ``UsageError`` when ``--schema`` differs from the recorded one."""
    given = getattr(args, "schema_json", None)
    recorded = job.schema
    if recorded is None:
        return getattr(args, "schema_object", None)
    if given is not None and given != recorded:
        raise UsageError(
            f"--schema {args.schema}: differs from the schema this job was submitted with "
            f"({job.schema_file or 'recorded'}, kept in {state_path(args.output)}); leave "
            "--schema out to validate against the recorded one, or give that same schema"
        )
    try:
        return schema_for(schema=recorded)
    except ImportError as exc:
        raise UsageError(f"the job's schema: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{state_path(args.output)}: its recorded schema {exc}; restore the file from a copy"
        ) from None


def with_job(args: argparse.Namespace, holder: str | None = None) -> int:
    job = BatchJob.load(state_path(args.output), polling=polling_of(args))
    args.schema_object = job_schema(args, job)
    try:
        provider = job_provider(args, job)
    except UsageError as exc:
        if args.batch_command != "status":
            raise
        # No key, or not the job's address: what was last seen is still worth showing.
        print(_status_text(args.output, job, job.progress()))
        print(f"  (as last seen, nothing was asked: {exc})")
        return EXIT_OK
    if args.batch_command == "wait":
        return wait(args, job, provider)
    if args.batch_command == "cancel":
        record = holder is None
        progress = anyio.run(partial(_cancel, job, provider, record), backend=args.backend)
        then = (
            f"the process holding the job ({holder}) collects what was done"
            if holder is not None
            else f"collect everything with: {wait_command(args.output, job)}"
        )
        print(
            f"llmfanout: cancel asked for {job.provider} job {job.run_id}; requests already "
            f"done keep their results ({progress.done}/{progress.rows} so far); {then}",
            file=sys.stderr,
        )
        if holder is not None and not job.submitted:
            print(
                "llmfanout: the submit is still creating batches; stop it, then cancel again "
                "to stop the rest",
                file=sys.stderr,
            )
        return EXIT_OK
    progress = anyio.run(partial(_refresh, job, provider), backend=args.backend)
    print(_status_text(args.output, job, progress))
    return EXIT_OK


async def _cancel(job: BatchJob, provider: HTTPProvider, record: bool) -> BatchProgress:
    async with provider:
        return await job.cancel(provider, record=record)


async def _refresh(job: BatchJob, provider: HTTPProvider) -> BatchProgress:
    async with provider:
        return await job.refresh(provider)


def _status_text(output: str, job: BatchJob, progress: BatchProgress) -> str:
    lines = [
        f"{job.provider} batch job {job.run_id} for {output}"
        + (" (cancelled)" if job.cancelled else ""),
        f"  {progress.done}/{progress.rows} requests done: {progress.succeeded} succeeded, "
        f"{progress.failed} failed; {progress.parts_ended}/{progress.parts} batches ended",
    ]
    for part in job.parts:
        state = "rows written" if part.collected else (part.status or "not created")
        lines.append(
            f"  {part.batch_id or '-':<36} {state:<13} {part.done:>7}/{part.rows:<7} "
            f"{part.succeeded} ok, {part.failed} failed"
        )
    if job.schema is not None:
        where = f" (from {job.schema_file})" if job.schema_file else ""
        lines.append(f"  answers are validated against the schema recorded at submit{where}")
    if not job.submitted and not job.cancelled:
        lines.append("  the submit did not finish: run the same submit command again")
    elif not all(part.collected for part in job.parts):
        lines.append(f"  collect the results with: {wait_command(output, job)}")
    return "\n".join(lines)


def wait(args: argparse.Namespace, job: BatchJob, provider: HTTPProvider) -> int:
    output = args.output
    if os.path.exists(output):
        try:
            recovered = recover(output)
        except OutputCorrupt as exc:
            raise UsageError(str(exc)) from None
        cut_torn_line(output, recovered)
        keys = recovered.keys
    else:
        keys = set()
    with ExitStack() as stack:
        writer = RowWriter(output)
        stack.callback(writer.close)
        waiter = Waiter(args, job, provider, writer, keys)
        return anyio.run(waiter.run, backend=args.backend)


PLAIN_EVERY = 30.0  # seconds at least between plain progress lines (batches take hours)


class Display:
    """Progress from the provider's counts: a rich bar on a terminal, else a line now and then.

    A plain line is written when the counts changed and ``PLAIN_EVERY`` seconds have passed,
    and once at the end; nothing at all with ``--quiet``.
    """

    def __init__(self, quiet: bool, stream: IO[str]) -> None:
        self.stream = stream
        self.quiet = quiet
        self.bar: Progress | None = None
        console = None if quiet else terminal_console(stream)
        if console is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
                TextColumn("{task.fields[parts]} batches ended"),
                TimeElapsedColumn(),
                console=console,
                auto_refresh=False,  # no drawing thread: we redraw after each poll
            )
            self.task = self.bar.add_task("batch", total=None, ok=0, failed=0, parts="0/0")
            self.bar.start()
        self.last: BatchProgress | None = None
        self.shown: BatchProgress | None = None  # the counts of the last plain line
        self.shown_at = -PLAIN_EVERY

    def update(self, progress: BatchProgress) -> None:
        """Show new counts (a plain line only now and then)."""
        self.last = progress
        if self.bar is not None:
            self.bar.update(
                self.task,
                total=progress.rows,
                completed=progress.done,
                ok=progress.succeeded,
                failed=progress.failed,
                parts=f"{progress.parts_ended}/{progress.parts}",
            )
            self.bar.refresh()
        elif progress != self.shown and time.monotonic() - self.shown_at >= PLAIN_EVERY:
            self.line(progress)

    def line(self, progress: BatchProgress) -> None:
        """Write one plain progress line."""
        if self.quiet:
            return
        self.shown, self.shown_at = progress, time.monotonic()
        share = 100 * progress.done / progress.rows if progress.rows else 100.0
        self.stream.write(
            f"llmfanout: {progress.done}/{progress.rows} requests done ({share:.0f}%), "
            f"{progress.succeeded} ok, {progress.failed} failed; {progress.parts_ended}/"
            f"{progress.parts} batches ended\n"
        )
        self.stream.flush()

    def stop(self) -> None:
        """Leave the last counts on screen."""
        if self.bar is not None:
            self.bar.stop()
        elif self.last is not None and self.last != self.shown:
            self.line(self.last)


@attrs.define(eq=False)
class Waiter:
    """Polls the job and writes each ended part's rows, skipping ids OUTPUT already holds."""

    args: argparse.Namespace
    job: BatchJob
    provider: HTTPProvider
    writer: RowWriter
    keys: set[str]
    written: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)
    # prompt and completion tokens of the rows written
    tokens: list[int] = attrs.field(init=False, factory=lambda: [0, 0])
    cost: CostTally | None = attrs.field(init=False, default=None)
    schema: Schema | None = attrs.field(init=False, default=None)
    display: Display = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        table = getattr(self.args, "price_table", None)
        self.cost = None if table is None else CostTally(table)
        self.schema = getattr(self.args, "schema_object", None)

    def on_progress(self, progress: BatchProgress) -> None:
        self.display.update(progress)

    def row(self, result: TaskResult, batch_id: str | None) -> bytes:
        row = result_row(result, json.loads(result.tag), self.job.model, self.scrub)
        if self.job.endpoint == "embeddings":
            response = result.value if result.success else None
            row["embedding"] = getattr(response, "metadata", {}).get("embedding")
            del row["content"], row["finish_reason"]
        row["batch_id"] = batch_id
        if self.schema is not None:
            row = structured_fields(row, result, self.scrub)
        return encode((row,))

    def scrub(self, text: str) -> str:
        return self.provider._redactor.text(text)

    async def run(self) -> int:
        job, provider = self.job, self.provider
        self.display = Display(self.args.quiet, sys.stderr)
        async with provider:
            try:
                async for part in job.ended(provider, on_progress=self.on_progress):
                    # A collected part is read again only if OUTPUT lost some of its rows.
                    if part.collected and all(tag in self.keys for tag in job.tags(part.index)):
                        continue
                    async for result in job.part_results(provider, part.index):
                        self.write(result, part.batch_id)
                    self.writer.sync()  # durable before the part is marked collected
                    job.mark_collected(part.index)
                    self.on_progress(job.progress())
            finally:
                self.display.stop()
        self.writer.close()
        return self.report()

    def write(self, result: TaskResult, batch_id: str | None) -> None:
        if result.tag in self.keys:
            return
        if self.schema is not None:
            result = checked_result(result, self.schema)
        self.writer.write(self.row(result, batch_id))
        self.keys.add(result.tag)
        self.written += 1
        self.failed += not result.success
        usage = getattr(result.value, "usage", None)
        if usage:
            self.tokens[0] += usage.get("prompt_tokens") or 0
            self.tokens[1] += usage.get("completion_tokens") or 0
        if self.cost is not None and result.success:
            self.cost.add(result.value.model, usage)

    def report(self) -> int:
        output = self.args.output
        failed = self._failed_in_output()
        if not self.args.quiet:
            prompt, completion = self.tokens
            print(
                f"llmfanout: wrote {self.written} rows to {output} "
                f"({len(self.keys)} in all, {failed} failed); tokens in these rows: "
                f"{prompt:,} prompt, {completion:,} completion, at the batch price",
                file=sys.stderr,
            )
            if self.cost is not None:
                unpriced = ", ".join(
                    f"{m or '(no model)'} x{n}" for m, n in self.cost.unpriced.items()
                )
                print(
                    f"llmfanout: cost of these rows at the batch price: "
                    f"{format_usd(self.cost.total * BATCH_DISCOUNT)}"
                    + (f" (not counted, no price or no usage: {unpriced})" if unpriced else ""),
                    file=sys.stderr,
                )
            if failed:
                print(
                    f'llmfanout: {failed} rows in {output} failed (see their "error"); to send '
                    f"them again in real time: {self.rerun()}",
                    file=sys.stderr,
                )
        return EXIT_FAILED if failed else EXIT_OK

    def rerun(self) -> str:
        """The command that sends the failed rows again in real time."""
        job = self.job
        command = ["llmfanout", "run", job.input or "INPUT", "-o", self.args.output]
        command += ["--provider", job.provider, "--base-url", job.base_url]
        if job.api_key_env:
            command += ["--api-key-env", job.api_key_env]
        if job.model != PER_ROW:
            command += ["--model", job.model]
        if job.schema_file:  # the re-asks need the schema the batch asked for
            command += ["--schema", job.schema_file]
        return redact_command([*command, "--resume", "--retry-failed"])

    def _failed_in_output(self) -> int:
        try:
            return recover(self.args.output).failed
        except (OSError, OutputCorrupt):
            return self.failed
