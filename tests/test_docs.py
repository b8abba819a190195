"""Every ```python block in README.md and docs/*.md runs, on both backends.

Blocks of one page run in order in one namespace. A block with a top-level ``await`` runs
in the test's event loop; any other block runs in a worker thread, so an example may start
its own loop with ``anyio.run(main)`` as a reader's script would. A block right after a
line ``<!-- not-run: reason -->`` is skipped (it needs a real API key).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"(<!-- not-run:[^>]*-->\s*\n)?```python\n(.*?)```", re.S)

pytestmark = pytest.mark.anyio


def blocks(page: Path) -> list[str]:
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


@pytest.mark.parametrize(
    "page", [p for p in PAGES if blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
async def test_page_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, code in enumerate(blocks(page), 1):
        compiled = compile(
            code, f"{page.name}[{number}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        if compiled.co_flags & inspect.CO_COROUTINE:
            await eval(compiled, namespace)
        else:
            await anyio.to_thread.run_sync(eval, compiled, namespace)
