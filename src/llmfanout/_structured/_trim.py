"""Validation errors cut to what a model (and a log line) can use: few, short, no repeats."""

from __future__ import annotations

from collections.abc import Iterable

MAX_ERRORS = 10
MAX_CHARS = 200


def trim_errors(
    errors: Iterable[str], *, limit: int = MAX_ERRORS, width: int = MAX_CHARS
) -> tuple[str, ...]:
    """At most ``limit`` distinct errors of at most ``width`` characters each, in order;
    a last line says how many more there were."""
    kept: list[str] = []
    seen: set[str] = set()
    extra = 0
    for error in errors:
        line = " ".join(error.split())
        if len(line) > width:
            line = line[: width - 3] + "..."
        if line in seen:
            continue
        seen.add(line)
        if len(kept) < limit:
            kept.append(line)
        else:
            extra += 1
    if extra:
        kept.append(f"... and {extra} more error{'s' if extra > 1 else ''}")
    return tuple(kept)
