"""The embed job's rows: output lines rendered from parts, and the spool of the first pass."""

from __future__ import annotations

import array
import math
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from llmfanout._base._embeddings import EmbeddingResponse
from llmfanout._core._packing import Batch
from llmfanout._rows._embed import SPOOL_CHUNK, read_rows, scan, success_lines
from llmfanout._rows._output_rows import encode
from llmfanout.providers._embeddings_format import encode_base64

ids = st.text(max_size=12) | st.integers(-(2**70), 2**70)
floats = st.floats(width=32) | st.floats()
vectors = st.lists(floats, min_size=1, max_size=6)


@given(
    st.lists(st.tuples(ids, vectors), min_size=1, max_size=8),
    st.text(max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_rendered_lines_are_what_the_json_encoder_writes(
    rows: list[tuple[object, list[float]]], model: str, as_array: bool, base64: bool
) -> None:
    if base64:
        rows = [(i, [x for x in v if math.isfinite(x)] or [0.0]) for i, v in rows]
    keys = [row_id for row_id, _ in rows]
    given_vectors = [array.array("f", v) if as_array else v for _, v in rows]
    if as_array:  # float32: what the encoder sees is each float32, widened
        rows = [(i, v.tolist()) for (i, _), v in zip(rows, given_vectors, strict=True)]
    batch = Batch(keys, ["t"] * len(keys), len(keys))
    response = EmbeddingResponse(given_vectors, model=model)
    expected = [
        {
            "id": row_id,
            "success": True,
            "embedding": encode_base64(vector) if base64 else vector,
            "error": None,
            "model": model,
        }
        for row_id, vector in rows
    ]
    assert success_lines(batch, response, base64=base64) == encode(expected)


@given(st.lists(st.tuples(ids, st.text(min_size=1)), max_size=30), st.integers(1, 7))
def test_the_spool_gives_back_each_good_row_once_in_order(
    rows: list[tuple[object, str]], chunk: int
) -> None:
    import json

    import llmfanout._rows._embed as module

    lines = [json.dumps({"id": row_id, "text": text}) for row_id, text in rows]
    lines.insert(len(lines) // 2, "not json")
    first: dict[str, tuple[object, str]] = {}
    for row_id, text in rows:
        first.setdefault(json.dumps(row_id), (row_id, text))
    done = {json.dumps(rows[0][0])} if rows else set()
    saved, module.SPOOL_CHUNK = module.SPOOL_CHUNK, chunk
    try:
        with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as spool:
            source.write(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
            found = scan(source, done, spool)
            back = list(read_rows(spool))
    finally:
        module.SPOOL_CHUNK = saved
    assert saved == SPOOL_CHUNK
    expected = [row for key, row in first.items() if key not in done]
    assert back == expected and found.to_run == len(expected)
    assert [bad.line for bad in found.bad] == [len(rows) // 2 + 1]
