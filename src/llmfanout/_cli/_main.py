"""The ``llmfanout`` command: argument parsing and display over the batch job (``_job``).

``llmfanout run INPUT -o OUTPUT``: check the options and paths, hold the output (one run
at a time), read what it already holds (``--resume``), validate the whole input (nothing
is sent if a line is bad), then run the :class:`~llmfanout._rows._job.Job` and append its rows
as they complete. Ctrl-C (or SIGTERM) cancels the calls in flight; every row finished
before it is on disk. ``llmfanout merge DIR -o OUT`` compacts a directory of shards.

Exit status: 0 every row succeeded, 1 some failed, 2 bad usage or bad input,
130 interrupted (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import TaskStatus

from .. import __version__
from .._report._cost import load_prices
from .._rows._input_rows import Scan, read_rows, scan
from .._rows._job import KEY_VARIABLES, Job, JobError, JobSpec, RowStream, scrubber
from .._rows._lock import Busy, hold
from .._rows._output_rows import (
    OutputCorrupt,
    Recovered,
    RowWriter,
    cut_torn_line,
    drop_failed,
    encode,
    merge,
    recover,
)
from . import _batch as _batch_cli
from . import _log
from ._display import Display, make_display

EXAMPLE_FILE = "llmfanout example -o prompts.jsonl"
EXAMPLE = "llmfanout run prompts.jsonl -o results.jsonl --resume"
EXAMPLES = {"prompts": "prompts.jsonl", "batch": "openai_batch.jsonl"}  # in llmfanout/examples
MAX_BAD_SHOWN = 50
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
VERBOSE_HELP = (
    "log to standard error: -v notable events, -vv also every failed attempt and retry "
    f"(or set {_log.ENV}=info|debug); API keys are never printed"
)


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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JSON object; give e.g. '{{\"temperature\": 0}}'"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``llmfanout``."""
    parser = argparse.ArgumentParser(
        prog="llmfanout",
        description="Run many LLM calls concurrently from a JSONL file.",
        epilog=f"Try: {EXAMPLE_FILE} && {EXAMPLE}",
    )
    parser.add_argument("--version", action="version", version=f"llmfanout {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
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
            f"from a flag. Example: {EXAMPLE_FILE} && {EXAMPLE}"
        ),
    )
    run.add_argument("input", metavar="INPUT", help="the input JSONL file; - for standard input")
    run.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help=(
            "the output JSONL file (appended to); with --resume, also a directory of shard "
            "files (*.jsonl), to which this run adds a shard"
        ),
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
        "--api-key-env",
        metavar="NAME",
        help="the environment variable holding the key (default OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY)",
    )
    run.add_argument(
        "--params",
        type=_json_object,
        metavar="JSON",
        help="""default request parameters under each row's own, e.g. '{"temperature": 0}'""",
    )
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
        "--no-pacing",
        dest="pacing",
        action="store_false",
        help="do not pace by the rate limits the server advertises, nor send fewer calls "
        "while it is overloaded (--rpm/--tpm still apply)",
    )
    run.add_argument(
        "--patience",
        type=_seconds_or_zero,
        default=600.0,
        metavar="SECONDS",
        help="how long a row keeps waiting out rate-limit and overload answers (429, 529, "
        "503 with Retry-After) before it fails; they do not count as attempts "
        "(default 600; 0 = they count like any error)",
    )
    run.add_argument(
        "--max-errors",
        type=_positive_int,
        metavar="N",
        help="stop after N failed rows: nothing new is sent, and rows not sent are left for "
        "--resume (default: never; a refused API key always stops the run)",
    )
    run.add_argument(
        "--shared-limit",
        metavar="URL",
        help="share the --rpm/--tpm budget with every run using this Redis URL "
        "(redis://host:port/db)",
    )
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
        help="time limit for each whole attempt, connecting included (default for HTTP: "
        "600 s a whole attempt, 10 s to connect, 60 s for each read)",
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
    run.add_argument(
        "--prices",
        metavar="FILE",
        help='a JSON price table, {"model": {"input": 2.5, "cached_input": 1.25, "output": 10}} '
        "in USD per million tokens, to print the run's cost in its summary",
    )
    # SUPPRESS: given after "run" it counts on its own; not given, the one before stays.
    run.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP
    )
    merge_command = commands.add_parser(
        "merge",
        help="compact a directory of shard files into one output, each id once",
        description=(
            "Read every shard (*.jsonl) in DIR and write OUT with each id exactly once: a "
            "success wins over a failure, otherwise the first row found. Torn last lines "
            "are skipped."
        ),
    )
    merge_command.add_argument("directory", metavar="DIR", help="the directory of shards")
    merge_command.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the merged JSONL file to write"
    )
    merge_command.add_argument("--quiet", action="store_true", help="print errors only")
    example = commands.add_parser(
        "example",
        help="write an example input file to try llmfanout run on",
        description="Write one of the example input files shipped with llmfanout.",
    )
    example.add_argument(
        "name",
        nargs="?",
        choices=sorted(EXAMPLES),
        default="prompts",
        help="prompts (default): a dozen {id, prompt} and {id, messages} rows; batch: OpenAI "
        "Batch API requests",
    )
    example.add_argument(
        "-o", "--output", metavar="FILE", help="the file to write (default: standard output)"
    )
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
            f"    {EXAMPLE_FILE}\n    {EXAMPLE}\n\nand see `llmfanout run --help` for the "
            "options.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        _log.configure(args.verbose, scrubs=_key_scrubs(args))
    except ValueError as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "batch":
        return _batch_cli.main(args)
    if args.command not in ("run", "merge", "example"):
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "merge":
            return _merge(args)
        if args.command == "example":
            return _example(args)
        return _run(args, argv)
    except UsageError as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # while checking the input
        print("llmfanout: interrupted before anything was sent", file=sys.stderr)
        return 128 + signal.SIGINT


def _key_scrubs(args: argparse.Namespace) -> list[Callable[[str], str]]:
    """Blank out every API key the environment holds, whichever the run uses."""
    names = {*KEY_VARIABLES.values(), getattr(args, "api_key_env", None) or ""}
    return [scrubber(os.environ.get(name, "").strip()) for name in sorted(names) if name]


# -- paths ------------------------------------------------------------------------------


def _check_input(path: str) -> None:
    if path == "-":
        return
    if os.path.isdir(path):
        raise UsageError(f"input {path!r} is a directory; give the input JSONL file")
    if not os.path.exists(path):
        raise UsageError(f"input file {path!r} does not exist")
    if not os.path.isfile(path) and not Path(path).is_fifo():
        raise UsageError(f"input {path!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"input file {path!r} cannot be read (permission denied)")


def _check_output(path: str, *, directory_ok: bool) -> None:
    """Raise a :class:`UsageError` naming the fix for an output that cannot be written."""
    if os.path.isdir(path):
        if not directory_ok:
            example = os.path.join(path, "results.jsonl")
            raise UsageError(
                f"output {path!r} is a directory; name a file in it (-o {example}), or pass "
                "--resume to continue a directory of shard files"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write in the output directory {path!r} (permission denied)")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise UsageError(
            f"the folder of the output file, {folder!r}, does not exist; create it "
            f"(mkdir -p {shlex.quote(folder)}) or choose another output"
        )
    if not os.path.isdir(folder):
        raise UsageError(f"the output's parent {folder!r} is not a directory")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write to the output file {path!r} (permission denied)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in the output's folder {folder!r} (permission denied)")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    if args.shared_limit is not None:
        if args.rpm is None and args.tpm is None:
            raise UsageError("--shared-limit needs --rpm or --tpm: the budget to share")
        _check_shared_limit(args.shared_limit)
    args.price_table = None
    if args.prices is not None:
        try:
            args.price_table = load_prices(args.prices)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--prices: {exc}") from None
    _check_input(args.input)
    _check_output(args.output, directory_ok=args.resume)
    if args.input != "-" and _same_file(args.input, args.output):
        raise UsageError(f"the output {args.output!r} is the input file; choose another output")


def _check_shared_limit(url: str) -> None:
    """Reach the Redis of ``--shared-limit`` before anything is sent.

    Without it every row would fail in turn (a worker that has never heard from Redis
    does not know its share of the budget), and a failed row counts as done on --resume.
    """
    if importlib.util.find_spec("redis") is None:
        raise UsageError(
            "--shared-limit needs the Redis client; install it with: pip install 'llmfanout[redis]'"
        )
    import redis

    from .._flow._redislimit import split_key

    where = _without_password(url)
    try:
        client: Any = redis.Redis.from_url(
            split_key(url)[0], socket_connect_timeout=2, socket_timeout=2
        )
    except ValueError as exc:
        raise UsageError(
            f"--shared-limit {where!r} is not a Redis URL ({exc}); give e.g. "
            "redis://localhost:6379/0"
        ) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise UsageError(
            f"--shared-limit: cannot reach Redis at {where} ({type(exc).__name__}); start it "
            "there or fix the URL. Nothing was sent"
        ) from None
    finally:
        client.close()


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _check_key(args: argparse.Namespace) -> None:
    if args.provider == "echo":
        return
    variable = args.api_key_env or KEY_VARIABLES[args.provider]
    if not os.environ.get(variable, "").strip():
        raise UsageError(
            f"--provider {args.provider} needs an API key in the {variable} environment "
            f"variable (keys are never taken from a flag); set it, e.g. export {variable}=... "
            "(a local server that needs no key accepts any value)"
        )


def _spec(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        provider=args.provider,
        model=args.model or None,
        base_url=args.base_url or None,
        api_key_env=args.api_key_env or None,
        params=args.params,
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        rpm=args.rpm,
        tpm=args.tpm,
        shared_limit=args.shared_limit,
        backend=args.backend,
        echo_latency=args.echo_latency,
        prices=args.price_table,
        patience=args.patience,
        pacing=args.pacing,
        max_errors=args.max_errors,
    )


def _open_input(args: argparse.Namespace, stack: ExitStack) -> IO[bytes]:
    if args.input == "-":
        source: IO[bytes] = sys.stdin.buffer
    else:
        try:
            source = stack.enter_context(open(args.input, "rb"))  # noqa: SIM115
        except OSError as exc:
            message = f"cannot read the input file {args.input!r} ({exc.strerror})"
            raise UsageError(message) from None
        if os.path.isfile(args.input):
            return source
    # A pipe (standard input, <(command)) cannot be read twice (validate, then run): keep
    # a copy on disk.
    spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115  (the stack closes it)
    shutil.copyfileobj(source, spool)
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
    except OSError as exc:
        raise UsageError(f"cannot read the output {args.output!r} ({exc.strerror})") from None
    if args.retry_failed:
        recovered.forget_failed()  # a file is rewritten once the input has passed
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


def _shard_name(directory: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return os.path.join(directory, f"run-{stamp}-{os.getpid()}.jsonl")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    _check_options(args)
    spec = _spec(args)
    with ExitStack() as stack:
        try:
            stack.enter_context(hold(args.output, shlex.join(["llmfanout", *argv])))
        except Busy as exc:
            raise UsageError(
                f"{args.output} is being written by another run: {exc.holder}. Wait for it "
                "to finish (or stop it), then run again with --resume"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot lock the output {args.output!r} ({exc.strerror})") from None
        source = _open_input(args, stack)
        recovered = _recover(args)
        found = scan(source, recovered)
        if found.bad and not args.skip_invalid:
            _report_bad(args, found)
        model = _model(args, found)
        _check_key(args)
        try:
            job = Job(spec, model=model)
        except JobError as exc:  # speak flags: --shared-limit, not shared_limit
            raise UsageError(str(exc).replace("shared_limit:", "--shared-limit:")) from None
        target = args.output
        if os.path.isdir(target):
            target = _shard_name(target)  # shards are only ever added to
        elif recovered is not None:  # from here on the output changes
            cut_torn_line(target, recovered)
            if args.retry_failed:
                drop_failed(target)
        try:
            writer = RowWriter(target)
        except OSError as exc:
            raise UsageError(f"cannot write to {target!r} ({exc.strerror})") from None
        if target != args.output:  # a shard this run added: none at all if it wrote nothing
            stack.callback(_remove_if_empty, target)
        stack.callback(writer.close)  # runs first
        screen = _Screen(args, argv, found, recovered, writer, job)
        rows = read_rows(source, found.bad, recovered)
        try:
            return anyio.run(partial(screen.execute, rows), backend=args.backend)
        except KeyboardInterrupt:  # before the signal handler was in place, or a second ^C
            writer.close()
            return screen.interrupted(signal.SIGINT)


def _remove_if_empty(path: str) -> None:
    if os.path.exists(path) and os.path.getsize(path) == 0:
        os.unlink(path)


class _Screen:
    """What a run shows and where it writes: the writer, the display, signals, messages."""

    def __init__(
        self,
        args: argparse.Namespace,
        argv: list[str],
        found: Scan,
        recovered: Recovered | None,
        writer: RowWriter,
        job: Job,
    ) -> None:
        self.args = args
        self.argv = argv
        self.found = found
        self.recovered = recovered
        self.writer = writer
        self.job = job
        self.display: Display = make_display(found.to_write, quiet=args.quiet, stream=sys.stderr)
        self.signal: int | None = None
        self.write_error: OSError | None = None
        self.scope: anyio.CancelScope | None = None  # cancelled by a signal or a write error
        self.unsent = 0  # rows held back: never sent (the run stopped), or refused the key
        self.refused: str | None = None  # the first answer refusing the key, if any
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
            try:
                with scope:
                    async with self.job.run(rows) as stream:
                        await self.pump(stream, scope)
            finally:
                self.display.stop()
                tg.cancel_scope.cancel()
        self.writer.close()
        self.report(time.monotonic() - started)
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
        else:
            limit = self.args.max_errors
            reason = f'{limit} rows failed (--max-errors {limit}); see their "error"'
            fix = "fix the cause, then run (add --retry-failed to send the failed rows again)"
        print(
            f"llmfanout: stopped early: {reason}\nllmfanout: {self.unsent} rows were not "
            f"written to {self.args.output} and will be sent by --resume; {fix}:\n"
            f"    {shlex.join(command)}",
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
        if self.args.provider != "echo":
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
            f"{left} still to do. To finish, run:\n    {shlex.join(command)}",
            file=sys.stderr,
        )
        return 128 + signum


_HELD = frozenset({"TaskAborted", "AuthenticationError"})
"""Error types of rows not written: never sent (the run stopped), or refused for the key."""


# -- merge ------------------------------------------------------------------------------


def _merge(args: argparse.Namespace) -> int:
    directory, output = args.directory, args.output
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.exists(directory) else "is not a directory"
        raise UsageError(f"{directory!r} {what}; give the directory holding the shard files")
    _check_output(output, directory_ok=False)
    if os.path.exists(output) and os.path.getsize(output) > 0:
        raise UsageError(f"{output} exists and is not empty; choose another output file")
    try:
        merged = merge(directory, output)
    except OutputCorrupt as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot merge into {output!r} ({exc})") from None
    if not args.quiet:
        failed = f", {merged.failed} of them failed" if merged.failed else ""
        print(
            f"llmfanout: merged {merged.read} rows from {directory} into {merged.written} "
            f"rows in {output} (one per id{failed})",
            file=sys.stderr,
        )
    return EXIT_OK


# -- example ----------------------------------------------------------------------------


def _example(args: argparse.Namespace) -> int:
    text = (importlib.resources.files("llmfanout") / "examples" / EXAMPLES[args.name]).read_bytes()
    if args.output is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return EXIT_OK
    output = args.output
    _check_output(output, directory_ok=False)
    if os.path.exists(output):
        with open(output, "rb") as file:
            if file.read() == text:  # already there: running the same command twice is fine
                return EXIT_OK
        raise UsageError(f"{output} exists and holds something else; choose another file name")
    with open(output, "wb") as file:
        file.write(text)
    return EXIT_OK
