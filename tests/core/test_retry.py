"""Retry policy: delay maths, what is retried, hooks, and cancellation of waits."""

from __future__ import annotations

import random
import threading

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._core._outcome import Failed, Ok
from llmfanout._core._retry import retrying
from llmfanout.retry import BackoffStrategy, RetryConfig, RetryExecutor, backoff_delay
from llmfanout.testing import is_testing, set_testing

pytestmark = pytest.mark.anyio

delays = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(
    strategy=st.sampled_from(BackoffStrategy),
    initial=delays,
    cap=delays,
    multiplier=st.floats(min_value=0, max_value=10),
    jitter=st.floats(min_value=0, max_value=1),
    attempt=st.integers(1, 30),
    previous=st.none() | delays,
    seed=st.integers(),
)
def test_every_delay_lies_within_its_strategys_bounds(
    strategy: BackoffStrategy,
    initial: float,
    cap: float,
    multiplier: float,
    jitter: float,
    attempt: int,
    previous: float | None,
    seed: int,
) -> None:
    config = RetryConfig(
        initial_delay=initial,
        max_delay=cap,
        backoff_strategy=strategy,
        backoff_multiplier=multiplier,
        jitter_range=jitter,
    )
    delay = backoff_delay(config, attempt, previous, rng=random.Random(seed))
    exponential = initial * multiplier ** (attempt - 1)
    low, high = {
        BackoffStrategy.FIXED: (initial, initial),
        BackoffStrategy.LINEAR: (initial * attempt, initial * attempt),
        BackoffStrategy.EXPONENTIAL: (exponential, exponential),
        BackoffStrategy.JITTER: (exponential * (1 - jitter), exponential * (1 + jitter)),
        BackoffStrategy.DECORRELATED: (
            (initial, initial) if previous is None else (initial, max(initial, 3 * previous))
        ),
    }[strategy]
    tolerance = 1e-9 * max(1.0, high)
    assert 0 <= delay <= cap
    assert min(low, cap) - tolerance <= delay <= min(high, cap) + tolerance


def test_exponential_sequence_and_cap() -> None:
    config = RetryConfig(initial_delay=1, max_delay=5, backoff_multiplier=2)
    assert [backoff_delay(config, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


class Flaky:
    """Fails ``failures`` times with the given exception, then returns ``"ok"``."""

    def __init__(self, failures: int, exc: Exception | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("flaky")
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


fast = {"initial_delay": 0.0, "max_delay": 0.0}


async def test_retries_until_success() -> None:
    flaky = Flaky(2)
    assert await RetryExecutor(RetryConfig(max_attempts=3, **fast)).execute(flaky) == "ok"
    assert flaky.calls == 3


async def test_raises_last_exception_when_attempts_run_out() -> None:
    flaky = Flaky(5, ValueError("still broken"))
    with pytest.raises(ValueError, match="still broken"):
        await RetryExecutor(RetryConfig(max_attempts=3, **fast)).execute(flaky)
    assert flaky.calls == 3


async def test_max_attempts_one_means_no_retry() -> None:
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        await RetryExecutor(RetryConfig(max_attempts=1)).execute(flaky)
    assert flaky.calls == 1


class NotRetryable(Exception):
    retryable = False


async def test_retryable_false_is_never_retried() -> None:
    flaky = Flaky(1, NotRetryable("no"))
    with pytest.raises(NotRetryable):
        await RetryExecutor(RetryConfig(max_attempts=5, **fast)).execute(flaky)
    assert flaky.calls == 1


async def test_retry_on_exceptions_filters_by_type() -> None:
    config = RetryConfig(max_attempts=5, retry_on_exceptions=[ConnectionError], **fast)
    wrong_type = Flaky(1, KeyError("k"))
    with pytest.raises(KeyError):
        await RetryExecutor(config).execute(wrong_type)
    assert wrong_type.calls == 1
    right_type = Flaky(2)
    assert await RetryExecutor(config).execute(right_type) == "ok"
    assert right_type.calls == 3


async def test_retry_on_result_retries_then_returns_last_value() -> None:
    values = iter(["", "", "", "late"])

    async def empty_then_late() -> str:
        return next(values)

    config = RetryConfig(max_attempts=3, retry_on_result=lambda v: v == "", **fast)
    assert await RetryExecutor(config).execute(empty_then_late) == ""  # gave up: last value
    values = iter(["", "good"])
    assert await RetryExecutor(config).execute(empty_then_late) == "good"


async def test_hooks_sync_and_async_see_attempts_and_final_error() -> None:
    seen: list[tuple[str, object, object]] = []

    async def on_retry(attempt: int, exc: Exception) -> None:
        seen.append(("retry", attempt, str(exc)))

    config = RetryConfig(
        max_attempts=3,
        on_retry=on_retry,
        on_failure=lambda exc: seen.append(("failure", None, str(exc))),
        **fast,
    )
    with pytest.raises(ConnectionError):
        await RetryExecutor(config).execute(Flaky(9))
    assert seen == [("retry", 1, "flaky"), ("retry", 2, "flaky"), ("failure", None, "flaky")]


class SlowDown(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


async def test_retry_after_makes_the_wait_at_least_that_long() -> None:
    starts: list[float] = []

    async def call() -> str:
        starts.append(anyio.current_time())
        if len(starts) == 1:
            raise SlowDown(0.2)
        return "ok"

    config = RetryConfig(max_attempts=2, initial_delay=0.0, max_delay=10)
    assert await RetryExecutor(config).execute(call) == "ok"
    assert starts[1] - starts[0] >= 0.2


async def test_retry_after_is_still_capped_at_max_delay() -> None:
    flaky = Flaky(1, SlowDown(3600))
    config = RetryConfig(max_attempts=2, initial_delay=0.0, max_delay=0.01)
    with anyio.fail_after(5):
        assert await RetryExecutor(config).execute(flaky) == "ok"


async def test_sync_callable_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def work(x: int, *, y: int) -> int:
        threads.append(threading.get_ident())
        return x + y

    assert await RetryExecutor().execute(work, 1, y=2) == 3
    assert threads and threads[0] != loop_thread


async def test_cancellation_stops_a_retry_wait_promptly() -> None:
    failed_once = anyio.Event()

    async def fail() -> None:
        failed_once.set()
        raise ConnectionError("down")

    config = RetryConfig(max_attempts=3, initial_delay=3600, max_delay=3600)
    with anyio.fail_after(5):  # the guard: the wait below must not run its hour
        async with anyio.create_task_group() as tg:
            tg.start_soon(RetryExecutor(config).execute, fail)
            await failed_once.wait()
            tg.cancel_scope.cancel()
    assert tg.cancel_scope.cancel_called


async def test_cancellation_of_an_attempt_is_not_retried() -> None:
    calls = 0
    started = anyio.Event()

    async def hang() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.Event().wait()

    config = RetryConfig(max_attempts=3, **fast)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(RetryExecutor(config).execute, hang)
            await started.wait()
            tg.cancel_scope.cancel()
    assert calls == 1


async def test_a_raising_hook_ends_the_attempts_with_its_error() -> None:
    def broken_hook(attempt: int, exc: Exception) -> None:
        raise LookupError("hook")

    flaky = Flaky(5)
    with pytest.raises(LookupError, match="hook"):
        await RetryExecutor(RetryConfig(max_attempts=5, on_retry=broken_hook, **fast)).execute(
            flaky
        )
    assert flaky.calls == 1


def test_trivial_means_one_attempt_and_no_failure_hook() -> None:
    assert RetryConfig(max_attempts=1, patience=0).trivial
    assert not RetryConfig(max_attempts=1).trivial  # a 429 is still waited out
    assert not RetryConfig(max_attempts=2).trivial
    assert not RetryConfig(max_attempts=1, on_failure=print).trivial


# -- the outcome value --------------------------------------------------------------------


async def test_the_loop_returns_ok_with_the_value_and_the_attempts_it_took() -> None:
    flaky = Flaky(2)
    outcome = await retrying(RetryConfig(max_attempts=3, **fast), flaky)
    assert outcome == Ok("ok", 3)


async def test_the_loop_returns_failed_with_the_last_error_and_the_attempts() -> None:
    errors = [ConnectionError("first"), ConnectionError("second")]
    raising = iter(errors)

    async def call() -> str:
        raise next(raising)

    outcome = await retrying(RetryConfig(max_attempts=2, **fast), call)
    assert outcome == Failed(errors[1], 2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        outcome.attempts = 9  # type: ignore[misc]


async def test_a_first_error_made_inline_counts_as_attempt_one() -> None:
    flaky = Flaky(0)
    outcome = await retrying(
        RetryConfig(max_attempts=3, **fast), flaky, first_error=ConnectionError("inline")
    )
    assert outcome == Ok("ok", 2) and flaky.calls == 1


async def test_a_non_retryable_first_error_is_not_retried() -> None:
    error = ValueError("no")
    config = RetryConfig(max_attempts=3, retry_on_exceptions=[ConnectionError], **fast)
    flaky = Flaky(0)
    assert await retrying(config, flaky, first_error=error) == Failed(error, 1)
    assert flaky.calls == 0


# -- testing mode: waits take no time -------------------------------------------------------


async def test_testing_mode_makes_an_hour_of_backoff_and_retry_after_instant() -> None:
    flaky = Flaky(2, SlowDown(3600))
    config = RetryConfig(max_attempts=3, initial_delay=3600, max_delay=7200)
    assert not is_testing()
    with set_testing(True), anyio.fail_after(5):  # without the switch: two hours
        assert is_testing()
        assert await RetryExecutor(config).execute(flaky) == "ok"
    assert not is_testing() and flaky.calls == 3


async def test_testing_mode_still_lets_cancellation_stop_the_retries() -> None:
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    config = RetryConfig(max_attempts=1_000_000, initial_delay=3600)
    with set_testing(True), anyio.move_on_after(0.05) as scope:  # waits still yield
        await RetryExecutor(config).execute(fail)
    assert scope.cancelled_caught and 1 <= calls < 1_000_000


def test_set_testing_without_a_block_stays_set_until_undone() -> None:
    set_testing(True)
    try:
        assert is_testing()
    finally:
        set_testing(False)
    assert not is_testing()
    with pytest.raises(TypeError, match="True or False"):
        set_testing("yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", [BackoffStrategy.EXPONENTIAL, BackoffStrategy.JITTER])
@pytest.mark.parametrize("initial", [0.0, 1.0])
def test_a_delay_thousands_of_attempts_in_is_capped_not_an_overflow(
    strategy: BackoffStrategy, initial: float
) -> None:
    config = RetryConfig(initial_delay=initial, max_delay=30, backoff_strategy=strategy)
    assert backoff_delay(config, 5000) == (30 if initial else 0)
