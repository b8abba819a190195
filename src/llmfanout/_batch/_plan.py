"""Planning a batch job: every task checked, split into parts, each part's request file written.

Nothing here talks to the provider: :func:`plan_parts` is all a dry run needs, and what
:func:`~llmfanout._batch._submit.submit_batch` does before it sends anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from .._core._tasks import LLMTask
from ..errors import ProviderError
from ._api import BatchAPI
from ._state import Part

BODY_OVERHEAD = 64
"""Bytes of a batch's size limit kept for what wraps the request lines."""


def plan_parts(
    api: BatchAPI,
    tasks: Iterable[LLMTask],
    run_id: str,
    folder: str,
    max_requests: int,
    max_bytes: int,
) -> list[Part]:
    """Validate every task and write the request files, one per part; nothing is sent.

    Raises ``ValueError`` naming the task (its tag) that cannot be sent.
    """
    parts: list[Part] = []
    seen: set[str] = set()
    file = None
    tail = b""
    digest = hashlib.sha256()
    part: Part | None = None
    limit = max_bytes - BODY_OVERHEAD
    separator = api.separator
    grows = api.line_overhead
    try:
        for number, task in enumerate(tasks):
            if not isinstance(task, LLMTask):
                raise TypeError(f"task {number} is a {type(task).__name__}; give LLMTask objects")
            tag = task.tag
            if not tag:
                raise ValueError(f"task {number} has no tag; give every task a unique tag")
            if tag in seen:
                raise ValueError(f"task {tag!r} appears twice; tags must be unique")
            seen.add(tag)
            try:
                body = api.body(task.messages, task.config_overrides)
            except ProviderError as exc:
                raise ValueError(f"task {tag!r}: {exc}") from None
            if body.get("stream"):
                raise ValueError(
                    f"task {tag!r}: stream=True in its parameters; a batch returns whole "
                    "answers, so remove it"
                )
            # The custom id is ours, "<run>-<part>-<i>": it fits both APIs' rules whatever
            # the tag, and tells this job's results from any other's.
            # A part's size counts its lines and what separates them (the limit's
            # measure); the digest covers the lines alone.
            line = b""
            if part is not None and part.rows < max_requests:
                line = api.line(f"{run_id}-{part.index}-{part.rows}", body)
            wire = part.size + len(separator) + len(line) + grows * (part.rows + 1) if part else 0
            if part is None or not line or wire > limit:
                if part is not None and file is not None:
                    file.write(tail)
                    file.close()
                    part.digest = digest.hexdigest()
                part = Part(index=len(parts), tags=[], size=0, digest="")
                parts.append(part)
                digest = hashlib.sha256()
                path = part_file(folder, run_id, part.index)
                head, tail = api.framing(os.path.basename(path))
                file = open(path, "wb")  # noqa: SIM115  (closed below, or in finally)
                file.write(head)
                line = api.line(f"{run_id}-{part.index}-0", body)
                if len(line) + grows > limit:
                    raise ValueError(
                        f"task {tag!r}: its request is {len(line)} bytes, more than the "
                        f"{limit} bytes a batch may hold"
                    )
            elif separator:
                assert file is not None
                file.write(separator)
                part.size += len(separator)
            assert file is not None
            file.write(line)
            digest.update(line)
            part.tags.append(tag)
            part.size += len(line)
        if part is not None and file is not None:
            file.write(tail)
            part.digest = digest.hexdigest()
    finally:
        if file is not None:
            file.close()
    if not parts:
        raise ValueError("no tasks to submit; give at least one")
    return parts


def part_file(folder: str, run_id: str, index: int) -> str:
    return os.path.join(folder, f"llmfanout-{run_id}-part{index}.jsonl")
