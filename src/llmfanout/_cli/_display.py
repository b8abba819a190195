"""Run progress on standard error: a rich bar on a terminal, a plain line now and then elsewhere.

Counting a row is a few integer additions; drawing happens in a separate task on a
timer, so the display costs the same at ten rows a second or ten thousand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, TextIO

import anyio

if TYPE_CHECKING:
    from rich.console import Console

PLAIN_EVERY = 5.0  # seconds between plain progress lines
RICH_EVERY = 0.1  # seconds between redraws of the bar


class Display:
    """Counts rows as they are written; draws nothing (``--quiet``). Subclasses draw."""

    every = 0.0

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.ok = 0
        self.failed = 0
        self.tokens = 0
        self.started = time.monotonic()
        self.concurrency: Callable[[], tuple[int, int]] | None = None
        """``(now, most)`` calls in flight, when the run may adapt how many it keeps."""

    def in_flight(self) -> str:
        """``""``, or ``"12/64 in flight"`` while the run keeps fewer calls than it may."""
        if self.concurrency is None:
            return ""
        now, most = self.concurrency()
        return f"{now}/{most} in flight" if now < most else ""

    def record(self, ok: bool, tokens: int | None) -> None:
        """Count one written row."""
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if tokens:
            self.tokens += tokens

    def rate(self) -> float:
        """Rows per second so far."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def start(self) -> None:
        """Begin drawing (the clock for the rate starts here)."""
        self.started = time.monotonic()

    def draw(self) -> None:
        """Show the counts now."""

    def stop(self) -> None:
        """Stop drawing, leaving the last state on screen where that makes sense."""

    async def run(self) -> None:
        """Draw every ``every`` seconds until cancelled."""
        if not self.every:
            return
        while True:
            await anyio.sleep(self.every)
            self.draw()


class PlainDisplay(Display):
    """A line of counts every :data:`PLAIN_EVERY` seconds, for logs and pipes."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total)
        self.stream = stream
        self.every = PLAIN_EVERY

    def draw(self) -> None:
        """Write one progress line."""
        self.stream.write(plain_line(self) + "\n")
        self.stream.flush()


def plain_line(display: Display) -> str:
    """``llmfanout: 1200/10000 rows (12%), 1195 ok, 5 failed, 410.2 rows/s, ...``."""
    total, done, rate = display.total, display.done, display.rate()
    percent = 100 * done / total if total else 100.0
    left = total - done
    eta = f"ETA {_duration(left / rate)}" if rate > 0 and left > 0 else "ETA -"
    slots = display.in_flight()
    return (
        f"llmfanout: {done}/{total} rows ({percent:.0f}%), {display.ok} ok, "
        f"{display.failed} failed, {rate:.1f} rows/s, {display.tokens:,} tokens, {eta}"
        + (f", {slots} (the server is overloaded)" if slots else "")
    )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class RichDisplay(Display):
    """A live bar for a terminal: done/total, ok/failed, rate, tokens, ETA."""

    def __init__(self, total: int, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        super().__init__(total)
        self.every = RICH_EVERY
        # No auto-refresh: that would start a thread; run() redraws from the event loop.
        self.progress = Progress(
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[rate]}/s"),
            TextColumn("{task.fields[tokens]} tokens"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[yellow]{task.fields[slots]}[/]"),
            console=console,
            auto_refresh=False,
        )
        self.task = self.progress.add_task(
            "run", total=total, ok=0, failed=0, rate="0", tokens="0", slots=""
        )

    def start(self) -> None:
        super().start()
        self.progress.start()
        self.draw()

    def draw(self) -> None:
        """Redraw the bar with the current counts."""
        self.progress.update(
            self.task,
            completed=self.done,
            ok=self.ok,
            failed=self.failed,
            rate=f"{self.rate():.0f}",
            tokens=_count(self.tokens),
            slots=self.in_flight(),
        )
        self.progress.refresh()

    def stop(self) -> None:
        self.draw()
        self.progress.stop()


def _count(n: int) -> str:
    """``1234567`` as ``1.2M``: short enough for a bar on an 80-column terminal."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def terminal_console(stream: IO[str]) -> Console | None:
    """A rich console on ``stream`` if rich takes it for a terminal, else None.

    rich (~150 ms to import) is loaded only when it could say yes: ``stream`` is a tty,
    or ``TTY_COMPATIBLE=1`` or a non-empty ``FORCE_COLOR`` tells it to draw anyway (the
    only ways its ``Console.is_terminal`` answers True when not forced by the caller).
    """
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        tty = False
    if not (tty or os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR")):
        return None
    from rich.console import Console

    console = Console(file=stream)
    return console if console.is_terminal else None


def make_display(total: int, *, quiet: bool, stream: TextIO) -> Display:
    """The display for ``stream``: rich on a terminal, plain lines elsewhere, none if quiet."""
    if quiet:
        return Display(total)
    console = terminal_console(stream)
    if console is not None:
        return RichDisplay(total, console)
    return PlainDisplay(total, stream)
