"""``llmfanout batch submit|wait|status|cancel``: provider batch jobs from the command line.

``submit`` checks every input row first (a bad one: exit 2, line numbers, nothing sent),
then hands the rows to :func:`~llmfanout._batch._jobs.submit_batch`, which records the job in
``OUTPUT.batch.json``. ``wait`` polls, and appends one row per input id to OUTPUT as
each provider batch ends: the rows of ``llmfanout run`` plus ``batch_id``. Killed at any
moment, the same command carries on: no batch is created twice, no row written twice,
a torn last line is cut.

Exit status: 0 done (every row succeeded, for wait), 1 some rows failed or the provider
refused, 2 bad usage or bad input, 3 another process holds the job, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from typing import IO, Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._batch._api import BatchAPI
from .._batch._apis import APIS, ENDPOINTS, api_class
from .._batch._jobs import BatchJob, BatchPart, BatchProgress, Polling, _planned, submit_batch
from .._batch._state import BatchStateError, state_path
from .._core._tasks import LLMTask, TaskResult

# The row parser, writer and lock of `llmfanout run`: imported here and nowhere else in
# the batch code.
from .._report._cost import CostTally, Price, load_prices
from .._report._summary import format_usd
from .._rows._input_rows import BadRow, parse_row, scan
from .._rows._job import key_variable
from .._rows._lock import Busy, hold
from .._rows._output_rows import (
    OutputCorrupt,
    RowWriter,
    cut_torn_line,
    encode,
    recover,
    result_row,
)
from .._rows._structured_rows import checked_result, structured_fields, with_request
from .._structured._schema import Schema, schema_for
from ..errors import ProviderError
from ..providers._http import HTTPProvider
from ._args import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    positive_float,
    positive_int,
)
from ._structured import load_schema

MAX_BAD_SHOWN = 50
PER_ROW = "per-row"  # the provider's model when every row names its own


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default asyncio; trio needs: pip install 'llmfanout[trio]')",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress; errors only")


BATCH_DISCOUNT = 0.5  # both providers bill batch requests at half the list price


def _prices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="a JSON price table as `llmfanout run --prices` takes (list prices, USD per "
        "million tokens), to print the cost of the rows written at the batch price (half)",
    )


def _schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        metavar="FILE.json",
        help="a JSON Schema: submit asks for it natively (response_format, a forced tool); "
        "wait validates each answer (give it to both), writing parsed, and failing rows "
        "that do not match with their errors (re-ask them with run --resume --retry-failed)",
    )


def _polling(parser: argparse.ArgumentParser, seconds: Any) -> None:
    parser.add_argument(
        "--poll-interval",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="first wait between polls (default 5); it grows by half each poll",
    )
    parser.add_argument(
        "--max-poll-interval",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="longest wait between polls (default 60); a server's Retry-After may ask more",
    )


def add_parser(commands: Any) -> None:
    """Add ``batch`` and its subcommands to the ``llmfanout`` subcommands."""

    batch = commands.add_parser(
        "batch",
        help="send rows through the provider's batch API: half the price, within 24 hours",
        description=(
            "Provider batch jobs (OpenAI Batch API, Anthropic Message Batches): half the "
            "price of real-time calls, results within 24 hours. The job is recorded in "
            "OUTPUT.batch.json; after a crash, run the same command again."
        ),
    )
    actions = batch.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    submit = actions.add_parser(
        "submit",
        help="check the rows, upload them, create the batches",
        description=(
            "Check every row of INPUT (the formats of llmfanout run), split them into as "
            "few provider batches as its limits allow, and create them. Exit 0 once "
            "submitted; with --wait, go on as `llmfanout batch wait` does."
        ),
        epilog="The API key comes from OPENAI_API_KEY or ANTHROPIC_API_KEY, never a flag.",
    )
    submit.add_argument("input", metavar="INPUT", help="the input JSONL file")
    submit.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="the output file")
    submit.add_argument(
        "--provider", choices=tuple(APIS), required=True, help="whose batch API to use"
    )
    submit.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="the environment variable holding the key (default OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY); its name is recorded for wait, status and cancel",
    )
    submit.add_argument("--model", help="the model; a row's own (params.model) wins")
    submit.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default="chat",
        help="chat (default), or embeddings: each row's prompt embedded through OpenAI's "
        '/v1/embeddings; output rows then carry an "embedding"',
    )
    submit.add_argument("--base-url", metavar="URL", help="the provider's API base URL")
    submit.add_argument("--wait", action="store_true", help="then wait and write the results")
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="check every row and show the batches it would make; send nothing (no key needed)",
    )
    submit.add_argument(
        "--max-requests",
        type=positive_int,
        metavar="N",
        help="requests per batch (default: the provider's limit, 50000 or 100000)",
    )
    submit.add_argument(
        "--max-bytes",
        type=positive_int,
        metavar="N",
        help="bytes per batch (default: the provider's limit, 200 MB or 256 MB)",
    )
    _polling(submit, positive_float)
    _prices(submit)
    _schema(submit)
    _common(submit)
    for name, text in (
        ("wait", "poll until every batch ends, appending one row per input id to OUTPUT"),
        ("status", "show the job's batches and counts"),
        ("cancel", "cancel the job's unfinished batches (then `wait` writes what was done)"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("output", metavar="OUTPUT", help="the output file given to submit")
        if name == "wait":
            _polling(action, positive_float)
            _prices(action)
            _schema(action)
        _common(action)


def main(args: argparse.Namespace) -> int:
    """Run ``llmfanout batch ...``; the exit status."""
    try:
        if args.backend == "trio" and importlib.util.find_spec("trio") is None:
            raise UsageError("--backend trio needs trio: pip install 'llmfanout[trio]'")
        command = args.batch_command
        args.price_table = _price_table(args)  # a bad table stops us before any work
        schema = load_schema(getattr(args, "schema", None))
        args.schema_object = None if schema is None else schema_for(schema=schema)
        if command == "status":  # reads only: fine beside a running wait
            return _with_job(args)
        try:
            # One lock for the output, shared with `llmfanout run`: one writer at a time.
            with hold(args.output, f"llmfanout batch {command}"):
                if command == "submit":
                    return _submit(args)
                return _with_job(args)
        except Busy as exc:
            if command != "cancel":
                raise
            # A wait (or submit) owns the job: tell the provider, leave the state to it.
            return _with_job(args, holder=exc.holder)
    except (UsageError, BatchStateError) as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Busy as exc:
        print(
            f"llmfanout: error: {args.output} is being worked on by another process: "
            f"{exc.holder}. Wait for it to finish (or stop it), then run this again",
            file=sys.stderr,
        )
        return EXIT_BUSY
    except (ProviderError, OSError) as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        print(
            f"llmfanout: the job is safe in {state_path(args.output)}; once the cause is "
            "fixed, run the same command again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"llmfanout: interrupted; the job is safe in {state_path(args.output)}. Run the "
            "same command again to carry on",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT


def _provider(
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
        return cls(model, api_key=key, **options)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _polling_of(args: argparse.Namespace) -> Polling:
    interval = getattr(args, "poll_interval", 5.0)
    cap = getattr(args, "max_poll_interval", 60.0)
    return Polling(interval=interval, max_interval=max(interval, cap))


# -- submit ------------------------------------------------------------------------------


def _check_rows(args: argparse.Namespace, source: IO[bytes], provider: HTTPProvider) -> int:
    """Validate every row as the batch API will get it; raise ``UsageError`` listing bad lines."""
    found = scan(source)
    bad = {number: item.reason for number, item in found.bad.items()}
    api = _api_for(args, provider)
    missing_model = None
    for number, raw in _numbered(source):
        if number in bad:
            continue
        _, _, messages, params = parse_row(raw)
        if not args.model and not (params or {}).get("model") and missing_model is None:
            missing_model = number
        if (params or {}).get("stream"):
            bad[number] = '"stream" is true; a batch returns whole answers: remove it'
            continue
        try:
            api.body(messages, with_request(params, args.schema_object))
        except (TypeError, ValueError) as exc:  # a row's own response_schema
            bad[number] = f"params.response_schema: {exc}"
        except ProviderError as exc:
            bad[number] = str(exc)
    name = args.input
    if bad:
        for shown, number in enumerate(sorted(bad)):
            if shown == MAX_BAD_SHOWN:
                print(f"... and {len(bad) - shown} more bad lines", file=sys.stderr)
                break
            print(f"{name}:{number}: {bad[number]}", file=sys.stderr)
        raise UsageError(f"{len(bad)} bad input line(s); nothing was sent. Fix them and run again")
    if missing_model is not None:
        raise UsageError(
            f"--model is not given and input line {missing_model} names no model; pass "
            "--model, or give every row a model in its params (or batch body)"
        )
    return found.rows


def _api_for(args: argparse.Namespace, provider: HTTPProvider) -> BatchAPI:
    try:
        return api_class(args.provider, args.endpoint)(provider)
    except ValueError as exc:
        raise UsageError(f"--endpoint {args.endpoint}: {exc}") from None


def _numbered(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    source.seek(0)
    for number, raw in enumerate(source, 1):
        if raw.strip():
            yield number, raw


def _tasks(source: IO[bytes], schema: Schema | None) -> Iterator[LLMTask]:
    for _, raw in _numbered(source):
        try:
            key, _, messages, params = parse_row(raw)
        except BadRow as exc:  # checked a moment ago: the file changed since
            raise UsageError(f"the input changed while it was read ({exc.reason})") from None
        yield LLMTask(messages, with_request(params, schema), tag=key)


def _submit(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.input):
        raise UsageError(f"input file {args.input!r} does not exist (or is not a file)")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of the output file, {folder!r}, does not exist")
    path = state_path(args.output)
    resuming = os.path.exists(path)
    if not resuming and os.path.exists(args.output) and os.path.getsize(args.output) > 0:
        raise UsageError(
            f"{args.output} exists and is not empty, and no batch job is recorded for it; "
            "choose another output file"
        )
    model = args.model or PER_ROW
    provider = _provider(
        args.provider, model, args.base_url, args.api_key_env, required=not args.dry_run
    )
    with ExitStack() as stack:
        source = stack.enter_context(open(args.input, "rb"))
        rows = _check_rows(args, source, provider)
        if not rows:
            raise UsageError(f"{args.input} holds no rows")
        if args.dry_run:
            return _dry_run(args, provider, source, rows)
        if not args.quiet:
            what = "carrying on with" if resuming else "submitting"
            print(
                f"llmfanout: {what} {rows} rows as {args.provider} batches (model {model}); "
                f"the job is recorded in {path}",
                file=sys.stderr,
                flush=True,
            )
        job = anyio.run(
            partial(_do_submit, args, provider, source, path, os.path.abspath(args.input)),
            backend=args.backend,
        )
    if not args.quiet:
        ids = ", ".join(str(part.batch_id) for part in job.parts)
        print(
            f"llmfanout: submitted {rows} rows in {len(job.parts)} batch(es): {ids}. Results "
            f"within 24 hours; collect them with: llmfanout batch wait {args.output}",
            file=sys.stderr,
        )
    if args.wait:
        return _wait(args, job, provider)
    return EXIT_OK


def _dry_run(args: argparse.Namespace, provider: HTTPProvider, source: IO[bytes], rows: int) -> int:
    """Plan the batches as submit would, and say what they would be; nothing is sent."""
    api = _api_for(args, provider)
    requests = args.max_requests or api.max_requests
    size = args.max_bytes or api.max_bytes
    with tempfile.TemporaryDirectory() as folder:
        try:
            parts = _planned(
                api, _tasks(source, args.schema_object), "dry00run", folder, requests, size
            )
        except ValueError as exc:  # a row larger than a whole batch
            raise UsageError(str(exc)) from None
    print(
        f"llmfanout: dry run: {rows} rows would go to {args.provider} in {len(parts)} "
        f"batch(es) of at most {requests} requests and {size} bytes:"
    )
    for part in parts:
        print(f"  batch {part.index + 1}: {part.rows} rows, {part.size / 1e6:.1f} MB")
    print("nothing was sent; run again without --dry-run to submit")
    return EXIT_OK


async def _do_submit(
    args: argparse.Namespace, provider: HTTPProvider, source: IO[bytes], path: str, name: str
) -> BatchJob:
    async with provider:
        return await submit_batch(
            provider,
            _tasks(source, args.schema_object),
            state=path,
            max_requests=args.max_requests,
            max_bytes=args.max_bytes,
            polling=_polling_of(args),
            input_name=name,
            api_key_env=args.api_key_env,
            on_part=None if args.quiet else _created,
            endpoint=args.endpoint,
        )


def _created(part: BatchPart) -> None:
    print(
        f"llmfanout: batch {part.index + 1} ({part.rows} rows) is {part.batch_id}",
        file=sys.stderr,
        flush=True,
    )


# -- wait, status, cancel ----------------------------------------------------------------


def _with_job(args: argparse.Namespace, holder: str | None = None) -> int:
    job = BatchJob.load(state_path(args.output), polling=_polling_of(args))
    try:
        provider = _provider(job.provider, job.model, job.base_url, job.api_key_env)
    except UsageError:
        if args.batch_command != "status":
            raise
        # No key here: what was last seen is still worth showing.
        print(_status_text(args.output, job, job.progress()))
        print("  (as last seen: set the API key to ask the provider for fresh counts)")
        return EXIT_OK
    if args.batch_command == "wait":
        return _wait(args, job, provider)
    if args.batch_command == "cancel":
        record = holder is None
        progress = anyio.run(partial(_cancel, job, provider, record), backend=args.backend)
        then = (
            f"the process holding the job ({holder}) collects what was done"
            if holder is not None
            else f"collect everything with: llmfanout batch wait {args.output}"
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
    if not job.submitted and not job.cancelled:
        lines.append("  the submit did not finish: run the same submit command again")
    elif not all(part.collected for part in job.parts):
        lines.append(f"  collect the results with: llmfanout batch wait {output}")
    return "\n".join(lines)


def _wait(args: argparse.Namespace, job: BatchJob, provider: HTTPProvider) -> int:
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
        waiter = _Waiter(args, job, provider, writer, keys)
        return anyio.run(waiter.run, backend=args.backend)


PLAIN_EVERY = 30.0  # seconds at least between plain progress lines (batches take hours)


class _Display:
    """Progress from the provider's counts: a rich bar on a terminal, else a line now and then.

    A plain line is written when the counts changed and ``PLAIN_EVERY`` seconds have passed,
    and once at the end; nothing at all with ``--quiet``.
    """

    def __init__(self, quiet: bool, stream: IO[str]) -> None:
        self.stream = stream
        self.quiet = quiet
        console = Console(file=stream)
        self.bar: Progress | None = None
        if not quiet and console.is_terminal:
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


def _price_table(args: argparse.Namespace) -> dict[str, Price] | None:
    path = getattr(args, "prices", None)
    if path is None:
        return None
    try:
        return load_prices(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--prices: {exc}") from None


class _Waiter:
    """Polls the job and writes each ended part's rows, skipping ids OUTPUT already holds."""

    def __init__(
        self,
        args: argparse.Namespace,
        job: BatchJob,
        provider: HTTPProvider,
        writer: RowWriter,
        keys: set[str],
    ) -> None:
        self.args = args
        self.job = job
        self.provider = provider
        self.writer = writer
        self.keys = keys
        self.redactor = provider._redactor
        self.written = 0
        self.failed = 0
        self.tokens = [0, 0]  # prompt and completion tokens of the rows written
        table = getattr(args, "price_table", None)
        self.cost = None if table is None else CostTally(table)
        self.schema: Schema | None = getattr(args, "schema_object", None)

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
        return self.redactor.text(text)

    async def run(self) -> int:
        job, provider = self.job, self.provider
        self.display = _Display(self.args.quiet, sys.stderr)
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
        return shlex.join([*command, "--resume", "--retry-failed"])

    def _failed_in_output(self) -> int:
        try:
            return recover(self.args.output).failed
        except (OSError, OutputCorrupt):
            return self.failed
