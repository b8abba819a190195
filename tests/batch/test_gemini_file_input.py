"""Gemini batches by uploaded file, through the library: when ``auto`` uploads, chunked
uploads, and the inlined body's size bound (hypothesis).

The fake (``support.fake_gemini_server``) runs in the test's own event loop, on asyncio
and trio. The CLI side (kill -9 during upload, create and wait) is in test_gemini_batch.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask
from llmfanout._batch import _gemini
from llmfanout._batch._gemini import INLINE_GROWTH, GeminiBatchAPI, inline_body
from llmfanout._batch._jobs import Polling
from llmfanout._batch._plan import plan_parts
from llmfanout._batch._submit import submit_batch
from llmfanout.errors import BadRequestError, ProviderError
from llmfanout.providers import GeminiProvider

from support.fake_gemini_server import FakeGemini, serve_gemini

pytestmark = pytest.mark.anyio

KEY = "AIza-gemini-file-secret-0123456789"
FAST = Polling(interval=0.001, max_interval=0.002, retry_wait=0.001)


@pytest.fixture
async def server() -> AsyncIterator[FakeGemini]:
    async with serve_gemini() as server:
        yield server


def tasks(count: int, size: int = 10) -> list[LLMTask]:
    return [
        LLMTask([LLMMessage(role="user", content=f"{i} " + "x" * size)], tag=f"t{i}")
        for i in range(count)
    ]


async def run(
    server: FakeGemini, state: Path, work: list[LLMTask], **options: str | int
) -> set[str]:
    """Submit, wait, and read every result: the tags answered (each checked once)."""
    async with GeminiProvider("gemini-2.5-flash", base_url=server.gemini_url, api_key=KEY) as p:
        job = await submit_batch(p, work, state=state, polling=FAST, **options)  # type: ignore[arg-type]
        await job.wait(p)
        seen: list[str] = []
        async for result in job.results(p):
            assert result.success, result.error
            seen.append(result.tag)
    assert len(seen) == len(set(seen))
    return set(seen)


async def test_auto_inlines_what_fits_and_uploads_the_rest(
    server: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gemini, "INLINE_BYTES", 8_000)  # read when the API is made
    small, big = tasks(5), tasks(60, size=100)
    assert await run(server, tmp_path / "small.json", small) == {t.tag for t in small}
    assert not server.files  # inlined: nothing uploaded
    assert await run(server, tmp_path / "big.json", big) == {t.tag for t in big}
    assert "files/f1" in server.files  # over the cap: one part, uploaded
    creates = [r for r in server.requests if r.path.endswith(":batchGenerateContent")]
    assert "requests" in creates[0].body["batch"]["inputConfig"]
    assert creates[1].body["batch"]["inputConfig"] == {"fileName": "files/f1"}


async def test_a_big_file_goes_up_in_chunks_at_the_right_offsets(
    server: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gemini, "UPLOAD_CHUNK", 1024)
    work = tasks(40, size=100)
    assert await run(server, tmp_path / "s.json", work, gemini_input="file") == {
        t.tag for t in work
    }
    chunks = [r for r in server.requests if "upload_id" in r.query]
    assert len(chunks) > 3
    assert [r.headers["x-goog-upload-command"] for r in chunks] == ["upload"] * (
        len(chunks) - 1
    ) + ["upload, finalize"]
    offsets = [int(r.headers["x-goog-upload-offset"]) for r in chunks]
    assert offsets == [sum(len(r.raw) for r in chunks[:i]) for i in range(len(chunks))]
    assert all(len(r.raw) == 1024 for r in chunks[:-1])


async def test_an_upload_url_elsewhere_stops_before_any_bytes_go(
    server: FakeGemini, tmp_path: Path
) -> None:
    server.upload_origin = "http://example.invalid"
    with pytest.raises(ProviderError, match="X-Goog-Upload-URL"):
        await run(server, tmp_path / "s.json", tasks(3), gemini_input="file")
    assert not any("upload_id" in r.query for r in server.requests)
    assert not server.batches


async def test_a_finalize_answer_without_a_file_name_is_refused(
    server: FakeGemini, tmp_path: Path
) -> None:
    async with GeminiProvider("gemini-2.5-flash", base_url=server.gemini_url, api_key=KEY) as p:
        api = GeminiBatchAPI(p, "file")
        path = tmp_path / "part.jsonl"
        path.write_bytes(b'{"key":"r-0-0","request":{}}\n')
        server.upload_origin = None
        original = server._upload_bytes

        async def nameless(request):  # type: ignore[no-untyped-def]
            await original(request)
            return b'HTTP/1.1 200 OK\r\ncontent-length: 25\r\n\r\n{"file":{"name":"../x"}}\n'

        server._upload_bytes = nameless  # type: ignore[method-assign]
        with pytest.raises(ProviderError, match="an uploaded file named files/"):
            await api.upload(str(path), "part.jsonl", path.stat().st_size, 1)


async def test_an_inline_batch_over_the_cap_is_refused_before_sending(
    server: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gemini, "INLINE_BYTES", 4_000)
    with pytest.raises(BadRequestError, match="lower --max-bytes"):
        await run(server, tmp_path / "s.json", tasks(60), gemini_input="inline", max_bytes=50_000)  # type: ignore[arg-type]
    assert not server.batches and not server.files


def test_gemini_input_must_be_known() -> None:
    provider = GeminiProvider("gemini-2.5-flash", api_key=KEY)
    with pytest.raises(ValueError, match="auto, file, inline"):
        GeminiBatchAPI(provider, "stream")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=600), min_size=1, max_size=60),
    cap=st.integers(min_value=3_000, max_value=20_000),
)
def test_inlined_parts_stay_under_the_cap_and_carry_every_request(
    sizes: list[int], cap: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    provider = GeminiProvider("gemini-2.5-flash", api_key=KEY)
    api = GeminiBatchAPI(provider, "inline")
    api.inline_bytes = cap
    folder = tmp_path_factory.mktemp("parts")
    work = [
        LLMTask([LLMMessage(role="user", content="é" * n)], tag=f"t{i}")
        for i, n in enumerate(sizes)
    ]
    parts = plan_parts(api, work, "run1", str(folder), 100_000, api.part_bytes())
    keys = []
    for part in parts:
        data = (folder / f"llmfanout-run1-part{part.index}.jsonl").read_bytes()
        name = _gemini.display_name({"llmfanout_run": "run1", "llmfanout_part": str(part.index)})
        body = inline_body(name, data)
        assert len(body) <= cap
        assert len(body) <= len(data) + INLINE_GROWTH * part.rows + len(name) + 70
        assert api.inlined(part.size, part.rows)
        requests = json.loads(body)["batch"]["inputConfig"]["requests"]["requests"]
        for line, request in zip(data.splitlines(), requests, strict=True):
            item = json.loads(line)
            assert request == {"metadata": {"key": item["key"]}, "request": item["request"]}
            keys.append(item["key"])
    assert keys == [f"run1-{p.index}-{i}" for p in parts for i in range(p.rows)]
