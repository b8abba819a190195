"""What every subcommand shares: exit statuses, the one ``UsageError``, argument types and
path checks, each worded for a command-line user."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

from .._base._checks import TRIO_HINT
from .._report._cost import Price, load_prices
from .._rows._output_rows import is_stream
from . import _log

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
VERBOSE_HELP = (
    "log to standard error: -v notable events, -vv also every failed attempt and retry "
    f"(or set {_log.ENV}=info|debug); API keys are never printed"
)


class UsageError(Exception):
    """Bad options or bad input: the run exits with status 2 having sent nothing."""


_SECRET_FLAG = re.compile(r"^--?[\w-]*(key|token|password|passwd|secret)$", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with the password of a URL in it replaced by ``***`` (else unchanged)."""
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redact_command(command: list[str]) -> str:
    """A command line fit to record or print: URL passwords and secret flags' values hidden.

    ``--api-key X``, ``--token=X`` and the like (any flag named for a key, token, password
    or secret, but not ``--api-key-env``, which names a variable) show ``***``.
    """
    shown: list[str] = []
    hide_next = False
    for word in command:
        if hide_next:
            shown.append("***")
            hide_next = False
            continue
        flag, equals, _ = word.partition("=")
        if word.startswith("-") and _SECRET_FLAG.match(flag):
            if equals:
                shown.append(f"{flag}=***")
            else:
                shown.append(word)
                hide_next = True
            continue
        shown.append(redact_url(word))
    return shlex.join(shown)


# -- options several subcommands take, worded once -----------------------------------------


def add_output(parser: argparse.ArgumentParser, text: str, *, metavar: str = "OUTPUT") -> None:
    """``-o/--output``, required."""
    parser.add_argument("-o", "--output", required=True, metavar=metavar, help=text)


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend asyncio|trio``."""
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help=f"the event loop (default asyncio; trio needs: {TRIO_HINT})",
    )


def add_rate_caps(parser: argparse.ArgumentParser) -> None:
    """``--rpm`` and ``--tpm``, the client-side caps."""
    parser.add_argument("--rpm", type=positive_float, metavar="N", help="requests per minute cap")
    parser.add_argument("--tpm", type=positive_float, metavar="N", help="tokens per minute cap")


def add_quiet(parser: argparse.ArgumentParser, text: str = "no progress; errors only") -> None:
    """``--quiet``."""
    parser.add_argument("--quiet", action="store_true", help=text)


def check_backend(args: argparse.Namespace) -> None:
    """Raise a :class:`UsageError` saying how to install trio when it is asked for and missing."""
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise UsageError(f"--backend trio needs trio; install it with: {TRIO_HINT}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JSON object; give e.g. '{{\"temperature\": 0}}'"
        )
    return value


def price_table(args: argparse.Namespace) -> dict[str, Price] | None:
    """The table ``--prices`` names, else None; a :class:`UsageError` naming the file and
    the model and field at fault (run, embed and batch read it alike)."""
    path = getattr(args, "prices", None)
    if path is None:
        return None
    try:
        return load_prices(path)
    except (TypeError, ValueError) as exc:  # load_prices turns an OSError into a ValueError
        raise UsageError(f"--prices: {exc}") from None


def check_input(path: str) -> None:
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


def check_output(path: str, *, directory_ok: bool) -> None:
    """Raise a :class:`UsageError` naming the fix for an output that cannot be written.

    A pipe or a device (``-o FIFO``, ``-o /dev/stdout``) is fine to write to, but cannot
    be read back: with ``directory_ok`` (``--resume``) it is refused.
    """
    if is_stream(path):
        if directory_ok:
            raise UsageError(
                f"output {path!r} is a pipe or a device, not a regular file; --resume reads "
                "the output back, which needs a regular file (or a directory of shards)"
            )
        if not os.access(path, os.W_OK):
            raise UsageError(f"cannot write to the output {path!r} (permission denied)")
        return
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


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
