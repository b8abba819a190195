"""The command line's logging: ``-v``/``--verbose`` and ``LLMFANOUT_LOG`` raise the
``llmfanout`` logger's level, and every line it prints has the API keys blanked out.

The library itself only logs (to ``logging.getLogger("llmfanout")``) and never
configures logging: an application decides where its log goes. The CLI is such an
application, so it does here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

ENV = "LLMFANOUT_LOG"
_NAMES = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_NAMES |= {"error": logging.ERROR, "critical": logging.CRITICAL}


def level_from(verbose: int, env: str | None) -> int | None:
    """The level asked for: ``-v`` INFO, ``-vv`` DEBUG, or ``LLMFANOUT_LOG`` (a level name or
    number), whichever says more; None when neither asks. ``ValueError`` for a bad value."""
    levels = []
    if verbose:
        levels.append(logging.INFO if verbose == 1 else logging.DEBUG)
    if env is not None and env.strip():
        text = env.strip().lower()
        if text.isdigit():
            levels.append(int(text))
        elif text in _NAMES:
            levels.append(_NAMES[text])
        else:
            raise ValueError(
                f"{ENV} is {env!r}; use debug, info, warning or error (or a level number)"
            )
    return min(levels) if levels else None


class _Scrubbed(logging.Formatter):
    """Formats a record, then blanks the keys out of the whole line, traceback included."""

    def __init__(self, scrubs: Iterable[Callable[[str], str]]) -> None:
        super().__init__("llmfanout %(levelname)s %(name)s: %(message)s")
        self._scrubs = tuple(scrubs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for scrub in self._scrubs:
            text = scrub(text)
        return text


def configure(
    verbose: int,
    *,
    scrubs: Iterable[Callable[[str], str]],
    stream: TextIO | None = None,
    env: str | None = None,
) -> int | None:
    """Send the ``llmfanout`` logger's records at the level asked for to standard error.

    ``scrubs`` blank secrets out of each formatted line. Returns the level set, or None
    when nothing was asked (logging is then left as it was). ``env`` defaults to the
    ``LLMFANOUT_LOG`` environment variable; raises ``ValueError`` for a bad value.
    """
    level = level_from(verbose, os.environ.get(ENV) if env is None else env)
    if level is None:
        return None
    logger = logging.getLogger("llmfanout")
    for old in [h for h in logger.handlers if isinstance(h.formatter, _Scrubbed)]:
        logger.removeHandler(old)  # configured again in this process (main() called twice)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Scrubbed(scrubs))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # one copy of each line, whatever the root logger does
    return level
