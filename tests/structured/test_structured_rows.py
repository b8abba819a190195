"""``run_rows`` with a schema: a row whose answers never match fails naming the row's id
(the executor's tags in a row job are positions, which mean nothing to the user)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfanout import JobSpec, run_rows

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

# Ids of every JSON kind a row may have, unique; the echo provider's answers are not JSON.
ids = st.lists(
    st.one_of(st.text(min_size=1, max_size=8), st.integers(-(10**6), 10**6)),
    min_size=1,
    max_size=6,
    unique_by=lambda v: json.dumps(v),
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=10, deadline=None)
@given(row_ids=ids)
def test_a_validation_failure_names_the_row_id(backend: str, row_ids: list[object]) -> None:
    rows = [{"id": row_id, "prompt": f"row {i}"} for i, row_id in enumerate(row_ids)]
    spec = JobSpec(provider="echo", schema=SCHEMA, max_reasks=1, backend=backend)
    out = list(run_rows(rows, spec))
    assert sorted(map(json.dumps, (r["id"] for r in out))) == sorted(map(json.dumps, row_ids))
    for row in out:
        error = row["error"]
        assert error["type"] == "ValidationFailed"
        assert error["message"].startswith(f"row {row['id']!r}: no answer matched the schema")
        assert error["validation_errors"]
        assert row["reasks"] == 1
