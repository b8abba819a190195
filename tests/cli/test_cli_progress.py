"""The CLI's progress display: plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from llmfanout._cli import _display as _progress
from llmfanout._cli._display import (
    Display,
    PlainDisplay,
    RichDisplay,
    make_display,
    plain_line,
    terminal_console,
)
from llmfanout._cli._main import main

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def counted(display: Display, ok: int, failed: int) -> Display:
    for _ in range(ok):
        display.record(True, 10)
    for _ in range(failed):
        display.record(False, None)
    return display


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


_ENV_VALUES = st.one_of(st.none(), st.sampled_from(["", "0", "1", "2", "yes"]))


@given(tty=st.booleans(), tty_compatible=_ENV_VALUES, force_color=_ENV_VALUES)
def test_terminal_console_agrees_with_rich(
    tty: bool, tty_compatible: str | None, force_color: str | None
) -> None:
    # The check that spares importing rich off a terminal says yes exactly when rich would.
    env = {"TTY_COMPATIBLE": tty_compatible, "FORCE_COLOR": force_color}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        ours = terminal_console(_Stream(tty))
        theirs = Console(file=_Stream(tty)).is_terminal
        assert (ours is not None) == theirs


def test_terminal_console_off_a_terminal_is_none() -> None:
    assert terminal_console(io.StringIO()) is None
    closed = io.StringIO()
    closed.close()
    assert terminal_console(closed) is None


def test_plain_line_has_every_count() -> None:
    display = counted(Display(10), ok=3, failed=1)
    display.started -= 2.0  # as if the run began two seconds ago
    line = plain_line(display)
    assert re.fullmatch(
        r"llmfanout: 4/10 rows \(40%\), 3 ok, 1 failed, 2\.0 rows/s, 30 tokens, ETA 3s", line
    ), line


def test_plain_line_before_anything_is_done() -> None:
    assert plain_line(Display(5)).endswith(
        "0/5 rows (0%), 0 ok, 0 failed, 0.0 rows/s, 0 tokens, ETA -"
    )


async def test_plain_display_writes_a_line_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "PLAIN_EVERY", 0.01)
    written = anyio.Event()

    class Stream(io.StringIO):
        def flush(self) -> None:
            if self.getvalue().count("\n") >= 2:
                written.set()

    stream = Stream()
    display = PlainDisplay(3, stream)
    display.record(True, 5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(display.run)
        await written.wait()
        tg.cancel_scope.cancel()
    assert stream.getvalue().startswith("llmfanout: 1/3 rows (33%), 1 ok, 0 failed")


def test_rich_display_shows_the_counts() -> None:
    screen = io.StringIO()
    display = RichDisplay(10, Console(file=screen, force_terminal=True, width=120))
    display.start()
    counted(display, ok=2_000, failed=1)
    display.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
    assert "2001/10" in text and "2000 ok 1 failed" in text and "20.0k tokens" in text


def test_make_display_picks_by_terminal() -> None:
    assert type(make_display(1, quiet=True, stream=io.StringIO())) is Display
    assert type(make_display(1, quiet=False, stream=io.StringIO())) is PlainDisplay


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_cli_prints_plain_progress_off_a_terminal(
    tmp_path: Path,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(_progress, "PLAIN_EVERY", 0.05)
    source, output = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": "p"}) + "\n" for i in range(40)))
    args = ["run", str(source), "-o", str(output), "--echo-latency", "0.02", "--concurrency", "2"]
    assert main([*args, "--backend", backend]) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if re.match(r"llmfanout: \d+/40 rows", line)]
    assert progress, lines  # the run takes ~0.4 s: several lines at 0.05 s
    assert all(" ok, 0 failed, " in line for line in progress)
