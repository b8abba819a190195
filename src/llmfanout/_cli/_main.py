"""The ``llmfanout`` command: the parser of every subcommand, and dispatch to its module.

Exit status: 0 every row succeeded, 1 some failed, 2 bad usage or bad input,
130 interrupted (143 for SIGTERM); ``batch`` adds 3 (the output is busy).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from .._base._version import VERSION
from .._rows._spec import FALLBACK_KEY_VARIABLES, KEY_VARIABLES, scrubber
from . import _batch_args, _cache, _embed, _example, _log, _merge, _run
from ._args import EXIT_USAGE, VERBOSE_HELP, UsageError
from ._example import EXAMPLE, EXAMPLE_FILE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``llmfanout``."""
    parser = argparse.ArgumentParser(
        prog="llmfanout",
        description="Run many LLM calls concurrently from a JSONL file.",
        epilog=f"Try: {EXAMPLE_FILE} && {EXAMPLE}",
    )
    parser.add_argument("--version", action="version", version=f"llmfanout {VERSION}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _run.add_parser(commands)
    _merge.add_parser(commands)
    _example.add_parser(commands)
    _batch_args.add_parser(commands)
    _cache.add_parser(commands)
    _embed.add_parser(commands)
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
        from . import _batch  # the batch APIs load only for this command

        return _batch.main(args)
    if args.command not in ("run", "merge", "example", "cache", "embed"):
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "merge":
            return _merge.main(args)
        if args.command == "example":
            return _example.main(args)
        if args.command == "cache":
            return _cache.main(args)
        if args.command == "embed":
            return _embed.main(args, argv)
        return _run.main(args, argv)
    except UsageError as exc:
        print(f"llmfanout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # while checking the input
        print("llmfanout: interrupted before anything was sent", file=sys.stderr)
        return 128 + signal.SIGINT


def _key_scrubs(args: argparse.Namespace) -> list[Callable[[str], str]]:
    """Blank out every API key the environment holds, whichever the run uses."""
    names = {
        *KEY_VARIABLES.values(),
        *FALLBACK_KEY_VARIABLES.values(),
        getattr(args, "api_key_env", None) or "",
    }
    return [scrubber(os.environ.get(name, "").strip()) for name in sorted(names) if name]
