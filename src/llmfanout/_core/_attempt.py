"""One attempt at a call, and a task's attempts under its retry policy.

An LLM attempt: wait for the rate limit (any :class:`~llmfanout.Limiter`), run the call
under the attempt's time limit, settle the tokens it used with the limiter, and start a
cooldown when the server answered a 429 that says when to come back. A function
attempt: the call (in a worker thread if it is sync) under the time limit.

:func:`run_llm` and :func:`run_function` run a task's attempts and return an
:class:`~llmfanout._core._outcome.Outcome`. The scheduler makes the first attempt of a plain
LLM task itself (no limiter, no time limit: nothing to set up) and hands over only when
it fails, with ``first_error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import anyio

from .._base._calls import call_maybe_async
from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse
from .._flow._governor import Governor, Pass
from .._flow._limiter import Limiter
from .._flow._patience import Patience, is_overload
from .._flow._ratelimit import estimate_tokens
from ._outcome import Outcome
from ._retry import TESTING, RetryConfig, patience_for, retrying
from ._tasks import DeterministicTask, LLMTask

NO_RETRY = RetryConfig(max_attempts=1, patience=0)
DEFAULT_RETRY = RetryConfig()


class TimeLimit:
    """``anyio.fail_after``, with a message saying which limit ran out and how to raise it."""

    __slots__ = ("_kind", "_scope", "_seconds")

    def __init__(self, seconds: float, kind: str) -> None:
        self._seconds = seconds
        self._kind = kind

    def __enter__(self) -> None:
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + self._seconds)
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The scope swallows only its own cancellation, which becomes the TimeoutError.
        self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught:
            raise TimeoutError(
                f"{self._kind} call timed out after {self._seconds:g}s (the timeout per "
                "attempt); if it needs longer, raise the task's timeout= or the executor's "
                "default_timeout="
            )


def fresh(overrides: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``overrides`` per call: a provider that changes its argument (pops a key,
    say) must not change what any other call, or the next attempt, sees."""
    return None if overrides is None else dict(overrides)


def shared_cooldown(
    exc: Exception, policy: RetryConfig | None, left: float | None = None
) -> float | None:
    """How long every call should pause after ``exc``: an overload answer's Retry-After,
    if the caller itself will wait it out, else None.

    With patience (``policy.patience`` > 0), a wait longer than the ``left`` seconds of
    the caller's patience (all of it by default) is one the caller will not take: it
    fails at once, and sharing the wait would only hold every later call for a time none
    of them may wait either (a ``Retry-After: 99999999``). Later calls go on and judge
    the server's answer by their own patience. Without patience the retry loop waits at
    most ``max_delay``, and so does the shared pause.
    """
    retry_after = getattr(exc, "retry_after", None)
    if not (is_overload(exc) and isinstance(retry_after, int | float)) or TESTING.instant:
        return None
    policy = policy or DEFAULT_RETRY
    wait = float(retry_after)
    if not policy.patience:
        return min(wait, policy.max_delay)
    return wait if wait <= (policy.patience if left is None else left) else None


def pacing_patience(policy: RetryConfig, patience: Patience | None) -> float:
    """The longest a call may wait for its pacer: its patience left (``max_delay`` without)."""
    if not policy.patience:
        return policy.max_delay
    return policy.patience if patience is None else patience.left(anyio.current_time())


async def llm_attempt(
    provider: AsyncLLMProvider,
    messages: Sequence[LLMMessage],
    overrides: Mapping[str, Any] | None,
    per_attempt: float | None,
    limit: Limiter | None,
    tokens: int,
    policy: RetryConfig,
    governor: Governor | None = None,
    patience: Patience | None = None,
    held: Held | None = None,
) -> LLMResponse:
    """One LLM call: rate limit, pacing, time limit, the call, settling, the cooldown.

    ``held``: told whether a refusal's Retry-After became a pause the call's queue keeps
    (then the retry goes straight back to the queue), or the call must wait it alone.
    """
    if limit is None and governor is None:
        if per_attempt is None:
            return await provider.complete(messages, config_overrides=fresh(overrides))
        with TimeLimit(per_attempt, "LLM"):
            return await provider.complete(messages, config_overrides=fresh(overrides))
    if limit is not None:
        await limit.acquire(tokens)
    used: int | None = None
    admitted: Pass | None = None
    outcome: object = None
    cooldown: float | None = None
    try:
        if governor is not None:
            within = pacing_patience(policy, patience)
            admitted = await governor.admit(overrides, tokens, patience=within)
        if per_attempt is None:
            response = await provider.complete(messages, config_overrides=fresh(overrides))
        else:
            with TimeLimit(per_attempt, "LLM"):
                response = await provider.complete(messages, config_overrides=fresh(overrides))
        used = getattr(response, "total_tokens", None)
        outcome = response
        return response
    except Exception as exc:
        outcome = exc
        left = None if patience is None else patience.left(anyio.current_time())
        cooldown = shared_cooldown(exc, policy, left)
        if cooldown is not None and limit is not None:
            limit.cooldown(cooldown)
        raise
    finally:  # a cancelled call is settled too: the limiter keeps its estimate
        if limit is not None:
            limit.settle(tokens, used)
        shared = False
        if admitted is not None:
            shared = governor.release(admitted, outcome, cooldown=cooldown)  # type: ignore[union-attr]
        if held is not None:
            held.queued = limit is not None or shared


class Held:
    """Whether a call's latest refusal is held in a queue (the pause shared), per call."""

    __slots__ = ("queued",)

    def __init__(self, queued: bool) -> None:
        self.queued = queued

    def __call__(self) -> bool:
        return self.queued


async def run_llm(
    provider: AsyncLLMProvider,
    task: LLMTask,
    overrides: Mapping[str, Any] | None,
    policy: RetryConfig,
    per_attempt: float | None,
    limit: Limiter | None,
    *,
    first_error: Exception | None = None,
    first_held: bool = True,
    governor: Governor | None = None,
) -> Outcome:
    """An LLM task's attempts under ``policy`` (``first_error``: attempt 1 ran and raised;
    ``first_held``: its Retry-After became a pause its pacer keeps)."""
    governed = limit is not None or governor is not None
    tokens = estimate_tokens(task, overrides) if governed else 0
    patience = patience_for(policy) if governed else None
    call = partial(
        llm_attempt,
        provider,
        task.messages,
        overrides,
        per_attempt,
        limit,
        tokens,
        policy,
        governor,
        patience,
    )
    # With a limiter, a call refused with Retry-After waits in its queue (in arrival
    # order, the cooldown shared) rather than on a timer of its own; with pacing, when
    # the pacer took the pause for everyone (else the call waits it alone).
    held = Held(limit is not None or (governor is not None and governor.pacing and first_held))
    call.keywords["held"] = held
    return await retrying(policy, call, first_error=first_error, queued=held, patience=patience)


async def function_attempt(
    task: DeterministicTask, per_attempt: float | None, threads: anyio.CapacityLimiter
) -> Any:
    """One call of a function; a sync one runs in a worker thread.

    On timeout the thread is abandoned: the result times out on time while the thread
    runs on to its end (a thread cannot be interrupted).
    """
    if per_attempt is None:
        return await call_maybe_async(
            task.fn, task.args, task.kwargs, task.is_async, limiter=threads
        )
    with TimeLimit(per_attempt, "function"):
        return await call_maybe_async(
            task.fn,
            task.args,
            task.kwargs,
            task.is_async,
            limiter=threads,
            abandon_on_cancel=True,
        )


async def run_function(
    task: DeterministicTask, per_attempt: float | None, threads: anyio.CapacityLimiter
) -> Outcome:
    """A function task's attempts under its own retry policy (none: one attempt)."""
    call = partial(function_attempt, task, per_attempt, threads)
    return await retrying(task.retry or NO_RETRY, call)
