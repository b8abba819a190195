"""``llmfanout run``'s structured-output and spend flags: ``--schema``, ``--max-reasks``,
``--max-cost``; their checks speak flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._structured._schema import schema_for
from ._args import UsageError, positive_float


def whole_or_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


SCHEMA_HELP = (
    "a JSON Schema every answer must match (a row's params.response_schema replaces it); "
    "output rows carry parsed, the validated object. Needs: pip install "
    "'llmfanout[jsonschema]'"
)


def add_structured_arguments(run: Any) -> None:
    """Add the flags to the ``run`` parser."""
    run.add_argument("--schema", metavar="FILE.json", help=SCHEMA_HELP)
    run.add_argument(
        "--max-reasks",
        type=whole_or_zero,
        default=2,
        metavar="N",
        help="follow-up turns carrying the validation errors for an answer that does not "
        "match the schema (default 2; 0 = none)",
    )
    run.add_argument(
        "--max-cost",
        type=positive_float,
        metavar="USD",
        help="stop sending once the spend, with the cost of the calls in flight, would pass "
        "USD; rows not sent are left for --resume (needs --prices)",
    )


def check_structured_options(args: argparse.Namespace) -> None:
    """Read ``--schema`` into ``args.schema_object``; check ``--max-cost`` has prices."""
    if args.max_cost is not None and args.prices is None:
        raise UsageError("--max-cost needs --prices: the price table to count cost by")
    args.schema_object = load_schema(args.schema)


def load_schema(path: str | None) -> dict[str, Any] | None:
    """The JSON Schema in ``--schema FILE`` (None without one); ``UsageError`` if unusable."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            schema = json.load(file)
    except OSError as exc:
        raise UsageError(f"--schema: cannot read {path!r} ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"--schema: {path!r} is not JSON ({exc})") from None
    try:
        schema_for(schema=schema)
    except ImportError as exc:
        raise UsageError(f"--schema: {exc}") from None
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("response_schema ")
        raise UsageError(f"--schema: {path!r} {message}") from None
    return schema  # type: ignore[no-any-return]
