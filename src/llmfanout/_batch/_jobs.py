"""Provider batch jobs: submit tasks at half price, wait, read one result per task.

:func:`submit_batch` validates every task and splits them into as few provider batches
("parts") as the provider's limits allow, before anything is sent. It then records each
step in the state file before taking it, so a process killed at any moment can run the
same call again and carry on:

- a part is saved ``creating`` (with the time) just before its create call. Found so
  after a crash, or after a create call that failed in a way that may have taken effect,
  it is reconciled with the provider's list of recent batches: on OpenAI by the metadata
  we attach (run id and part number) or the uploaded file's id; on Anthropic, which takes
  no metadata, by the request count among the batches created since that time and not
  claimed by another part, an ended candidate being probed for our custom ids (which
  carry the run id; they are checked again when results are read). Only a part found
  nowhere is created again.
- a created part is saved with its batch id at once.

:class:`BatchJob` is the handle: saved in the state file, restored with
:meth:`BatchJob.load`, it polls (:meth:`~BatchJob.ended`, :meth:`~BatchJob.wait`), reads
results (:meth:`~BatchJob.part_results`, one :class:`TaskResult` per task, exactly once)
and cancels. Requests that expired, were cancelled or errored become failed results
carrying the provider's error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any

import anyio
import attrs

from .._core._tasks import LLMTask, TaskResult
from ..errors import ProviderError
from ..providers._http import HTTPProvider
from ._api import (
    BatchAPI,
    BatchRequestCancelled,
    BatchRequestError,
    BatchRequestExpired,
    RemoteBatch,
)
from ._apis import APIS, api_class
from ._state import BatchStateError, Part, State, load, save

logger = logging.getLogger("llmfanout")

BODY_OVERHEAD = 64
"""Bytes of a batch's size limit kept for what wraps the request lines."""

CLOCK_SKEW = 600.0
"""Seconds of disagreement allowed between our clock and the provider's when reconciling."""

MAX_SCAN = 1000
"""The newest batches looked through when reconciling: ours is among them unless the
account created a thousand more between our create call and the crash."""


@attrs.frozen
class Polling:
    """How a wait polls: every ``interval`` seconds at first, growing to ``max_interval``.

    A call that fails with a retryable error (a 5xx, a 429, a dropped connection) is
    tried again after ``retry_wait`` seconds, doubling up to ``max_interval`` (or the
    server's ``Retry-After`` when longer), at most ``max_failures`` times in a row.
    """

    interval: float = 5.0
    max_interval: float = 60.0
    growth: float = 1.5
    retry_wait: float = 1.0
    max_failures: int = 8

    def __attrs_post_init__(self) -> None:
        for name in ("interval", "max_interval", "retry_wait"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ValueError(f"Polling: {name} is {value!r}; give seconds > 0")
        if self.growth < 1:
            raise ValueError(f"Polling: growth is {self.growth!r}; give a factor >= 1")
        if self.max_failures < 1:
            raise ValueError(f"Polling: max_failures is {self.max_failures!r}; give >= 1")

    def delays(self) -> Iterator[float]:
        """The waits between polls: ``interval``, growing by ``growth``, capped."""
        delay = min(self.interval, self.max_interval)
        while True:
            yield delay
            delay = min(delay * self.growth, self.max_interval)


@attrs.frozen
class BatchPart:
    """One provider batch of a job, as last seen."""

    index: int
    batch_id: str | None  # None until created (or when cancel came first)
    rows: int
    status: str | None  # the provider's word: validating, in_progress, ended...
    ended: bool
    done: int
    succeeded: int
    failed: int
    collected: bool  # its results were all handed on (mark_collected)


@attrs.frozen
class BatchProgress:
    """A job's counts, summed over its parts from the provider's request counts."""

    rows: int
    done: int
    succeeded: int
    failed: int
    parts: int
    parts_ended: int

    @property
    def finished(self) -> bool:
        """Every part has ended."""
        return self.parts_ended == self.parts


def _view(part: Part) -> BatchPart:
    return BatchPart(
        index=part.index,
        batch_id=part.batch_id,
        rows=part.rows,
        status=part.status,
        ended=part.ended,
        done=part.done,
        succeeded=part.succeeded,
        failed=part.failed,
        collected=part.phase == "collected",
    )


def _api(provider: object, state: State | None = None, endpoint: str = "chat") -> BatchAPI:
    name = getattr(provider, "provider_name", None)
    if not isinstance(provider, HTTPProvider) or name not in APIS:
        raise TypeError(
            "batches need an OpenAIProvider, an AnthropicProvider or a GeminiProvider, not "
            f"{type(provider).__name__}"
        )
    if state is not None and (state.provider, state.base_url) != (name, provider.base_url):
        raise BatchStateError(
            f"this batch job was submitted to {state.provider} at {state.base_url}; give a "
            f"provider for that (got {name} at {provider.base_url})"
        )
    try:
        cls = api_class(name, state.endpoint if state is not None else endpoint)
    except ValueError as exc:
        raise TypeError(str(exc)) from None
    return cls(provider)


class BatchJob:
    """A submitted batch job, backed by its state file. Restore one with :meth:`load`.

    Methods that talk to the provider take the provider (an ``OpenAIProvider`` or an
    ``AnthropicProvider`` for the same base URL the job was submitted to): the state file
    never holds a key, so the key comes from wherever the provider gets it.
    """

    def __init__(self, state: State, path: str, polling: Polling | None = None) -> None:
        self._state = state
        self.path = path
        self.polling = polling or Polling()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, polling: Polling | None = None) -> BatchJob:
        """The job recorded in the state file at ``path``; raises ``BatchStateError`` if none."""
        return cls(load(path), os.fspath(path), polling)

    def __repr__(self) -> str:
        return f"BatchJob({self.path!r}, provider={self.provider!r}, parts={len(self.parts)})"

    @property
    def provider(self) -> str:
        """``"openai"`` or ``"anthropic"``."""
        return self._state.provider

    @property
    def endpoint(self) -> str:
        """``"chat"``, or ``"embeddings"`` for a batch of OpenAI embeddings."""
        return self._state.endpoint

    @property
    def model(self) -> str:
        """The default model the job was submitted with."""
        return self._state.model

    @property
    def base_url(self) -> str:
        """The API base URL the job was submitted to."""
        return self._state.base_url

    @property
    def api_key_env(self) -> str | None:
        """The environment variable the submit read the key from, if it named one."""
        return self._state.api_key_env

    @property
    def input(self) -> str | None:
        """The input file, when the submit recorded one."""
        return self._state.input

    @property
    def run_id(self) -> str:
        """The job's id, in its metadata and custom ids."""
        return self._state.run_id

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._state.cancelled

    @property
    def parts(self) -> tuple[BatchPart, ...]:
        """The provider batches, as last seen."""
        return tuple(_view(part) for part in self._state.parts)

    @property
    def submitted(self) -> bool:
        """Every part has a batch on the provider's side."""
        return all(part.batch_id is not None for part in self._state.parts)

    def tags(self, index: int) -> Sequence[str]:
        """The tags of part ``index``'s tasks, in the order they were sent."""
        return tuple(self._state.parts[index].tags)

    def progress(self) -> BatchProgress:
        """The counts as last seen (no network)."""
        parts = self._state.parts
        return BatchProgress(
            rows=sum(p.rows for p in parts),
            done=sum(p.rows if p.phase == "collected" else p.done for p in parts),
            succeeded=sum(p.succeeded for p in parts),
            failed=sum(p.failed for p in parts),
            parts=len(parts),
            parts_ended=sum(p.ended for p in parts),
        )

    def _save(self) -> None:
        save(self._state, self.path)

    # -- talking to the provider -------------------------------------------------------

    async def _call(self, call: Callable[[], Any]) -> Any:
        """``await call()``, again after retryable failures (waits growing, Retry-After)."""
        polling = self.polling
        wait = polling.retry_wait
        for failures in range(1, polling.max_failures + 1):
            try:
                return await call()
            except ProviderError as exc:
                if not exc.retryable or failures == polling.max_failures:
                    raise
                delay = max(wait, exc.retry_after or 0.0)
                logger.info("%s; trying again in %.1fs", exc, delay)
            await anyio.sleep(delay)
            wait = min(wait * 2, polling.max_interval)
        raise AssertionError("unreachable")  # pragma: no cover

    def _update(self, part: Part, remote: RemoteBatch) -> None:
        part.status = remote.status
        part.ended = remote.ended
        part.done = min(remote.done, part.rows)
        part.succeeded = remote.succeeded
        part.failed = remote.failed

    async def refresh(self, provider: HTTPProvider) -> BatchProgress:
        """Ask the provider for every unfinished part's status; the counts."""
        api = _api(provider, self._state)
        for part in self._state.parts:
            if part.batch_id is not None and not part.ended:
                self._update(part, await self._call(_getter(api, part)))
        return self.progress()

    async def ended(
        self,
        provider: HTTPProvider,
        *,
        on_progress: Callable[[BatchProgress], None] | None = None,
    ) -> AsyncIterator[BatchPart]:
        """Each part once it has ended, polling the rest (interval growing to a cap).

        Parts that ended before are yielded first. Raises ``BatchStateError`` if a part was
        never created and the job was not cancelled (run the submit again), and the last
        ``ProviderError`` if polling keeps failing.
        """
        api = _api(provider, self._state)
        state = self._state
        missing = [p.index for p in state.parts if p.batch_id is None]
        if missing and not state.cancelled:
            raise BatchStateError(
                f"{self.path}: parts {missing} were never created; the submit did not finish. "
                "Run the same submit again to finish it"
            )
        pending: list[Part] = []
        for part in state.parts:
            if part.ended or part.batch_id is None:
                part.ended = True
                yield _view(part)
            else:
                pending.append(part)
        delays = self.polling.delays()
        while pending:
            still: list[Part] = []
            for part in pending:
                remote = await self._call(_getter(api, part))
                self._update(part, remote)
                if remote.ended:
                    self._save()
                    yield _view(part)
                else:
                    still.append(part)
            pending = still
            if on_progress is not None:
                on_progress(self.progress())
            if pending:
                await anyio.sleep(next(delays))

    async def wait(
        self,
        provider: HTTPProvider,
        *,
        on_progress: Callable[[BatchProgress], None] | None = None,
    ) -> BatchProgress:
        """Poll until every part has ended; the final counts."""
        async for _ in self.ended(provider, on_progress=on_progress):
            pass
        return self.progress()

    async def part_results(self, provider: HTTPProvider, index: int) -> AsyncIterator[TaskResult]:
        """One result per task of an ended part, each exactly once, tagged as submitted.

        Results come as the provider returns them; tasks the provider returned nothing
        for (an expired or cancelled batch) come last, as failed results. A download that
        breaks is started again, skipping the results already handed out.
        """
        api = _api(provider, self._state)
        part = self._state.parts[index]
        if part.batch_id is None:  # cancelled before it was created
            for tag in part.tags:
                yield _failed(tag, _never_created(self.run_id, part))
            return
        remote = await self._call(_getter(api, part))
        self._update(part, remote)
        if not remote.ended:
            raise BatchStateError(
                f"batch {part.batch_id} has not ended (it is {remote.status}); wait for it first"
            )
        prefix = f"{self.run_id}-{part.index}-"
        seen = bytearray(part.rows)
        foreign = 0
        for failures in range(1, self.polling.max_failures + 1):
            try:
                async for outcome in api.outcomes(remote):
                    i = _position(outcome.custom_id, prefix, part.rows)
                    if i is None:
                        foreign += 1
                        continue
                    if seen[i]:
                        continue
                    seen[i] = 1
                    yield TaskResult(
                        part.tags[i],
                        outcome.response is not None,
                        outcome.response,
                        outcome.error,
                        0.0,
                        1 if outcome.answered else 0,
                    )
                break
            except ProviderError as exc:
                if not exc.retryable or failures == self.polling.max_failures:
                    raise
                await anyio.sleep(max(self.polling.retry_wait, exc.retry_after or 0.0))
        if foreign:
            logger.warning(
                "batch %s returned %d results whose custom_id is not this job's (%s...)",
                part.batch_id,
                foreign,
                prefix,
            )
        for i, tag in enumerate(part.tags):
            if not seen[i]:
                yield _failed(tag, _no_result(remote, foreign))

    async def results(self, provider: HTTPProvider) -> AsyncIterator[TaskResult]:
        """Wait for the job and yield one result per task, part by part as each ends."""
        async for part in self.ended(provider):
            async for result in self.part_results(provider, part.index):
                yield result

    def mark_collected(self, index: int) -> None:
        """Record that part ``index``'s results are safely stored (saved at once)."""
        part = self._state.parts[index]
        part.phase = "collected"
        part.ended = True
        self._save()

    async def cancel(self, provider: HTTPProvider, *, record: bool = True) -> BatchProgress:
        """Cancel every unfinished part; parts not yet created never will be.

        Requests already processed keep their results; the rest come back as failed
        (cancelled) results once each part has ended. With ``record=False`` the state
        file is left alone (another process owns it): only the provider is told.
        """
        api = _api(provider, self._state)
        self._state.cancelled = True
        if record:
            self._save()
        for part in self._state.parts:
            if part.batch_id is not None and not part.ended:
                self._update(part, await self._call(_getter(api, part, cancel=True)))
        if record:
            self._save()
        return self.progress()


def _getter(api: BatchAPI, part: Part, *, cancel: bool = False) -> Callable[[], Any]:
    batch_id = part.batch_id
    assert batch_id is not None
    return partial(api.cancel if cancel else api.get, batch_id)


def _position(custom_id: str, prefix: str, rows: int) -> int | None:
    if not custom_id.startswith(prefix):
        return None
    number = custom_id[len(prefix) :]
    if not number.isdigit():
        return None
    i = int(number)
    return i if i < rows else None


def _failed(tag: str, error: ProviderError) -> TaskResult:
    return TaskResult(tag, False, None, error, 0.0, 0)


def _never_created(run_id: str, part: Part) -> ProviderError:
    return BatchRequestCancelled(
        f"batch job {run_id}: part {part.index} was cancelled before it was created; send "
        "its rows again with llmfanout run --resume --retry-failed",
        error_type="cancelled",
    )


def _no_result(remote: RemoteBatch, foreign: int) -> ProviderError:
    where = f"{remote.id}"
    if remote.status == "expired":
        return BatchRequestExpired(
            f"batch {where} expired before this request ran; send it again with llmfanout run "
            "--resume --retry-failed",
            error_type="expired",
        )
    if remote.status in ("cancelled", "canceled", "cancelling", "canceling"):
        return BatchRequestCancelled(
            f"batch {where} was cancelled before this request ran; send it again with "
            "llmfanout run --resume --retry-failed",
            error_type="cancelled",
        )
    if remote.status == "failed":
        return BatchRequestError(
            f"batch {where} failed as a whole: {remote.problem or 'no reason given'}",
            error_type="batch_failed",
        )
    hint = f" ({foreign} results carried custom ids of another job)" if foreign else ""
    return BatchRequestError(
        f"batch {where} ({remote.status}) returned no result for this request{hint}",
        error_type="missing",
    )


# -- submitting --------------------------------------------------------------------------


def _planned(
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
            if part is None or not line or part.size + len(separator) + len(line) > limit:
                if part is not None and file is not None:
                    file.write(tail)
                    file.close()
                    part.digest = digest.hexdigest()
                part = Part(index=len(parts), tags=[], size=0, digest="")
                parts.append(part)
                digest = hashlib.sha256()
                path = _part_file(folder, run_id, part.index)
                head, tail = api.framing(os.path.basename(path))
                file = open(path, "wb")  # noqa: SIM115  (closed below, or in finally)
                file.write(head)
                line = api.line(f"{run_id}-{part.index}-0", body)
                if len(line) > limit:
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


def _part_file(folder: str, run_id: str, index: int) -> str:
    return os.path.join(folder, f"llmfanout-{run_id}-part{index}.jsonl")


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
        path = _part_file(self.folder, self.state.run_id, part.index)
        if part.file_id is None:
            name = os.path.basename(path)
            part.file_id = await self.job._call(partial(self.api.upload, path, name, part.size))
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
) -> tuple[State | None, BatchAPI, int, int]:
    existing = load(path) if os.path.exists(path) else None
    api = _api(provider, existing, endpoint)
    if existing is not None:  # carry on with the limits the parts were planned with
        if existing.cancelled:
            raise BatchStateError(
                f"{path}: this batch job was cancelled; start a new one elsewhere"
            )
        max_requests, max_bytes = existing.max_requests, existing.max_bytes
    requests = max_requests or api.max_requests
    size = max_bytes or api.max_bytes
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
) -> BatchJob:
    """Submit ``tasks`` as provider batches; the :class:`BatchJob` that tracks them.

    Every task is checked first (an ``LLMTask`` with a unique, non-empty tag, a request
    the provider can take, within the size limit): a bad one raises ``ValueError`` naming
    its tag, with nothing sent. The tasks are split into as few batches as the limits
    allow (default: the provider's own, 50,000 requests and 200 MB on OpenAI, 100,000
    and 256 MB on Anthropic).

    When ``state`` already records this job (a submit that was interrupted), give the
    same tasks again: the submit carries on where it stopped, never creating a batch
    twice; ``BatchStateError`` if the tasks differ from the first time. Cancellation leaves
    the state file consistent: run the same call again to finish. ``input_name`` and
    ``api_key_env`` (the name of the variable the key came from, never the key) are
    recorded for later commands. ``on_part`` is called with each part once it exists at
    the provider (those created by an earlier, interrupted call included).

    ``endpoint="embeddings"`` (OpenAI only) sends each task's one user text to
    ``/v1/embeddings``; each result's vector is in ``response.metadata["embedding"]``.
    """
    path = os.fspath(state)
    existing, api, requests, size = _open(provider, path, max_requests, max_bytes, endpoint)
    run_id = existing.run_id if existing is not None else secrets.token_hex(4)
    # The request files go beside the state, in a folder of a fixed name: one a killed
    # submit left behind is cleared by the next, not left to pile up.
    spool = path + ".parts"
    await anyio.to_thread.run_sync(_fresh_folder, spool)
    try:
        parts = await anyio.to_thread.run_sync(_planned, api, tasks, run_id, spool, requests, size)
        if existing is None:
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
                on_part(_view(part))
    finally:  # at once, cancelled or not: a blocking moment beats a folder left behind
        shutil.rmtree(spool, ignore_errors=True)
    return job
