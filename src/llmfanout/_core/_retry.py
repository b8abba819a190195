"""Retry policy: how many attempts, how long to wait between them, what is worth retrying."""

from __future__ import annotations

import enum
import inspect
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import attrs

from .._base._calls import call_maybe_async, callable_is_async
from .._base._checks import whole_number
from .._flow._patience import Patience, is_overload
from ._outcome import Failed, Ok, Outcome

logger = logging.getLogger("llmfanout")


class BackoffStrategy(enum.Enum):
    """How the wait between attempts grows. Every delay is capped at ``max_delay``."""

    FIXED = "fixed"
    """Always ``initial_delay``."""
    LINEAR = "linear"
    """``initial_delay * n`` after the n-th failed attempt."""
    EXPONENTIAL = "exponential"
    """``initial_delay * backoff_multiplier ** (n - 1)``."""
    JITTER = "jitter"
    """Exponential, times a random factor in ``1 +/- jitter_range``."""
    DECORRELATED = "decorrelated"
    """``initial_delay`` first, then uniform between ``initial_delay`` and 3x the previous delay."""


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    whole_number(value, f"RetryConfig.{attribute.name}", hint=" (1 means no retry)")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(
            f"RetryConfig.{attribute.name} is {value!r}; it must be a number >= 0 (seconds)"
        )


def _fraction(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"RetryConfig.{attribute.name} is {value!r}; it must lie in [0, 1]")


def _exception_types(
    value: Sequence[type[BaseException]] | type[BaseException] | None,
) -> tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    types = (value,) if isinstance(value, type) else tuple(value)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"RetryConfig.retry_on_exceptions holds {t!r}; give exception classes")
    return types


@attrs.frozen
class RetryConfig:
    """A retry policy. ``RetryConfig(max_attempts=1)`` means no retry.

    - ``retry_on_exceptions``: when set, only exceptions of these types are retried.
    - ``retry_on_result(value) -> bool``: return True to retry on a value (an empty
      completion, say); when attempts run out the last value is returned as a success.
    - ``on_retry(attempt, exc)`` runs before each wait; ``on_failure(exc)`` once the
      attempts are used up. Either may be sync or async.

    Whatever the policy, an exception with ``retryable = False`` is never retried, and
    one with ``retry_after`` (seconds) makes the next wait at least that long, still
    capped at ``max_delay``.

    ``patience`` (seconds, ten minutes by default; 0 turns it off): rate-limit and
    overload answers (HTTP 429, 529, and 503 with ``retry_after``) are the server asking
    us to wait, not the call failing. They are retried until ``patience`` has passed since
    the first of them, without spending ``max_attempts`` (which keep counting other
    failures; ``TaskResult.attempts`` counts every call made). Their ``retry_after`` is
    honoured in full; without it the waits grow from ``initial_delay`` (at least 10 ms)
    up to ``max_delay``, with full jitter.
    """

    max_attempts: int = attrs.field(default=3, validator=_positive_int)
    initial_delay: float = attrs.field(default=1.0, validator=_non_negative)
    max_delay: float = attrs.field(default=60.0, validator=_non_negative)
    backoff_strategy: BackoffStrategy = attrs.field(
        default=BackoffStrategy.EXPONENTIAL,
        validator=attrs.validators.instance_of(BackoffStrategy),
    )
    backoff_multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    jitter_range: float = attrs.field(default=0.1, validator=_fraction)
    retry_on_exceptions: tuple[type[BaseException], ...] | None = attrs.field(
        default=None, converter=_exception_types
    )
    retry_on_result: Callable[[Any], bool] | None = None
    on_retry: Callable[[int, Exception], Any] | None = None
    on_failure: Callable[[Exception], Any] | None = None
    patience: float = attrs.field(default=600.0, validator=_non_negative)
    trivial: bool = attrs.field(init=False, repr=False, eq=False)
    """One attempt, no patience and no hook to call: the executor may skip the retry machinery."""

    @trivial.default
    def _trivial(self) -> bool:
        return self.max_attempts == 1 and self.on_failure is None and not self.patience


def backoff_delay(
    config: RetryConfig,
    attempt: int,
    previous: float | None = None,
    *,
    rng: random.Random | None = None,
) -> float:
    """The wait after failed attempt number ``attempt`` (1-based), before any ``retry_after``.

    ``previous`` is the wait used last time (only DECORRELATED looks at it).
    """
    uniform = (rng or random).uniform
    strategy = config.backoff_strategy
    base = config.initial_delay
    if strategy is BackoffStrategy.FIXED:
        delay = base
    elif strategy is BackoffStrategy.LINEAR:
        delay = base * attempt
    elif strategy is BackoffStrategy.EXPONENTIAL:
        delay = _times(base, _power(config.backoff_multiplier, attempt - 1))
    elif strategy is BackoffStrategy.JITTER:
        spread = config.jitter_range
        growth = _power(config.backoff_multiplier, attempt - 1) * uniform(1 - spread, 1 + spread)
        delay = _times(base, growth)
    else:  # DECORRELATED
        delay = base if previous is None else uniform(base, max(base, previous * 3))
    return min(delay, config.max_delay)


def _power(multiplier: float, exponent: int) -> float:
    # Past about a thousand attempts the power overflows a float: the cap applies anyway.
    try:
        return multiplier**exponent
    except OverflowError:
        return math.inf


def _times(base: float, growth: float) -> float:
    return base * growth if base else 0.0  # 0 * inf would be NaN


def is_retryable(config: RetryConfig, exc: Exception) -> bool:
    """Whether ``exc`` may be retried under ``config`` (ignoring how many attempts are left)."""
    if getattr(exc, "retryable", True) is False:
        return False
    types = config.retry_on_exceptions
    return types is None or isinstance(exc, types)


async def _hook(fn: Callable[..., Any] | None, *args: Any) -> None:
    if fn is not None:
        outcome = fn(*args)
        if inspect.isawaitable(outcome):
            await outcome


class _Testing:
    """The retry testing switch (see :func:`llmfanout.testing.set_testing`)."""

    __slots__ = ("instant",)

    def __init__(self) -> None:
        self.instant = False


TESTING = _Testing()


async def _wait(delay: float) -> None:
    # In testing mode a wait still yields (a checkpoint), so cancellation lands as usual.
    await anyio.sleep(0 if TESTING.instant else delay)


def patience_for(config: RetryConfig) -> Patience:
    """A call's patience under ``config``: its waits from ``initial_delay`` to ``max_delay``."""
    floor = max(config.initial_delay, 0.01)  # never spin
    return Patience(config.patience, initial=floor, cap=max(config.max_delay, floor))


async def retrying(
    config: RetryConfig,
    call: Callable[[], Awaitable[Any]],
    *,
    first_error: Exception | None = None,
    queued: bool | Callable[[], bool] = False,
    patience: Patience | None = None,
) -> Outcome:
    """Run ``call`` under ``config``: :class:`Ok` with the value or :class:`Failed`.

    ``first_error``: attempt 1 already ran (the caller made it inline, the cheap way) and
    raised this; the loop takes over from there. Only ``Exception`` is captured;
    cancellation propagates from an attempt and from a wait alike. An exception raised
    by a hook or by ``retry_on_result`` is user code failing too: it ends the attempts
    and is returned like the call's own.

    ``patience``: the call's :class:`Patience`, when its attempts read it too (made here
    at the first overload answer otherwise).

    ``queued``: each attempt waits in a limiter's queue, which a Retry-After pauses for
    every caller; an overload answer that says when to come back then goes straight back
    to that queue (in arrival order) rather than sleeping on a timer of its own. A
    callable says so per answer (asked right after the attempt that got it).
    """
    n = 1
    error = first_error
    waited = 0.0  # overload waits skipped in testing mode, counted against patience
    try:
        previous: float | None = None
        retry_on_result = config.retry_on_result
        last = config.max_attempts
        spent = 0  # attempts counted against max_attempts: overload answers are not
        while True:
            if error is None:
                try:
                    value = await call()
                except Exception as exc:
                    error = exc
                else:
                    spent += 1
                    if retry_on_result is None or spent >= last or not retry_on_result(value):
                        return Ok(value, n)
                    previous = delay = backoff_delay(config, spent, previous)
                    logger.debug(
                        "attempt %d/%d: result asked for a retry; next in %.3fs", n, last, delay
                    )
            if (
                error is not None
                and config.patience
                and is_overload(error)
                and is_retryable(config, error)
            ):
                if patience is None:
                    patience = patience_for(config)
                nominal = patience.next_wait(error, anyio.current_time() + waited)
                if nominal is not None:
                    if TESTING.instant:
                        waited += nominal
                    delay = nominal
                    held = queued() if callable(queued) else queued
                    if held and getattr(error, "retry_after", None) is not None:
                        delay = 0.0  # the limiter's queue holds the call until then
                    await _hook(config.on_retry, n, error)
                    logger.debug("attempt %d: overloaded (%r); next in %.3fs", n, error, delay)
                    error = None
                    await _wait(delay)
                    n += 1
                    continue
                await _hook(config.on_failure, error)
                return Failed(error, n)
            if error is not None:
                spent += 1
                if not is_retryable(config, error):
                    return Failed(error, n)
                if spent >= last:
                    await _hook(config.on_failure, error)
                    return Failed(error, n)
                previous = backoff_delay(config, spent, previous)
                delay = previous
                retry_after = getattr(error, "retry_after", None)
                if isinstance(retry_after, int | float) and retry_after > delay:
                    delay = min(float(retry_after), config.max_delay)
                await _hook(config.on_retry, n, error)
                logger.debug("attempt %d/%d failed (%r); next in %.3fs", n, last, error, delay)
                error = None
            await _wait(delay)
            n += 1
    except Exception as hook_error:  # a hook or retry_on_result raised
        return Failed(hook_error, n)


class RetryExecutor:
    """Run any callable under a :class:`RetryConfig`, outside the parallel executor too.

    Async callables are awaited; sync ones run in a worker thread.
    """

    def __init__(self, config: RetryConfig | None = None) -> None:
        self.config = config if config is not None else RetryConfig()

    def __repr__(self) -> str:
        return f"RetryExecutor({self.config!r})"

    async def execute(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` until it succeeds or the policy gives up.

        Returns the value; raises the last exception once attempts are used up, or the
        first non-retryable one at once. Cancellation stops an attempt or a wait promptly.
        """
        is_async = callable_is_async(fn)

        async def once() -> Any:
            return await call_maybe_async(fn, args, kwargs, is_async)

        outcome = await retrying(self.config, once)
        if isinstance(outcome, Failed):
            raise outcome.error
        return outcome.value
