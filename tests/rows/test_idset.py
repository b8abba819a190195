"""IdSet: the same answers as a plain set, with ids past its cap spilled to SQLite."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llmfanout._rows._idset as idset_module
from llmfanout._rows._embed import scan
from llmfanout._rows._idset import IdSet

# A small alphabet so repeats are common, within and across batches.
keys = st.text(alphabet="ab\x00é\ud800", max_size=3)


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@given(st.lists(keys, max_size=60), st.integers(0, 5), st.integers(1, 9))
def test_new_ids_are_those_a_plain_set_finds_in_order(
    items: list[str], cap: int, batch: int
) -> None:
    plain: set[str] = set()
    expected = []
    for key in items:
        expected.append(key not in plain)
        plain.add(key)
    with IdSet(cap=cap) as ids:
        got = [new for part in _batches(items, batch) for new in ids.add_new(part)]
        assert got == expected
        assert len(ids) == len(plain)
        probes = [*items, "zz", "b\x00"]
        assert ids.contains_many(probes) == [key in plain for key in probes]
        assert [key in ids for key in probes] == [key in plain for key in probes]
        assert (ids.path is not None) == (len(plain) > cap)


@given(st.lists(keys, max_size=40), st.integers(0, 3))
def test_update_holds_what_a_set_holds(items: list[str], cap: int) -> None:
    with IdSet(cap=cap) as ids:
        ids.update(iter(items), batch=3)
        assert ids.contains_many(items) == [True] * len(items)
        assert "not one of them" not in ids


@given(st.lists(keys, max_size=40), st.integers(0, 3))
def test_iterating_gives_each_id_once_and_in_memory_counts_those_not_spilled(
    items: list[str], cap: int
) -> None:
    with IdSet(cap=cap) as ids:
        ids.update(items, batch=2)
        listed = list(ids)
        assert sorted(listed) == sorted(set(items))
        assert ids.in_memory <= cap and len(ids) == len(set(items))


def test_the_sqlite_file_is_gone_after_close_and_after_an_error() -> None:
    ids = IdSet(cap=2)
    ids.add_new(["a", "b", "c", "d"])
    directory = ids.path
    assert directory is not None and os.listdir(directory) == ["ids.sqlite"]
    ids.close()
    ids.close()  # twice is fine
    assert not os.path.exists(directory) and ids.path is None and len(ids) == 0

    seen: list[str] = []

    def fails() -> None:
        with IdSet(cap=0) as ids:
            ids.add_new(["x"])
            assert ids.path is not None
            seen.append(ids.path)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert seen and not os.path.exists(seen[0])


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="cap is -1"):
        IdSet(cap=-1)


class _Breaks(io.BytesIO):
    """An input that fails after some lines, as a read error would."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.left = after

    def readline(self, size: int | None = -1) -> bytes:
        self.left -= 1
        if self.left < 0:
            raise OSError("disk gone")
        return super().readline(size)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def _made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = tempfile.mkdtemp

    def record(*args: Any, **kwargs: Any) -> str:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(idset_module.tempfile, "mkdtemp", record)
    return made


@given(st.lists(st.integers(0, 30), max_size=80), st.integers(1, 6))
def test_scan_finds_the_repeats_a_set_finds_when_it_spills(rows: list[int], chunk: int) -> None:
    import llmfanout._rows._embed as module

    lines = b"".join(json.dumps({"id": i, "text": "t"}).encode() + b"\n" for i in rows)
    plain: set[int] = set()
    repeats = {}
    for number, i in enumerate(rows, 1):
        if i in plain:
            repeats[number] = i
        plain.add(i)
    saved, module.SPOOL_CHUNK = module.SPOOL_CHUNK, chunk
    try:
        with tempfile.TemporaryFile() as spool:
            found = scan(io.BytesIO(lines), set(), spool, cap=2)
    finally:
        module.SPOOL_CHUNK = saved
    assert list(found.duplicates.items()) == list(repeats.items())[: module.KEPT_DUPLICATES]
    assert found.repeats == len(repeats) and found.to_run == len(plain)


def test_scan_removes_its_sqlite_file_also_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmfanout._rows._embed as module

    monkeypatch.setattr(module, "SPOOL_CHUNK", 4)
    made = _made(monkeypatch)
    lines = b"".join(json.dumps({"id": i, "text": "t"}).encode() + b"\n" for i in range(50))
    with tempfile.TemporaryFile() as spool:
        found = scan(io.BytesIO(lines), set(), spool, cap=3)
        assert found.to_run == 50
        assert len(made) == 1 and not os.path.exists(made[0])
        with pytest.raises(OSError, match="disk gone"):
            scan(_Breaks(lines, after=20), set(), spool, cap=3)
    assert len(made) == 2 and not os.path.exists(made[1])
