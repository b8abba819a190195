"""The parser of ``llmfanout batch submit|wait|status|cancel``; the commands are in :mod:`._batch`.

Apart so that building the ``llmfanout`` parser (every run does) loads none of the batch
APIs: :mod:`._batch` is imported only when ``batch`` is the command.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._batch._state import ENDPOINTS, PROVIDERS
from ._args import add_backend, add_output, add_quiet, positive_float, positive_int


def _prices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="a JSON price table as `llmfanout run --prices` takes (list prices, USD per "
        "million tokens), to print the cost of the rows written at the batch price (half)",
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


def _schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        metavar="FILE.json",
        help="a JSON Schema: submit asks for it natively (response_format, a forced tool) "
        "and records it in the job's state file; wait validates each answer against it "
        "(no need to give it again; a different one is refused), writing parsed, and "
        "failing rows that do not match with their errors (re-ask them with run --resume "
        "--retry-failed)",
    )


def add_parser(commands: Any) -> None:
    """Add ``batch`` and its subcommands to the ``llmfanout`` subcommands."""

    # Each subcommand declares its own parser (argparse's shape, shared with the other
    # subcommands' add_parser); the options they share are the helpers of ._args.
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
        epilog="The API key comes from OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY "
        "(else GOOGLE_API_KEY), never a flag.",
    )
    submit.add_argument("input", metavar="INPUT", help="the input JSONL file")
    add_output(submit, "the output file")
    submit.add_argument(
        "--provider", choices=PROVIDERS, required=True, help="whose batch API to use"
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
        help='chat (default), or embeddings: rows are {"id", "text"} (as for llmfanout '
        "embed), each text embedded through OpenAI's /v1/embeddings; output rows carry an "
        '"embedding"',
    )
    submit.add_argument("--base-url", metavar="URL", help="the provider's API base URL")
    submit.add_argument(
        "--gemini-input",
        choices=("auto", "file", "inline"),
        default="auto",
        help="Gemini only: auto (default) inlines a batch under the 20 MB request cap and "
        "uploads a bigger one through the Files API; file always uploads; inline never does",
    )
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
        help="bytes per batch (default: the provider's limit: 200 MB OpenAI, 256 MB "
        "Anthropic, 2 GB Gemini (20 MB with --gemini-input inline))",
    )
    _polling(submit, positive_float)
    _prices(submit)
    _schema(submit)
    add_backend(submit)
    add_quiet(submit)
    for name, text in (
        ("wait", "poll until every batch ends, appending one row per input id to OUTPUT"),
        ("status", "show the job's batches and counts"),
        ("cancel", "cancel the job's unfinished batches (then `wait` writes what was done)"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("output", metavar="OUTPUT", help="the output file given to submit")
        action.add_argument(
            "--base-url",
            metavar="URL",
            help="the provider's API base URL (default: its environment variable, else its "
            "own); must be the address the job was submitted to",
        )
        action.add_argument(
            "--api-key-env",
            metavar="NAME",
            help="the environment variable holding the key (default OPENAI_API_KEY or "
            "ANTHROPIC_API_KEY)",
        )
        if name == "wait":
            _polling(action, positive_float)
            _prices(action)
            _schema(action)
        add_backend(action)
        add_quiet(action)
