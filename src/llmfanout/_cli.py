"""The ``llmfanout`` command: ``llmfanout run INPUT.jsonl -o OUTPUT.jsonl``.

A run is: check the options, read what the output already holds (``--resume``),
validate the whole input (nothing is sent if a line is bad), then stream the rows
through a :class:`ParallelLLMExecutor`, writing each result as it completes. Ctrl-C
(or SIGTERM) cancels the calls in flight; every row finished before it is on disk.

Exit status: 0 every row succeeded, 1 some failed, 2 bad usage or bad input,
130 interrupted (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from typing import IO, Any

import anyio
from anyio.abc import TaskStatus

from . import __version__, _batch_cli
from ._echo import EchoProvider
from ._executor import ParallelLLMExecutor, ResultStream
from ._jsonl import (
    Bad,
    OutputCorrupt,
    Recovered,
    RowWriter,
    Scan,
    bad_row,
    cut_torn_line,
    drop_failed,
    read_rows,
    recover,
    result_row,
    scan,
)
from ._progress import Display, Tally, make_display
from ._ratelimit import RateLimit
from ._retry import BackoffStrategy, RetryConfig
from ._summary import summarize
from ._tasks import LLMTask, TaskResult
from ._types import AsyncLLMProvider

EXAMPLE = "llmfanout run examples/prompts.jsonl -o results.jsonl"
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
MAX_BAD_SHOWN = 50
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad options or bad input: the run exits with status 2 having sent nothing."""


# -- arguments --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def _seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive_float(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``llmfanout``."""
    parser = argparse.ArgumentParser(
        prog="llmfanout",
        description="Run many LLM calls concurrently from a JSONL file.",
        epilog=f"Try: {EXAMPLE}",
    )
    parser.add_argument("--version", action="version", version=f"llmfanout {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="send every row of a JSONL file, write one result row per input row",
        description=(
            "Send every row of INPUT (one JSON object a line: {id, prompt}, {id, messages, "
            "params} or an OpenAI Batch API request) and append one result row per input "
            "row to OUTPUT as each completes. Exit status: 0 all succeeded, 1 some failed, "
            "2 bad usage or bad input (nothing sent), 130 interrupted."
        ),
        epilog=(
            "API keys come from the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY), never "
            f"from a flag. Example: {EXAMPLE}"
        ),
    )
    run.add_argument("input", metavar="INPUT", help="the input JSONL file; - for standard input")
    run.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="the output JSONL file (appended to)",
    )
    run.add_argument(
        "--provider",
        choices=("echo", "openai", "anthropic"),
        default="echo",
        help="echo (default) answers locally with no network, for trying things out",
    )
    run.add_argument(
        "--model",
        help=(
            "the model; a row's own (params.model, or the batch body's) wins. Needed for "
            "openai and anthropic unless every row names one"
        ),
    )
    run.add_argument("--base-url", metavar="URL", help="the provider's API base URL")
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=16,
        metavar="N",
        help="calls in flight at once (default 16)",
    )
    run.add_argument("--rpm", type=_positive_float, metavar="N", help="requests per minute cap")
    run.add_argument("--tpm", type=_positive_float, metavar="N", help="tokens per minute cap")
    run.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        metavar="N",
        help=(
            "attempts per row, the first included (default 3; 1 = no retry). Waits grow "
            "exponentially from 1 s (about 1 s, 2 s, 4 s ..., jittered by 10%%, at most 60 s); "
            "a server's Retry-After is honoured; errors such as a bad request are not retried"
        ),
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="time limit for each attempt (default: the provider's, 60 s for HTTP)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue OUTPUT: skip the ids it records, cut a torn last line, append the rest",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: remove the failed rows from OUTPUT and send those rows again",
    )
    run.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record each bad input line as a failed row and run the rest (default: exit 2)",
    )
    run.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default asyncio; trio needs: pip install 'llmfanout[trio]')",
    )
    run.add_argument(
        "--echo-latency",
        type=_seconds_or_zero,
        default=0.0,
        metavar="SECONDS",
        help="make the echo provider wait this long per call, for demos (default 0)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress and no summary; errors only")
    _batch_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        print(
            f"\nSend every prompt of a JSONL file to an LLM, many at once. Try:\n\n"
            f"    {EXAMPLE}\n\nand see `llmfanout run --help` for the options.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command == "batch":
        return _batch_cli.main(args)
    if args.command != "run":
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, argv)
    except UsageError as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # while checking the input
        print("llmfanout: interrupted before anything was sent", file=sys.stderr)
        return 128 + signal.SIGINT


# -- a run ------------------------------------------------------------------------------


def _check_options(args: argparse.Namespace) -> None:
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise UsageError(
            "--backend trio needs trio; install it with: pip install 'llmfanout[trio]'"
        )
    if args.echo_latency and args.provider != "echo":
        raise UsageError("--echo-latency applies to --provider echo only")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume")
    if args.input != "-" and not os.path.isfile(args.input):
        raise UsageError(f"input file {args.input!r} does not exist (or is not a file)")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of the output file, {folder!r}, does not exist")


def _open_input(args: argparse.Namespace, stack: ExitStack) -> IO[bytes]:
    if args.input != "-":
        return stack.enter_context(open(args.input, "rb"))
    # Standard input cannot be read twice (validate, then run): keep a copy on disk.
    spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115  (the stack closes it)
    shutil.copyfileobj(sys.stdin.buffer, spool)
    return spool


def _recover(args: argparse.Namespace) -> Recovered | None:
    exists = os.path.exists(args.output)
    if not args.resume:
        if exists and os.path.getsize(args.output) > 0:
            raise UsageError(
                f"{args.output} exists and is not empty; pass --resume to continue it, "
                "or choose another output file"
            )
        return None
    if not exists:
        return Recovered()
    try:
        recovered = recover(args.output)
    except OutputCorrupt as exc:
        raise UsageError(str(exc)) from None
    if args.retry_failed:
        recovered.forget_failed()  # the file is rewritten once the input has passed
    return recovered


def _report_bad(args: argparse.Namespace, found: Scan) -> None:
    name = "<stdin>" if args.input == "-" else args.input
    for shown, bad in enumerate(found.bad.values()):
        if shown == MAX_BAD_SHOWN:
            print(f"... and {len(found.bad) - shown} more bad lines", file=sys.stderr)
            break
        print(f"{name}:{bad.line}: {bad.reason}", file=sys.stderr)
    count = len(found.bad)
    raise UsageError(
        f"{count} bad input line{'s' if count > 1 else ''}; nothing was sent. Fix "
        f"{'them' if count > 1 else 'it'}, or pass --skip-invalid to record bad lines as "
        "failed rows and run the rest"
    )


def _model(args: argparse.Namespace, found: Scan) -> str:
    if args.model:
        return str(args.model)
    if args.provider == "echo":
        return "echo"
    if found.line_without_model is not None:
        raise UsageError(
            f"--model is not given and input line {found.line_without_model} names no model; "
            "pass --model, or give every row a model in its params (or batch body)"
        )
    return found.first_model or ""


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    _check_options(args)
    with ExitStack() as stack:
        source = _open_input(args, stack)
        recovered = _recover(args)
        found = scan(source, recovered)
        if found.bad and not args.skip_invalid:
            _report_bad(args, found)
        model = _model(args, found)
        provider = _make_provider(args, model)
        if recovered is not None:  # from here on the output changes
            cut_torn_line(args.output, recovered)
            if args.retry_failed:
                drop_failed(args.output)
        writer = RowWriter(args.output)
        stack.callback(writer.close)
        run = _Run(args, argv, found, recovered, writer, model, provider)
        try:
            return anyio.run(partial(run.execute, source), backend=args.backend)
        except KeyboardInterrupt:  # before the signal handler was in place, or a second ^C
            writer.close()
            return run.interrupted(signal.SIGINT)


def _secrets() -> list[str]:
    values = (os.environ.get(name, "") for name in KEY_VARIABLES.values())
    return [value for value in values if len(value) >= 8]


def _make_provider(args: argparse.Namespace, model: str) -> AsyncLLMProvider:
    """The provider ``--provider`` names; raises :class:`UsageError` if it cannot be made."""
    if args.provider == "echo":
        return EchoProvider(latency=args.echo_latency, model=model, record_calls=False)
    variable = KEY_VARIABLES[args.provider]
    if not os.environ.get(variable, "").strip():
        raise UsageError(
            f"--provider {args.provider} needs an API key in the {variable} environment "
            f"variable (keys are never taken from a flag); set it, e.g. export {variable}=... "
            "(a local server that needs no key accepts any value)"
        )
    from .providers import AnthropicProvider, OpenAIProvider

    options: dict[str, Any] = {"max_connections": args.concurrency}
    if args.base_url:
        options["base_url"] = args.base_url
    if args.timeout:
        options["timeout"] = args.timeout
    cls = OpenAIProvider if args.provider == "openai" else AnthropicProvider
    try:
        return cls(model, **options)
    except (ValueError, TypeError) as exc:  # a bad --base-url or --model, or an unusable key
        raise UsageError(str(exc)) from None


class _Run:
    """One run's moving parts: the writer, the display, and the tallies for the summary."""

    def __init__(
        self,
        args: argparse.Namespace,
        argv: list[str],
        found: Scan,
        recovered: Recovered | None,
        writer: RowWriter,
        model: str,
        provider: AsyncLLMProvider,
    ) -> None:
        self.args = args
        self.argv = argv
        self.found = found
        self.recovered = recovered
        self.writer = writer
        self.model = model
        self.provider = provider
        self.display: Display = make_display(found.to_write, quiet=args.quiet, stream=sys.stderr)
        self.models: dict[str, str] = {}  # tag -> model, for rows in flight that name one
        self.tally = Tally()  # the summary's data, compact
        self.bad_written = 0
        self.signal: int | None = None
        self.write_error: OSError | None = None
        self.scope: anyio.CancelScope | None = None  # cancelled by a signal or a write error
        self.secrets = _secrets()

    def scrub(self, text: str) -> str:
        """``text`` with any API key from the environment blanked out."""
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    # -- per row: keep this short ----------------------------------------------------------

    def tasks(self, rows: Iterator[LLMTask | Bad]) -> Iterator[LLMTask]:
        """The executor's input: valid rows as tasks; bad lines are written on the way."""
        models = self.models
        for row in rows:
            if type(row) is Bad:
                self.write_bad(row)
                continue
            assert isinstance(row, LLMTask)
            overrides = row.config_overrides
            if overrides and "model" in overrides:
                models[row.tag] = str(overrides["model"])
            yield row

    def write(self, line: bytes) -> bool:
        """Append a row to the output; on failure (a full disk) stop the run, return False."""
        if self.write_error is not None:
            return False
        try:
            self.writer.write(line)
        except OSError as exc:
            self.write_error = exc
            if self.scope is not None:
                self.scope.cancel()
            return False
        return True

    def write_result(self, result: TaskResult) -> None:
        """Write one result row and count it."""
        model = self.models.pop(result.tag, self.model)
        if not self.write(result_row(result, model, self.scrub)):
            return
        value = result.value
        self.display.record(result.success, getattr(value, "total_tokens", None))
        self.tally.add(result)

    def write_bad(self, bad: Bad) -> None:
        """Write the failed row for a bad input line (``--skip-invalid``)."""
        if not self.write(bad_row(bad)):
            return
        self.display.record(False, None)
        self.bad_written += 1  # counted as failed rows, but not as tasks in the summary

    # -- the whole run ---------------------------------------------------------------------

    async def execute(self, source: IO[bytes]) -> int:
        """Send the rows, write the results; the exit status."""
        args, found, provider = self.args, self.found, self.provider
        executor = ParallelLLMExecutor(
            provider,
            max_concurrency=args.concurrency,
            default_retry=RetryConfig(
                max_attempts=args.max_attempts, backoff_strategy=BackoffStrategy.JITTER
            ),
            default_timeout=args.timeout,
            # Even with no limits set, a RateLimit makes a 429's Retry-After pause every
            # new call, not only the retry of the call that got it.
            rate_limit=RateLimit(args.rpm, args.tpm),
        )
        rows = read_rows(source, found.bad, self.recovered)
        started = time.monotonic()
        async with AsyncExitStack() as stack:
            if hasattr(provider, "__aenter__"):
                await stack.enter_async_context(provider)  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                self.scope = scope = anyio.CancelScope()
                await tg.start(self.watch_signals, scope)
                self.announce()
                self.display.start()
                tg.start_soon(self.display.run)
                try:
                    with scope:
                        async with executor.stream(self.tasks(rows)) as results:
                            try:
                                async for result in results:
                                    self.write_result(result)
                            finally:
                                if scope.cancel_called:
                                    self.drain(results)
                finally:
                    self.display.stop()
                    tg.cancel_scope.cancel()
        self.writer.close()
        self.report(time.monotonic() - started)
        if self.write_error is not None:
            print(
                f"llmfanout: error: cannot write to {args.output} ({self.write_error}); the "
                f"{self.writer.rows} rows before it are safe there. Fix the cause, then run "
                "the same command with --resume",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if self.signal is not None:
            return self.interrupted(self.signal)
        return EXIT_FAILED if self.failed_in_output() else EXIT_OK

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

    def drain(self, results: ResultStream) -> None:
        """Write the results that finished but were not yet taken when the run was cancelled."""
        for result in results.ready():
            self.write_result(result)

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
            f"llmfanout: {found.to_run} rows to send to {self.args.provider} "
            f"(model {self.model or 'per row'}), {self.args.concurrency} at a time, "
            f"into {self.args.output}{already}{invalid}",
            file=sys.stderr,
            flush=True,
        )

    def report(self, elapsed: float) -> None:
        """The summary, on standard error."""
        if self.args.quiet:
            return
        print(str(summarize(self.tally.results(), elapsed=elapsed)), file=sys.stderr)
        output, written = self.args.output, self.writer.rows
        line = f"llmfanout: wrote {written} rows to {output}"
        if self.recovered is not None and self.recovered.rows:
            line += f", which now holds {written + self.recovered.rows}"
        if self.bad_written:
            line += f"; {self.bad_written} of them for bad input lines"
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
            f"{left} still to do. To finish, run:\n    {shlex.join(command)}",
            file=sys.stderr,
        )
        return 128 + signum
