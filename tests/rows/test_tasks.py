"""The one builder of tasks from rows: what a row job and a batch submit send."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._rows._input_rows import Bad, BadRow, parse_row, read_rows
from llmfanout._rows._tasks import tagged_tasks, task_for

ids = st.one_of(st.integers(), st.text(min_size=1))


@given(ids, st.text(min_size=1).filter(str.strip), st.none() | st.just({"temperature": 0}))
def test_a_task_carries_the_rows_messages_params_and_tag(row_id, prompt, params) -> None:
    line = json.dumps({"id": row_id, "prompt": prompt, "params": params}).encode()
    row = parse_row(line)
    task = task_for(row, tag=row.key)
    assert task.messages == row.messages
    assert task.config_overrides == row.params
    assert task.tag == json.dumps(row_id)
    assert task_for(row).tag == ""  # a row job leaves the numbering to the executor


def test_tagged_tasks_from_a_file_and_a_bad_row_raises() -> None:
    source = io.BytesIO(b'{"id": 1, "prompt": "a"}\n\n{"id": "1", "prompt": "b"}\n')
    tasks = list(tagged_tasks(read_rows(source, {}, None)))
    assert [t.tag for t in tasks] == ["1", '"1"']
    with pytest.raises(BadRow, match="changed"):
        list(tagged_tasks([Bad(3, None, "changed")]))
