"""``llmfanout merge DIR -o OUT``: compact a directory of shards, each id once."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._rows._output_rows import (
    OutputCorrupt,
    merge,
)
from ._args import EXIT_OK, UsageError, add_output, add_quiet, check_output


def add_parser(commands: Any) -> None:
    """Add ``merge`` to the ``llmfanout`` subcommands."""
    # Each subcommand declares its own parser (argparse's shape, shared with the other
    # subcommands' add_parser); the options they share are the helpers of ._args.
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
    add_output(merge_command, "the merged JSONL file to write", metavar="OUT")
    add_quiet(merge_command, "print errors only")


def main(args: argparse.Namespace) -> int:
    directory, output = args.directory, args.output
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.exists(directory) else "is not a directory"
        raise UsageError(f"{directory!r} {what}; give the directory holding the shard files")
    check_output(output, directory_ok=False)
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
