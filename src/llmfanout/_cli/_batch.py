"""``llmfanout batch submit|wait|status|cancel``: provider batch jobs from the command line.

``submit`` checks every input row first (a bad one: exit 2, line numbers, nothing sent),
then hands the rows to :func:`~llmfanout._batch._submit.submit_batch`, which records the
job in ``OUTPUT.batch.json``. ``wait``, ``status`` and ``cancel`` (:mod:`._batch_jobs`) work
on the job that file records. Killed at any moment, the same command carries on: no batch
is created twice, no row written twice, a torn last line is cut.

Exit status: 0 done (every row succeeded, for wait), 1 some rows failed or the provider
refused, 2 bad usage or bad input, 3 another process holds the job, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import IO

import anyio

from .._batch._api import BatchAPI
from .._batch._jobs import BatchJob, BatchPart, api_for
from .._batch._plan import plan_parts
from .._batch._state import BatchStateError, state_path
from .._batch._submit import submit_batch
from .._core._tasks import LLMTask
from .._rows._embed import embedding_tasks
from .._rows._embed import read_rows as spooled_rows
from .._rows._embed import scan as scan_embed_rows
from .._rows._input_rows import BadRow, numbered_lines, parse_row, read_rows, scan
from .._rows._lock import Busy, hold
from .._rows._structured_rows import with_request
from .._rows._tasks import tagged_tasks
from .._structured._schema import Schema, schema_for
from ..errors import ProviderError
from ..providers._http import HTTPProvider
from ._args import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_backend,
    price_table,
)
from ._batch_jobs import (
    PER_ROW,
    polling_of,
    provider_for,
    wait,
    wait_command,
    with_job,
)
from ._structured import load_schema

MAX_BAD_SHOWN = 50
MAX_REPEATS_SHOWN = 20  # as llmfanout embed shows


def main(args: argparse.Namespace) -> int:
    """Run ``llmfanout batch ...``; the exit status."""
    try:
        check_backend(args)
        command = args.batch_command
        args.price_table = price_table(args)  # a bad table stops us before any work
        given = getattr(args, "schema", None)
        args.schema_json = load_schema(given)
        args.schema_file = None if given is None else os.path.abspath(given)
        schema = args.schema_json
        args.schema_object = None if schema is None else schema_for(schema=schema)
        if command == "status":  # reads only: fine beside a running wait
            return with_job(args)
        try:
            # One lock for the output, shared with `llmfanout run`: one writer at a time.
            with ExitStack() as stack:
                try:
                    stack.enter_context(hold(args.output, f"llmfanout batch {command}"))
                except OSError as exc:
                    raise UsageError(
                        f"cannot lock the output {args.output!r} ({exc.strerror})"
                    ) from None
                if command == "submit":
                    return _submit(args)
                return with_job(args)
        except Busy as exc:
            if command != "cancel":
                raise
            # A wait (or submit) owns the job: tell the provider, leave the state to it.
            return with_job(args, holder=exc.holder)
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


# -- submit ------------------------------------------------------------------------------


def _api_for(args: argparse.Namespace, provider: HTTPProvider) -> BatchAPI:
    if args.gemini_input != "auto" and args.provider != "gemini":
        raise UsageError(f"--gemini-input is for --provider gemini, not {args.provider}")
    try:
        return api_for(provider, None, args.endpoint, args.gemini_input)
    except TypeError as exc:
        raise UsageError(f"--endpoint {args.endpoint}: {exc}") from None


def _check_rows(args: argparse.Namespace, source: IO[bytes], provider: HTTPProvider) -> int:
    """Validate every row as the batch API will get it; raise ``UsageError`` listing bad lines."""
    found = scan(source)
    bad = {number: item.reason for number, item in found.bad.items()}
    api = _api_for(args, provider)
    missing_model = None
    for number, raw in numbered_lines(source):
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
    _refuse(args.input, bad)
    if missing_model is not None:
        raise UsageError(
            f"--model is not given and input line {missing_model} names no model; pass "
            "--model, or give every row a model in its params (or batch body)"
        )
    return found.rows


def _refuse(name: str, bad: dict[int, str]) -> None:
    """Say which lines are bad and raise ``UsageError``, if any is."""
    if not bad:
        return
    for shown, number in enumerate(sorted(bad)):
        if shown == MAX_BAD_SHOWN:
            print(f"... and {len(bad) - shown} more bad lines", file=sys.stderr)
            break
        print(f"{name}:{number}: {bad[number]}", file=sys.stderr)
    raise UsageError(f"{len(bad)} bad input line(s); nothing was sent. Fix them and run again")


def _check_embedding_rows(args: argparse.Namespace, source: IO[bytes], spool: IO[bytes]) -> int:
    """Check ``llmfanout embed``'s ``{"id", "text"}`` rows, spooled for the submit; how many.

    A repeated id is embedded once (its first row), as ``llmfanout embed`` does.
    """
    if not args.model:
        raise UsageError("--endpoint embeddings needs --model (embedding rows name no model)")
    if args.schema_object is not None:
        raise UsageError("--schema goes with --endpoint chat; embeddings have no schema")
    found = scan_embed_rows(source, set(), spool)
    _refuse(args.input, {b.line: b.reason for b in found.bad})
    for note in found.repeat_notes(MAX_REPEATS_SHOWN):
        print(note, file=sys.stderr)
    return found.to_run


def _embedding_tasks(spool: IO[bytes]) -> Iterator[LLMTask]:
    return embedding_tasks(spooled_rows(spool))


def _tasks(source: IO[bytes], schema: Schema | None) -> Iterator[LLMTask]:
    try:
        yield from tagged_tasks(read_rows(source, {}, None), schema)
    except BadRow as exc:  # checked a moment ago: the file changed since
        raise UsageError(f"the input changed while it was read ({exc.reason})") from None


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
    provider = provider_for(
        args.provider, model, args.base_url, args.api_key_env, required=not args.dry_run
    )
    with ExitStack() as stack:
        source = stack.enter_context(open(args.input, "rb"))
        tasks: Callable[[], Iterator[LLMTask]]
        if args.endpoint == "embeddings":  # llmfanout embed's rows
            _api_for(args, provider)  # embeddings batches are OpenAI's only
            spool = stack.enter_context(tempfile.TemporaryFile())
            rows = _check_embedding_rows(args, source, spool)
            tasks = partial(_embedding_tasks, spool)
        else:
            rows = _check_rows(args, source, provider)
            tasks = partial(_tasks, source, args.schema_object)
        if not rows:
            raise UsageError(f"{args.input} holds no rows")
        if args.dry_run:
            return _dry_run(args, provider, tasks, rows)
        if not args.quiet:
            what = "carrying on with" if resuming else "submitting"
            print(
                f"llmfanout: {what} {rows} rows as {args.provider} batches (model {model}); "
                f"the job is recorded in {path}",
                file=sys.stderr,
                flush=True,
            )
        job = anyio.run(
            partial(_do_submit, args, provider, tasks, path, os.path.abspath(args.input)),
            backend=args.backend,
        )
    if not args.quiet:
        ids = ", ".join(str(part.batch_id) for part in job.parts)
        print(
            f"llmfanout: submitted {rows} rows in {len(job.parts)} batch(es): {ids}. Results "
            f"within 24 hours; collect them with: {wait_command(args.output, job)}",
            file=sys.stderr,
        )
    if args.wait:
        return wait(args, job, provider)
    return EXIT_OK


def _dry_run(
    args: argparse.Namespace,
    provider: HTTPProvider,
    tasks: Callable[[], Iterator[LLMTask]],
    rows: int,
) -> int:
    """Plan the batches as submit would, and say what they would be; nothing is sent."""
    api = _api_for(args, provider)
    requests = args.max_requests or api.max_requests
    size = args.max_bytes or api.part_bytes()
    with tempfile.TemporaryDirectory() as folder:
        try:
            parts = plan_parts(api, tasks(), "dry00run", folder, requests, size)
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
    args: argparse.Namespace,
    provider: HTTPProvider,
    tasks: Callable[[], Iterator[LLMTask]],
    path: str,
    name: str,
) -> BatchJob:
    async with provider:
        return await submit_batch(
            provider,
            tasks(),
            state=path,
            max_requests=args.max_requests,
            max_bytes=args.max_bytes,
            polling=polling_of(args),
            input_name=name,
            api_key_env=args.api_key_env,
            on_part=None if args.quiet else _created,
            endpoint=args.endpoint,
            gemini_input=args.gemini_input,
            schema=args.schema_json,
            schema_file=args.schema_file,
        )


def _created(part: BatchPart) -> None:
    print(
        f"llmfanout: batch {part.index + 1} ({part.rows} rows) is {part.batch_id}",
        file=sys.stderr,
        flush=True,
    )
