"""``llmfanout example``: write one of the example input files shipped with llmfanout."""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import os
import shlex
import sys
from typing import Any

from .._rows._output_rows import is_stream
from ._args import EXIT_OK, UsageError, check_output

EXAMPLE_FILE = "llmfanout example -o prompts.jsonl"
EXAMPLE = "llmfanout run prompts.jsonl -o results.jsonl --resume"
EXAMPLES = {"prompts": "prompts.jsonl", "batch": "openai_batch.jsonl"}  # in llmfanout/examples


def add_parser(commands: Any) -> None:
    """Add ``example`` to the ``llmfanout`` subcommands."""
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


def main(args: argparse.Namespace) -> int:
    text = (importlib.resources.files("llmfanout") / "examples" / EXAMPLES[args.name]).read_bytes()
    if args.output is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return EXIT_OK
    output = args.output
    check_output(output, directory_ok=False)
    if os.path.exists(output) and not is_stream(output):
        with open(output, "rb") as file:
            if file.read() != text:
                raise UsageError(
                    f"{output} exists and holds something else; choose another file name"
                )
        # already there: running the same command twice is fine
    else:
        with open(output, "wb") as file:
            file.write(text)
    rows = text.count(b"\n")
    print(
        f"llmfanout: wrote {rows} example rows to {output}. Next, run them (the echo provider "
        f"answers locally, no key needed):\n    {_next_command(args.name, output)}",
        file=sys.stderr,
    )
    return EXIT_OK


def _next_command(name: str, output: str) -> str:
    stem = os.path.splitext(os.path.basename(output))[0] or "example"
    results = os.path.join(os.path.dirname(output), f"{stem}-results.jsonl")
    if os.path.basename(output) == "prompts.jsonl" and name == "prompts":
        results = os.path.join(os.path.dirname(output), "results.jsonl")
    return shlex.join(["llmfanout", "run", output, "-o", results, "--resume"])
