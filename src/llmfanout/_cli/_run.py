"""``llmfanout run``: argument checks and display over the row job (``_rows``).

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
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from typing import IO, Any

import anyio

from .._deploy._latency import parse_quantile
from .._deploy._spec import load_deployments
from .._rows._input_rows import Scan, read_rows, scan
from .._rows._job import Job
from .._rows._lock import Busy, hold
from .._rows._output_rows import (
    OutputCorrupt,
    Recovered,
    RowWriter,
    cut_torn_line,
    drop_failed,
    is_stream,
    recover,
)
from .._rows._spec import JobError, JobSpec, key_variable
from . import _observe
from ._args import (
    VERBOSE_HELP,
    UsageError,
    add_backend,
    add_output,
    add_quiet,
    add_rate_caps,
    check_backend,
    check_input,
    check_output,
    json_object,
    positive_float,
    positive_int,
    price_table,
    redact_command,
    redact_url,
    same_file,
    seconds_or_zero,
)
from ._example import EXAMPLE, EXAMPLE_FILE
from ._screen import Screen
from ._structured import add_structured_arguments, check_structured_options

MAX_BAD_SHOWN = 50


def add_parser(commands: Any) -> None:
    """Add ``run`` to the ``llmfanout`` subcommands."""
    # Each subcommand declares its own parser (argparse's shape, shared with the other
    # subcommands' add_parser); the options they share are the helpers of ._args.
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
    add_output(
        run,
        "the output JSONL file (appended to); with --resume, also a directory of shard "
        "files (*.jsonl), to which this run adds a shard",
    )
    run.add_argument(
        "--provider",
        choices=("echo", "openai", "anthropic", "gemini"),
        default="echo",
        help="echo (default) answers locally with no network, for trying things out",
    )
    run.add_argument(
        "--model",
        help=(
            "the model; a row's own (params.model, or the batch body's) wins. Needed for "
            "openai, anthropic and gemini unless every row names one"
        ),
    )
    run.add_argument("--base-url", metavar="URL", help="the provider's API base URL")
    run.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="the environment variable holding the key (default OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY, or GEMINI_API_KEY else GOOGLE_API_KEY)",
    )
    run.add_argument(
        "--params",
        type=json_object,
        metavar="JSON",
        help="""default request parameters under each row's own, e.g. '{"temperature": 0}'""",
    )
    run.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="calls in flight at once (default 16)",
    )
    add_rate_caps(run)
    run.add_argument(
        "--no-pacing",
        dest="pacing",
        action="store_false",
        help="turn off pacing by the rate limits the server advertises in its headers "
        "(for a server whose headers are wrong); --rpm/--tpm still apply, and so does "
        "adaptive concurrency unless --no-adaptive",
    )
    run.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        help="turn off adaptive concurrency (fewer calls in flight while the server answers "
        "429/503/529 with no limits advertised): --concurrency calls stay in flight whatever "
        "it answers; with --no-pacing too, nothing but --rpm/--tpm holds calls back",
    )
    run.add_argument(
        "--patience",
        type=seconds_or_zero,
        default=600.0,
        metavar="SECONDS",
        help="how long a row keeps waiting out rate-limit and overload answers (429, 529, "
        "503 with Retry-After) before it fails; they do not count as attempts "
        "(default 600; 0 = they count like any error)",
    )
    run.add_argument(
        "--max-errors",
        type=positive_int,
        metavar="N",
        help="stop after N failed rows: nothing new is sent, and rows not sent are left for "
        "--resume (default: never; a refused API key always stops the run)",
    )
    run.add_argument(
        "--deployments",
        metavar="FILE",
        help=(
            "send to several deployments as one pool (instead of --provider): a JSON list "
            'of {"name", "provider", "model", "base_url", "api_key_env" (or, for azure, '
            '"azure_ad_token_env"), "weight", "rpm", "tpm", "context_window", '
            '"fallback_for"}; keys by environment variable name only'
        ),
    )
    run.add_argument(
        "--hedge-after",
        metavar="SECONDS|pNN",
        help="with --deployments: send a second copy of a call unanswered after SECONDS, "
        "or past a latency quantile of the recent answers (p95), to another deployment; "
        "the first answer wins (off by default: it costs money)",
    )
    run.add_argument(
        "--shared-limit",
        metavar="URL",
        help="share the --rpm/--tpm budget with every run using this Redis URL "
        "(redis://host:port/db)",
    )
    run.add_argument(
        "--max-attempts",
        type=positive_int,
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
        type=positive_float,
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
    add_backend(run)
    run.add_argument(
        "--echo-latency",
        type=seconds_or_zero,
        default=0.0,
        metavar="SECONDS",
        help="make the echo provider wait this long per call, for demos (default 0)",
    )
    run.add_argument(
        "--cache",
        metavar="PATH|URL",
        help="answer rows asked before from this cache and store new answers in it: a "
        "SQLite file, or redis://host:port/db shared by every worker (see docs/cache.md)",
    )
    run.add_argument(
        "--cache-namespace",
        metavar="NAME",
        help="mixed into every cache key: a new name starts with an empty cache",
    )
    add_quiet(run, "no progress and no summary; errors only")
    run.add_argument(
        "--prices",
        metavar="FILE",
        help='a JSON price table, {"model": {"input": 2.5, "cached_input": 1.25, "output": 10}} '
        "in USD per million tokens, to print the run's cost in its summary",
    )
    _observe.add_arguments(run)
    add_structured_arguments(run)
    # SUPPRESS: given after "run" it counts on its own; not given, the one before stays.
    run.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP
    )


def _check_options(args: argparse.Namespace) -> None:
    check_backend(args)
    if args.echo_latency and args.provider != "echo":
        raise UsageError("--echo-latency applies to --provider echo only")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume")
    args.deployment_specs = None
    if args.deployments is not None:
        try:
            args.deployment_specs = load_deployments(args.deployments)
        except ValueError as exc:
            raise UsageError(f"--deployments {exc}") from None
    elif args.hedge_after is not None:
        raise UsageError("--hedge-after goes with --deployments")
    if args.hedge_after is not None:
        args.hedge_after = _hedge_after(args.hedge_after)
    if args.shared_limit is not None and args.deployment_specs is not None:
        if not any(d.rpm or d.tpm for d in args.deployment_specs):
            raise UsageError(
                "--shared-limit needs an rpm or tpm on some deployment in --deployments: "
                "the budget to share"
            )
        _check_shared_limit(args.shared_limit)
    elif args.shared_limit is not None:
        if args.rpm is None and args.tpm is None:
            raise UsageError("--shared-limit needs --rpm or --tpm: the budget to share")
        _check_shared_limit(args.shared_limit)
    args.price_table = price_table(args)
    check_structured_options(args)
    check_input(args.input)
    check_output(args.output, directory_ok=args.resume)
    if args.input != "-" and same_file(args.input, args.output):
        raise UsageError(f"the output {args.output!r} is the input file; choose another output")


def _hedge_after(given: str) -> float | str:
    """``--hedge-after``'s value: seconds, or a quantile (p95); ``UsageError`` otherwise."""
    if parse_quantile(given) is not None:
        return given
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(
            f"--hedge-after is {given!r}; give seconds > 0 (2.5) or a latency quantile (p95)"
        )
    return seconds


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

    where = redact_url(url)
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


def _check_key(args: argparse.Namespace) -> None:
    if args.provider == "echo" or args.deployment_specs is not None:
        return
    variable = args.api_key_env or key_variable(args.provider)
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
        adaptive=args.adaptive,
        max_errors=args.max_errors,
        cache=args.cache,
        cache_namespace=args.cache_namespace,
        telemetry=args.otel,
        capture_content=args.otel_capture_content,
        deployments=args.deployment_specs,
        hedge_after=args.hedge_after,
        schema=args.schema_object,
        max_reasks=args.max_reasks,
        max_cost_usd=args.max_cost,
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
    if args.deployment_specs is not None:
        return ""  # each deployment names its model
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


def main(args: argparse.Namespace, argv: list[str]) -> int:
    _check_options(args)
    spec = _spec(args)
    with ExitStack() as stack:
        try:
            # A pipe or a device is not locked: nothing is read back from it, and its
            # lock would have to live in its folder (/dev).
            if not is_stream(args.output):
                stack.enter_context(hold(args.output, redact_command(["llmfanout", *argv])))
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
            message = str(exc).replace("shared_limit:", "--shared-limit:")
            if message.startswith("cache:"):
                message = "--" + message
            raise UsageError(message) from None
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
        _observe.start(args, stack)
        screen = Screen(args, argv, found, recovered, writer, job)
        screen.stats = _observe.stats_file(args, job)
        rows = read_rows(source, found.bad, recovered)
        try:
            return anyio.run(partial(screen.execute, rows), backend=args.backend)
        except KeyboardInterrupt:  # before the signal handler was in place, or a second ^C
            writer.close()
            return screen.interrupted(signal.SIGINT)


def _remove_if_empty(path: str) -> None:
    if os.path.exists(path) and os.path.getsize(path) == 0:
        os.unlink(path)
