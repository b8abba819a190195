"""The public face: every public name imports from its public module, whose name it carries,
and the layers' contract really holds the layers (an upward import breaks it)."""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmfanout
from llmfanout.limits import SharedLimitError

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [
    "llmfanout",
    "llmfanout.providers",
    "llmfanout.errors",
    "llmfanout.retry",
    "llmfanout.limits",
    "llmfanout.batch",
    "llmfanout.ray",
    "llmfanout.progress",
    "llmfanout.testing",
]


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_carries_a_public_module(name: str) -> None:
    module = importlib.import_module(name)
    for attribute in module.__all__:
        value = getattr(module, attribute)
        owner = getattr(value, "__module__", None)
        if isinstance(value, type) or callable(value):
            assert isinstance(owner, str), (name, attribute)
            assert not _private(owner), f"{name}.{attribute}.__module__ is {owner}"
            assert getattr(importlib.import_module(owner), attribute) is value


def test_the_top_level_names_are_named_for_the_top_level() -> None:
    assert llmfanout.ParallelLLMExecutor.__module__ == "llmfanout"
    assert llmfanout.JobSpec.__module__ == "llmfanout"
    assert llmfanout.RateLimit.__module__ == "llmfanout"
    assert llmfanout.OpenAIProvider.__module__ == "llmfanout.providers"
    assert "llmfanout._" not in repr(llmfanout.JobSpec)


def test_pickles_name_only_public_paths() -> None:
    spec = llmfanout.JobSpec(concurrency=7)
    data = pickle.dumps(spec)
    assert b"llmfanout._" not in data
    assert pickle.loads(data) == spec
    error = pickle.loads(pickle.dumps(SharedLimitError("no redis")))
    assert type(error) is SharedLimitError
    assert str(error) == "no redis"


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    if lint is None:
        pytest.fail("lint-imports is not installed: pip install 'import-linter>=2.1'")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [lint, "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_tree_keeps_the_layers_contract() -> None:
    kept = _lint_imports(ROOT / "src")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "BROKEN" not in kept.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("_base/_checks.py", "from .._flow import _limiter"),
        ("_flow/_limiter.py", "from .._core import _tasks"),
        ("_core/_cap.py", "from ..providers import _secrets"),
        ("providers/_sse.py", "from .._core import _outcome"),
        ("_report/_cost.py", "from .._rows import _lock"),
        ("_rows/_lock.py", "from .._batch import _state"),
        ("_rows/_lock.py", "from .._cli import _args"),
        ("errors.py", "from ._flow import _limiter"),
    ],
)
def test_an_upward_import_breaks_the_layers_contract(
    tmp_path: Path, module: str, upward: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "llmfanout", src / "llmfanout")
    target = src / "llmfanout" / module
    target.write_text(target.read_text() + f"\n{upward}  # noqa\n")
    broken = _lint_imports(src)
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout


def test_test_modules_have_distinct_names() -> None:
    """Tests mirror the tree in folders without __init__.py: pytest imports each test module
    by its basename, so two with one name in different folders break a whole-suite run."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) > 50
    assert sorted(names) == sorted(set(names)), sorted({n for n in names if names.count(n) > 1})
