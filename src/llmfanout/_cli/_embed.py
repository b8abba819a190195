"""``llmfanout embed``: a JSONL file of ``{"id", "text"}`` rows to one vector per id.

Crash-safe and resumable as ``run`` is: the output is locked while a run writes it, rows
are appended whole, a killed run's output is continued with ``--resume`` (each id once),
and every input line is checked before anything is sent.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from typing import IO, Any

import anyio

from .._report._summary import format_usd, unpriced_note
from .._rows._embed import (
    EMBED_PROVIDERS,
    FORMATS,
    INDEX,
    VECTORS,
    EmbedSpec,
    JsonlSink,
    ShardSink,
    bad_row,
    clean_orphans,
    embedding_provider,
    rate,
    read_rows,
    recorded_shards,
    run_embed,
    scan,
)
from .._rows._idset import DEFAULT_CAP, IdSet
from .._rows._input_rows import key_of
from .._rows._lock import Busy, hold
from .._rows._output_rows import OutputCorrupt, cut_torn_line, drop_failed, recover_into
from .._rows._spec import key_variable, scrubber
from ._args import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_backend,
    add_output,
    add_rate_caps,
    check_backend,
    check_input,
    check_output,
    positive_float,
    positive_int,
    price_table,
    same_file,
)

MAX_BAD_SHOWN = 20


def add_parser(commands: Any) -> None:
    """The ``embed`` subcommand's arguments."""
    # Each subcommand declares its own parser (argparse's shape, shared with the other
    # subcommands' add_parser); the options they share are the helpers of ._args.
    embed = commands.add_parser(
        "embed",
        help="embed the text of every row of a JSONL file, many inputs per request",
        description=(
            'Embed a JSONL file of {"id", "text"} rows: many texts per request under the '
            "provider's caps, requests in flight concurrently, one output row per id. "
            "Crash-safe: after a kill, run again with --resume."
        ),
    )
    embed.add_argument("input", metavar="INPUT", help="the input JSONL file ('-' for stdin)")
    add_output(embed, "the output")
    embed.add_argument("--provider", choices=EMBED_PROVIDERS, default="echo")
    embed.add_argument("--model", help="the embedding model (needed for openai and gemini)")
    embed.add_argument("--base-url", metavar="URL", help="the provider's API base URL")
    embed.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="the environment variable holding the key (default OPENAI_API_KEY, or "
        "GEMINI_API_KEY else GOOGLE_API_KEY)",
    )
    embed.add_argument("--dimensions", type=positive_int, metavar="N", help="vector length")
    embed.add_argument(
        "--concurrency", type=positive_int, default=8, metavar="N", help="requests in flight"
    )
    embed.add_argument(
        "--max-inputs",
        type=positive_int,
        metavar="N",
        help="texts per request (default the provider's cap: openai 2048, gemini 100)",
    )
    embed.add_argument(
        "--max-tokens",
        type=positive_int,
        metavar="N",
        help="estimated tokens per request (default the provider's cap: openai 300000)",
    )
    add_rate_caps(embed)
    embed.add_argument("--max-attempts", type=positive_int, default=5, metavar="N")
    embed.add_argument("--timeout", type=positive_float, metavar="SECONDS")
    embed.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl (default): a row per id; npy or parquet: OUTPUT is a directory of "
        f"shards, with {INDEX} naming each id's shard and row",
    )
    embed.add_argument(
        "--vectors",
        choices=VECTORS,
        default="float",
        help="jsonl vectors as float lists (default) or base64 of little-endian float32s",
    )
    embed.add_argument("--shard-rows", type=positive_int, default=10_000, metavar="N")
    embed.add_argument("--resume", action="store_true", help="continue an existing output")
    embed.add_argument(
        "--retry-failed", action="store_true", help="with --resume, run failed rows again"
    )
    embed.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record bad input lines as failed rows and embed the rest",
    )
    embed.add_argument(
        "--prices",
        metavar="FILE",
        help='a JSON price table as `llmfanout run --prices` takes ({"model": {"input": '
        '0.02, "output": 0}}, USD per million tokens), to print the cost in the summary',
    )
    add_backend(embed)


def _spec(args: argparse.Namespace) -> EmbedSpec:
    check_backend(args)
    check_input(args.input)
    check_output(args.output, directory_ok=args.format != "jsonl")
    if args.input != "-" and same_file(args.input, args.output):
        raise UsageError("the output is the input file; choose another output")
    if args.provider != "echo" and not args.model:
        raise UsageError(f"--provider {args.provider} needs --model")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume")
    try:
        # Alike in shape only: each flag handed to its spec field by keyword.
        return EmbedSpec(
            provider=args.provider,
            model=args.model,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            dimensions=args.dimensions,
            concurrency=args.concurrency,
            max_inputs=args.max_inputs,
            max_tokens=args.max_tokens,
            rpm=args.rpm,
            tpm=args.tpm,
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            vectors=args.vectors,
            format=args.format,
            shard_rows=args.shard_rows,
        )
    except ValueError as exc:
        raise UsageError(str(exc).replace("EmbedSpec: ", "--").replace("_", "-")) from None


def _key(args: argparse.Namespace) -> str | None:
    if args.provider == "echo":
        return None
    variable = args.api_key_env or key_variable(args.provider)
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UsageError(
            f"--provider {args.provider} needs an API key in the {variable} environment "
            f"variable (keys are never taken from a flag); set it, e.g. export {variable}=..."
        )
    return key


def _open_input(args: argparse.Namespace, stack: ExitStack) -> IO[bytes]:
    import shutil

    if args.input == "-":
        spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        shutil.copyfileobj(sys.stdin.buffer, spool)
        return spool
    try:
        return stack.enter_context(open(args.input, "rb"))
    except OSError as exc:
        raise UsageError(f"cannot read the input file {args.input!r} ({exc.strerror})") from None


def _record(args: argparse.Namespace) -> str:
    """The file that records the output's rows: the output, or a shard directory's index."""
    if args.format == "jsonl":
        return str(args.output)
    return os.path.join(args.output, INDEX)


def _recover(args: argparse.Namespace, done: IdSet) -> None:
    """Add the ids the output records as done to ``done``; prepare it to be continued."""
    record = _record(args)
    exists = os.path.exists(record) and os.path.getsize(record) > 0
    if not args.resume:
        if exists:
            raise UsageError(
                f"{args.output} exists and is not empty; pass --resume to continue it, or "
                "choose another output"
            )
        return
    if not exists:
        return
    try:
        tail = recover_into(record, done, retry_failed=args.retry_failed)
    except OutputCorrupt as exc:
        raise UsageError(str(exc)) from None
    cut_torn_line(record, tail)
    if args.retry_failed:
        drop_failed(record)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    spec = _spec(args)
    prices = price_table(args)  # a bad table stops us before any work
    if spec.format != "jsonl":
        os.makedirs(args.output, exist_ok=True)
    with ExitStack() as stack:
        try:
            stack.enter_context(hold(args.output, shlex.join(["llmfanout", *argv])))
        except Busy as exc:
            raise UsageError(
                f"{args.output} is being written by another run: {exc.holder}. Wait for it "
                "to finish (or stop it), then run again with --resume"
            ) from None
        source = _open_input(args, stack)
        # The recorded ids and the scan's ids share one budget of DEFAULT_CAP ids in
        # memory (the rest on disk), so a resumed run peaks about as a fresh one does.
        done = stack.enter_context(IdSet(cap=DEFAULT_CAP // 2))
        _recover(args, done)  # ids go in as the output is read: no set of them all
        spool = stack.enter_context(tempfile.TemporaryFile())
        found = scan(source, done, spool, cap=DEFAULT_CAP - done.in_memory)
        # A bad line whose id the output records (its failed row) is not written again.
        bad = [b for b in found.bad if b.id is None or key_of(b.id) not in done]
        if bad and not args.skip_invalid:
            name = "<stdin>" if args.input == "-" else args.input
            for shown in bad[:MAX_BAD_SHOWN]:
                print(f"{name}:{shown.line}: {shown.reason}", file=sys.stderr)
            raise UsageError(
                f"{len(bad)} bad input line{'s' if len(bad) > 1 else ''}; nothing was sent. "
                "Fix them, or pass --skip-invalid to record them as failed rows"
            )
        for note in found.repeat_notes(MAX_BAD_SHOWN):
            print(note, file=sys.stderr)
        key = _key(args)
        try:
            provider = embedding_provider(spec, key)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
        scrub = _scrubber(key)
        sink: JsonlSink | ShardSink
        if spec.format == "jsonl":
            sink = JsonlSink(args.output, spec.vectors, scrub)
        else:
            clean_orphans(args.output, recorded_shards(_record(args)))
            try:
                sink = ShardSink(args.output, spec.format, spec.shard_rows, scrub)
            except ImportError as exc:
                raise UsageError(str(exc)) from None
        stack.callback(sink.close)
        if args.skip_invalid and bad:
            sink.bad([bad_row(b) for b in bad])
        rows = read_rows(spool)
        start = time.monotonic()
        try:
            summary = anyio.run(
                partial(run_embed, spec, provider, rows, sink, prices=prices),
                backend=args.backend,
            )
        except KeyboardInterrupt:
            sink.close()
            print(
                f"llmfanout: interrupted; {sink.written} rows written to {args.output}; run "
                "again with --resume to continue",
                file=sys.stderr,
            )
            return 128 + signal.SIGINT
        seconds = time.monotonic() - start
        print(
            f"embedded {summary.written - summary.failed} of {found.to_run} rows in "
            f"{summary.requests} requests ({rate(summary.written, seconds)} rows/s); "
            f"{summary.failed} failed"
            + (
                ""
                if summary.cost_usd is None
                else f"; cost: {format_usd(summary.cost_usd)}{unpriced_note(summary.unpriced)}"
            ),
            file=sys.stderr,
        )
        return EXIT_FAILED if summary.failed else EXIT_OK


def _scrubber(key: str | None) -> Any:
    return scrubber(key)
