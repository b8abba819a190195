"""Patience: which answers are overload, how long to wait, when to give up."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._flow._patience import Patience, is_overload, overload_wait
from llmfanout.errors import AuthenticationError, RateLimitError, ServerError


@pytest.mark.parametrize(
    ("error", "overload"),
    [
        (RateLimitError("x", status_code=429), True),
        (RateLimitError("x", status_code=429, retry_after=2), True),
        (ServerError("x", status_code=529), True),
        (ServerError("x", status_code=503, retry_after=1.5), True),
        (ServerError("x", status_code=503), False),  # down, not busy: max_attempts decides
        (ServerError("x", status_code=500), False),
        (AuthenticationError("x", status_code=401), False),
        (RateLimitError("x", status_code=429, retryable=False), False),  # x-should-retry: false
        (ValueError("x"), False),
    ],
)
def test_what_counts_as_overload(error: Exception, overload: bool) -> None:
    assert is_overload(error) is overload


def test_retry_after_is_honoured() -> None:
    assert overload_wait(1, 7.5) == 7.5
    assert overload_wait(9, 0.0) == 0.0


@given(st.integers(1, 200), st.integers(0, 2**32))
def test_waits_without_retry_after_grow_with_jitter(waits: int, seed: int) -> None:
    wait = overload_wait(waits, None, initial=1.0, cap=60.0, rng=random.Random(seed))
    assert 0.1 <= wait <= min(60.0, 2.0 ** (waits - 1))


def test_jitter_spreads_calls_refused_together() -> None:
    rng = random.Random(1)
    waits = {round(overload_wait(4, None, rng=rng), 6) for _ in range(50)}
    assert len(waits) > 40


def test_patience_runs_out_at_the_deadline() -> None:
    patience = Patience(10.0)
    busy = RateLimitError("x", status_code=429, retry_after=4)
    assert patience.next_wait(busy, now=100.0) == 4  # deadline 110
    assert patience.next_wait(busy, now=104.0) == 4
    assert patience.next_wait(busy, now=108.0) is None  # 112 > 110: give up now
    assert patience.waits == 3


@given(st.floats(0, 1000), st.lists(st.floats(0, 100), max_size=30))
def test_waits_never_pass_the_deadline(seconds: float, gaps: list[float]) -> None:
    patience = Patience(seconds, rng=random.Random(0))
    now = 0.0
    for gap in gaps:
        wait = patience.next_wait(RateLimitError("x", status_code=429), now)
        if wait is None:
            break
        assert now + wait <= seconds
        now += wait + gap
