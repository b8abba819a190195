"""A progress bar for library runs: an ``on_result`` hook that counts and draws with rich.

Counting a result is a few additions; the bar is redrawn at most every ``refresh``
seconds from the hook itself (no thread, no task), and once more at the end. Where the
output is neither a terminal nor a notebook (a pipe, a log file, CI) nothing is drawn.
"""

from __future__ import annotations

import sys
import time
from importlib.util import find_spec
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .._core._tasks import TaskResult


def _check_total(total: object) -> int | None:
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise ValueError(f"ProgressBar: total is {total!r}; give the number of tasks, or None")
    return total


class ProgressBar:
    """Draws a run's progress: ``executor.execute(tasks, on_result=ProgressBar(len(tasks)))``.

    Counts successes, failures and retries (attempts beyond the first, over finished
    tasks) and shows the rate and the time left. It draws on standard error in a
    terminal and in a Jupyter notebook (rich's display; ``ipywidgets`` makes it live
    there), and is silent elsewhere unless ``enabled=True``. The bar closes itself when
    ``total`` results are counted; with no ``total`` (a stream), use it as a context
    manager or call :meth:`close`. One bar serves one run.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        description: str = "llmfanout",
        file: TextIO | None = None,
        console: Console | None = None,
        enabled: bool | None = None,
        refresh: float = 0.1,
    ) -> None:
        self.total = _check_total(total)
        self.done = 0
        self.ok = 0
        self.failed = 0
        self.retries = 0
        self._refresh = refresh
        self._console = console or Console(file=file if file is not None else sys.stderr)
        if enabled is None:
            enabled = self._console.is_terminal or self._console.is_jupyter
        self.enabled = enabled
        # A notebook redraws a bar in place only through ipywidgets; without it, say the
        # counts once at the end rather than warn on every redraw.
        self._live = not self._console.is_jupyter or find_spec("ipywidgets") is not None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._drawn_at = 0.0
        self._closed = False
        self._description = description

    def __repr__(self) -> str:
        return f"ProgressBar({self._counts()})"

    def __call__(self, result: TaskResult) -> None:
        """Count one result (the ``on_result`` hook); redraw if the last draw is old."""
        self.done += 1
        if result.success:
            self.ok += 1
        else:
            self.failed += 1
        if result.attempts > 1:
            self.retries += result.attempts - 1
        if not self.enabled or self._closed:
            return
        if self._progress is None and self._live:
            self._start()
        if self.total is not None and self.done >= self.total:
            self.close()
            return
        now = time.monotonic()
        if self._progress is not None and now - self._drawn_at >= self._refresh:
            self._draw(now)

    def _start(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
                "[yellow]{task.fields[retries]} retries[/]"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            auto_refresh=False,  # auto-refresh would start a thread; we redraw from the hook
            # Leave sys.stdout alone: a run that ends by an exception before close() must
            # not leave it redirected.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(
            self._description, total=self.total, ok=0, failed=0, retries=0
        )
        self._progress.start()

    def _draw(self, now: float) -> None:
        assert self._progress is not None and self._task is not None
        self._drawn_at = now
        self._progress.update(
            self._task, completed=self.done, ok=self.ok, failed=self.failed, retries=self.retries
        )
        self._progress.refresh()

    def close(self) -> None:
        """Draw the final counts and stop drawing. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._draw(time.monotonic())
            self._progress.stop()
        elif self.enabled and not self._live and self.done:
            self._console.print(f"{self._description}: {self._counts()}")

    def _counts(self) -> str:
        total = "?" if self.total is None else self.total
        return f"{self.done}/{total}: {self.ok} ok, {self.failed} failed, {self.retries} retries"

    def __enter__(self) -> ProgressBar:
        if self.enabled and self._live and self._progress is None:
            self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
