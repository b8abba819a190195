"""Submitting a batch job: each step recorded in the state file before it is taken.

:func:`submit_batch` plans the parts (:mod:`._plan`), records them, then creates them one
by one. A part is saved ``creating`` (with the time) just before its create call. Found so
after a crash, or after a create call that failed in a way that may have taken effect, it
is reconciled with the provider's list of recent batches: on OpenAI by the metadata we
attach (run id and part number) or the uploaded file's id; on Anthropic, which takes no
metadata, by the request count among the batches created since that time and not claimed
by another part, an ended candidate being probed for our custom ids (which carry the run
id; they are checked again when results are read). Only a part found nowhere is created
again. A created part is saved with its batch id at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import aclosing
from functools import partial

import anyio

from .._core._tasks import LLMTask
from ..errors import ProviderError
from ..providers._http import HTTPProvider
from ._api import BatchAPI, RemoteBatch
from ._jobs import BatchJob, BatchPart, Polling, api_for, view
from ._plan import part_file, plan_parts
from ._state import BatchStateError, Part, State, load, save

logger = logging.getLogger("llmfanout")

CLOCK_SKEW = 600.0
"""Seconds of disagreement allowed between our clock and the provider's when reconciling."""

MAX_SCAN = 1000
"""The newest batches looked through when reconciling: ours is among them unless the
account created a thousand more between our create call and the crash."""


class _Submitter:
    """Creates the parts of a job one by one, saving each step before it is taken."""

    def __init__(self, job: BatchJob, api: BatchAPI, folder: str) -> None:
        self.job = job
        self.api = api
        self.folder = folder
        self.state = job._state

    def metadata(self, part: Part) -> dict[str, str]:
        return {
            "llmfanout_run": self.state.run_id,
            "llmfanout_part": str(part.index),
            "llmfanout_rows": str(part.rows),
        }

    async def submit(self, part: Part) -> None:
        if part.batch_id is not None:
            return
        if part.phase == "creating":
            found = await self.reconcile(part)
            if found is not None:
                return self.record(part, found)
        path = part_file(self.folder, self.state.run_id, part.index)
        if part.file_id is None:
            name = os.path.basename(path)
            upload = partial(self.api.upload, path, name, part.size, part.rows)
            part.file_id = await self.job._call(upload)
        part.phase = "creating"
        part.intent_at = time.time()
        self.job._save()
        self.record(part, await self.create(part, path))

    def record(self, part: Part, remote: RemoteBatch) -> None:
        part.batch_id = remote.id
        part.phase = "submitted"
        self.job._update(part, remote)
        self.job._save()

    async def create(self, part: Part, path: str) -> RemoteBatch:
        polling = self.job.polling
        wait = polling.retry_wait
        for failures in range(1, polling.max_failures + 1):
            try:
                return await self.api.create(path, part.size, part.file_id, self.metadata(part))
            except ProviderError as exc:
                if not exc.retryable or failures == polling.max_failures:
                    raise
                delay = max(wait, exc.retry_after or 0.0)
            # The create may have taken effect before the answer was lost: look first.
            await anyio.sleep(delay)
            wait = min(wait * 2, polling.max_interval)
            found = await self.reconcile(part)
            if found is not None:
                return found
        raise AssertionError("unreachable")  # pragma: no cover

    async def reconcile(self, part: Part) -> RemoteBatch | None:
        """The batch a ``creating`` part may already have, from the provider's list."""
        claimed = {p.batch_id for p in self.state.parts if p.batch_id is not None}
        metadata = self.metadata(part)
        found: list[RemoteBatch | None] = [None]
        candidates: list[RemoteBatch] = []

        async def scan() -> None:
            candidates.clear()
            seen = 0
            async with aclosing(self.api.recent()) as batches:
                async for remote in batches:
                    seen += 1
                    if remote.id in claimed:
                        continue
                    # OpenAI: the metadata we attached, or the file we uploaded.
                    tagged = all(remote.metadata.get(k) == v for k, v in metadata.items())
                    if tagged or (part.file_id and remote.input_file_id == part.file_id):
                        found[0] = remote
                        return
                    if remote.total in (0, part.rows):
                        candidates.append(remote)
                    if seen >= MAX_SCAN:
                        return

        await self.job._call(scan)
        if found[0] is not None or self.api.name != "anthropic":
            return found[0]
        return await self._by_shape(part, candidates)

    async def _by_shape(self, part: Part, candidates: list[RemoteBatch]) -> RemoteBatch | None:
        """Anthropic keeps no metadata: a batch of our size, created when ours would be.

        One that has ended is probed: its results' custom ids carry the run id, so a
        batch of another job is told apart for sure.
        """
        prefix = f"{self.state.run_id}-{part.index}-"
        intent = part.intent_at or self.state.created_at
        likely: list[RemoteBatch] = []
        for remote in candidates:
            if remote.total == 0:  # the list left the counts out: ask for them
                remote = await self.job._call(partial(self.api.get, remote.id))
            if remote.total != part.rows:
                continue
            if remote.ended:
                first = await self.job._call(partial(self.api.first_custom_id, remote))
                if first is not None and first.startswith(prefix):
                    return remote
                continue  # another job's, or nothing to tell by: not ours to take
            # created_at 0: a server that does not say; otherwise within the clock's slack
            if not remote.created_at or remote.created_at >= intent - CLOCK_SKEW:
                likely.append(remote)
        if not likely:
            return None
        # Ours was created after the intent was saved: prefer those, the nearest first.
        chosen = min(likely, key=lambda r: (r.created_at < intent, abs(r.created_at - intent)))
        if len(likely) > 1:
            logger.warning(
                "part %d: %d unfinished batches of %d requests were created around the same "
                "time; taking %s (its results are checked against this job's custom ids)",
                part.index,
                len(likely),
                part.rows,
                chosen.id,
            )
        return chosen


def _fresh_folder(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path)


def _open(
    provider: HTTPProvider,
    path: str,
    max_requests: int | None,
    max_bytes: int | None,
    endpoint: str = "chat",
    gemini_input: str = "auto",
) -> tuple[State | None, BatchAPI, int, int]:
    existing = load(path) if os.path.exists(path) else None
    api = api_for(provider, existing, endpoint, gemini_input)
    if existing is not None:  # carry on with the limits the parts were planned with
        if existing.cancelled:
            raise BatchStateError(
                f"{path}: this batch job was cancelled; start a new one elsewhere"
            )
        max_requests, max_bytes = existing.max_requests, existing.max_bytes
    requests = max_requests or api.max_requests
    size = max_bytes or api.part_bytes()
    for name, value, least in (("max_requests", requests, 1), ("max_bytes", size, 1024)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"submit_batch: {name} is {value!r}; give a whole number >= {least}")
    return existing, api, requests, size


async def submit_batch(
    provider: HTTPProvider,
    tasks: Iterable[LLMTask],
    *,
    state: str | os.PathLike[str],
    max_requests: int | None = None,
    max_bytes: int | None = None,
    polling: Polling | None = None,
    input_name: str | None = None,
    api_key_env: str | None = None,
    on_part: Callable[[BatchPart], None] | None = None,
    endpoint: str = "chat",
    gemini_input: str = "auto",
) -> BatchJob:
    """Submit ``tasks`` as provider batches; the :class:`BatchJob` that tracks them.

    Every task is checked first (an ``LLMTask`` with a unique, non-empty tag, a request
    the provider can take, within the size limit): a bad one raises ``ValueError`` naming
    its tag, with nothing sent. The tasks are split into as few batches as the limits
    allow (default: the provider's own, 50,000 requests and 200 MB on OpenAI, 100,000
    and 256 MB on Anthropic, 100,000 and 2 GB on Gemini, 20 MB with ``gemini_input="inline"``).

    When ``state`` already records this job (a submit that was interrupted), give the
    same tasks again: the submit carries on where it stopped, never creating a batch
    twice; ``BatchStateError`` if the tasks differ from the first time. Cancellation leaves
    the state file consistent: run the same call again to finish. ``input_name`` and
    ``api_key_env`` (the name of the variable the key came from, never the key) are
    recorded for later commands. ``on_part`` is called with each part once it exists at
    the provider (those created by an earlier, interrupted call included).

    ``endpoint="embeddings"`` (OpenAI only) sends each task's one user text to
    ``/v1/embeddings``; each result's vector is in ``response.metadata["embedding"]``.

    ``gemini_input`` (Gemini only) says how a part's requests are sent: ``"auto"`` (the
    default) inlines a part under Gemini's 20 MB request cap and uploads a bigger one
    through the Files API (parts up to 2 GB); ``"file"`` always uploads; ``"inline"``
    plans parts small enough to inline. An uploaded file's name is saved in ``state``
    before the batch is created from it.
    """
    path = os.fspath(state)
    existing, api, requests, size = _open(
        provider, path, max_requests, max_bytes, endpoint, gemini_input
    )
    run_id = existing.run_id if existing is not None else secrets.token_hex(4)
    # The request files go beside the state, in a folder of a fixed name: one a killed
    # submit left behind is cleared by the next, not left to pile up.
    spool = path + ".parts"
    await anyio.to_thread.run_sync(_fresh_folder, spool)
    try:
        plan = partial(plan_parts, api, tasks, run_id, spool, requests, size)
        parts = await anyio.to_thread.run_sync(plan)
        if existing is None:
            # Alike in shape only: the record's fields given by keyword.
            record = State(
                run_id=run_id,
                provider=api.name,
                base_url=provider.base_url,
                model=provider.model,
                created_at=time.time(),
                max_requests=requests,
                max_bytes=size,
                parts=parts,
                input=input_name,
                api_key_env=api_key_env,
                endpoint=endpoint,
            )
            save(record, path)  # recorded before anything is created
        else:
            record = existing
            old = [(p.rows, p.digest) for p in existing.parts]
            if old != [(p.rows, p.digest) for p in parts]:
                raise BatchStateError(
                    f"{path}: the tasks differ from those first submitted with this state "
                    "file; give the same input, or choose another output file for new input"
                )
        job = BatchJob(record, path, polling)
        submitter = _Submitter(job, api, spool)
        for part in record.parts:
            await submitter.submit(part)
            if on_part is not None:
                on_part(view(part))
    finally:  # at once, cancelled or not: a blocking moment beats a folder left behind
        shutil.rmtree(spool, ignore_errors=True)
    return job
