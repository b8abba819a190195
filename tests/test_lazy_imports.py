"""What a process pays at start: ``import llmfanout``, an echo run on either backend and
``llmfanout run`` with the echo provider load neither httpx nor rich; the library loads
the HTTP providers and the batch API only when a name of theirs is used, and the
command line only for ``llmfanout batch``.

httpx (with click, rich and pygments behind ``httpx._main``) and rich cost about half a
second of every process's start; they are imported where they serve (a proxy, a user's
``http_client``, a bar on a terminal). A regression guard, not a timing test: each check
runs in a fresh interpreter and reads ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("httpx", "rich")
# Loaded on first use through the public modules' __getattr__ (PEP 562).
LAZY = ("llmfanout.providers._http", "llmfanout._batch._jobs", "llmfanout._batch._submit")

_LIBRARY = """
import json, sys

import anyio

heavy = {heavy!r}
seen = {{}}


def look(stage):
    seen[stage] = sorted(name for name in heavy if name in sys.modules)


import llmfanout

look("import llmfanout")
from llmfanout import EchoProvider, LLMMessage, LLMTask, ParallelLLMExecutor

executor = ParallelLLMExecutor(EchoProvider(), max_concurrency=4)
look("an executor over EchoProvider")
for backend in ("asyncio", "trio"):

    async def main():
        tasks = {{str(i): LLMTask([LLMMessage("user", f"hi {{i}}")]) for i in range(8)}}
        results = await executor.execute(tasks)
        assert all(result.success for result in results.values()), results
        async with executor.stream(tasks) as stream:
            async for result in stream:
                assert result.success, result

    anyio.run(main, backend=backend)
    look(f"execute and stream on {{backend}}")
print(json.dumps(seen))
"""

_CLI = """
import json, sys

from llmfanout._cli._main import main

status = main(sys.argv[1:])
print(json.dumps({{"status": status, "heavy": sorted(n for n in {heavy!r} if n in sys.modules)}}))
"""


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_library_and_an_echo_run_load_neither_httpx_nor_rich() -> None:
    seen = json.loads(_run(_LIBRARY.format(heavy=HEAVY + LAZY)))
    assert list(seen) == [
        "import llmfanout",
        "an executor over EchoProvider",
        "execute and stream on asyncio",
        "execute and stream on trio",
    ]
    assert seen == {stage: [] for stage in seen}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "plain-progress"])
def test_cli_run_with_echo_loads_neither_httpx_nor_rich(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, quiet: bool
) -> None:
    # stderr is a pipe here, so the progress display is plain lines: no rich needed.
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": f"hi {i}"}) + "\n" for i in range(20))
    )
    output = tmp_path / "out.jsonl"
    args = ["run", str(rows), "-o", str(output), "--backend", backend]
    code = _CLI.format(heavy=HEAVY + LAZY)
    report = json.loads(_run(code, *args, *(["--quiet"] if quiet else [])))
    assert report == {"status": 0, "heavy": []}
    assert len(output.read_text().splitlines()) == 20


def test_a_terminal_bar_still_loads_rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: where a bar is drawn, rich is there, so the checks above can fail.
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "r", "prompt": "hi"}) + "\n")
    args = ["run", str(rows), "-o", str(tmp_path / "out.jsonl")]
    report = json.loads(_run(_CLI.format(heavy=HEAVY), *args))
    assert report == {"status": 0, "heavy": ["rich"]}


_ORDER = """
import importlib, sys

first, name = sys.argv[1:]
importlib.import_module(first)
import llmfanout, llmfanout.batch, llmfanout.providers

value = getattr(llmfanout.providers if name.endswith("Provider") else llmfanout, name)
print(value.__module__)
"""


@pytest.mark.parametrize(
    ("first", "name", "module"),
    [
        ("llmfanout.batch", "BatchJob", "llmfanout"),
        ("llmfanout.batch", "submit_batch", "llmfanout"),
        ("llmfanout", "BatchJob", "llmfanout"),
        ("llmfanout.providers._azure", "OpenAIProvider", "llmfanout.providers"),
        ("llmfanout.providers", "AzureOpenAIProvider", "llmfanout.providers"),
        ("llmfanout", "AnthropicProvider", "llmfanout.providers"),
    ],
)
def test_a_lazy_name_carries_its_public_module_whichever_import_comes_first(
    first: str, name: str, module: str
) -> None:
    # Whichever import comes first, the public name gets its public module (pickles and
    # reprs name it), as when everything was imported eagerly.
    assert _run(_ORDER, first, name) == module


def test_lazy_names_are_listed_and_unknown_ones_raise() -> None:
    import llmfanout
    import llmfanout.providers

    for module in (llmfanout, llmfanout.providers):
        assert set(module.__all__) <= set(dir(module))
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            module.Nope  # noqa: B018


def test_the_batch_parser_offers_every_batch_api() -> None:
    # The parser takes the provider names from the state file's list, not the registry
    # (which loads every batch API): the two must name the same providers.
    from llmfanout._batch._apis import APIS
    from llmfanout._batch._state import PROVIDERS

    assert tuple(APIS) == PROVIDERS
