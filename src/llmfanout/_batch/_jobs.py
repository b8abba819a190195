"""A submitted batch job: polling it, reading one result per task, cancelling it.

:class:`BatchJob` is the handle: saved in the state file, restored with
:meth:`BatchJob.load`, it polls (:meth:`~BatchJob.ended`, :meth:`~BatchJob.wait`), reads
results (:meth:`~BatchJob.part_results`, one :class:`TaskResult` per task, exactly once)
and cancels. Requests that expired, were cancelled or errored become failed results
carrying the provider's error. Submitting is :mod:`._submit`; planning :mod:`._plan`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from typing import Any

import anyio
import attrs

from .._core._tasks import TaskResult
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
from ._gemini import GeminiBatchAPI
from ._state import BatchStateError, Part, State, load, save

logger = logging.getLogger("llmfanout")


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


# Alike in shape only: the record's fields copied to the public view by keyword.
def view(part: Part) -> BatchPart:
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


def api_for(
    provider: object,
    state: State | None = None,
    endpoint: str = "chat",
    gemini_input: str = "auto",
) -> BatchAPI:
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
    if issubclass(cls, GeminiBatchAPI):
        return cls(provider, gemini_input)
    if gemini_input != "auto":
        raise ValueError(f"gemini_input={gemini_input!r} is for Gemini batches, not {name}'s")
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

    # One typed, documented read-only property per recorded field (duplicates lists their
    # shared shape): a generated table of them would lose the types and the docstrings.
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
        return tuple(view(part) for part in self._state.parts)

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
        api = api_for(provider, self._state)
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
        api = api_for(provider, self._state)
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
                yield view(part)
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
                    yield view(part)
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
        api = api_for(provider, self._state)
        part = self._state.parts[index]
        if part.batch_id is None:  # cancelled before it was created
            for tag in part.tags:
                yield _failed(tag, _never_created(self.run_id, part))
            return
        remote = await self._call(_getter(api, part))
        if not remote.ended:
            if part.ended:  # the provider said it had ended: it cannot take that back
                raise ProviderError(
                    f"{api.name}: batch {part.batch_id} was reported ended, and now "
                    f"{remote.status}; the provider contradicts itself. Run the same command "
                    "again later",
                    provider=api.name,
                )
            raise BatchStateError(
                f"batch {part.batch_id} has not ended (it is {remote.status}); wait for it first"
            )
        self._update(part, remote)
        prefix = f"{self.run_id}-{part.index}-"
        seen = bytearray(part.rows)
        foreign = repeated = 0
        for failures in range(1, self.polling.max_failures + 1):
            # Counted per pass over the results: a download started again reads them anew.
            this_pass = bytearray(part.rows)
            foreign = repeated = 0
            try:
                async for outcome in api.outcomes(remote):
                    i = position_of(outcome.custom_id, prefix, part.rows)
                    if i is None:
                        foreign += 1
                        continue
                    if this_pass[i]:
                        repeated += 1
                        continue
                    this_pass[i] = 1
                    if seen[i]:  # handed out before the download broke
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
                "batch %s returned %d results whose custom_id is not this job's (%s...): ignored",
                part.batch_id,
                foreign,
                prefix,
            )
        if repeated:
            logger.warning(
                "batch %s returned %d results for a custom_id it had answered already "
                "(more than once): the first was kept, the rest ignored",
                part.batch_id,
                repeated,
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
        api = api_for(provider, self._state)
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


_NUMBER = re.compile(r"0|[1-9][0-9]*", re.ASCII)


def position_of(custom_id: str, prefix: str, rows: int) -> int | None:
    """The task a result's ``custom_id`` names: only the exact ids we sent, ``<prefix><i>``.

    No normalisation: ``٣`` (another script's digit), ``03`` and ``²`` are someone else's.
    """
    if not custom_id.startswith(prefix):
        return None
    number = custom_id[len(prefix) :]
    if _NUMBER.fullmatch(number) is None:
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
