"""Adaptive concurrency: the AIMD figure (pure, generated). The executor against an
overloaded server: tests/flow/test_governor.py and tests/cli/test_pacing_cli.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._flow._adaptive import AIMD


def test_overload_halves_and_successes_add_one_a_round() -> None:
    aimd = AIMD(64)
    assert aimd.current == 64
    assert aimd.overload(epoch=0)
    assert aimd.current == 32
    for _ in range(32):  # one round of successes at 32
        aimd.success()
    assert aimd.current == 33


def test_one_burst_of_overload_cuts_once() -> None:
    aimd = AIMD(64)
    epoch = aimd.cuts  # 64 calls start under this figure...
    cuts = [aimd.overload(epoch) for _ in range(40)]  # ...and 40 come back 429
    assert cuts.count(True) == 1
    assert aimd.current == 32
    assert aimd.overload(aimd.cuts)  # a call started after the cut may cut again
    assert aimd.current == 16


def test_never_below_the_minimum_nor_above_the_maximum() -> None:
    aimd = AIMD(8, minimum=2)
    for _ in range(10):
        aimd.overload(aimd.cuts)
    assert aimd.current == 2
    for _ in range(1000):
        aimd.success()
    assert aimd.current == 8


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"maximum": 0}, "maximum"),
        ({"maximum": 4, "minimum": 5}, "minimum"),
        ({"maximum": 4, "decrease": 1.0}, "decrease"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AIMD(**kwargs)  # type: ignore[arg-type]


@given(st.integers(1, 1000), st.lists(st.tuples(st.booleans(), st.integers(0, 3))))
def test_the_figure_stays_within_bounds(maximum: int, events: list[tuple[bool, int]]) -> None:
    aimd = AIMD(maximum)
    for overloaded, lag in events:
        before = aimd.current
        if overloaded:
            aimd.overload(max(0, aimd.cuts - lag))
            assert aimd.current <= before
        else:
            aimd.success()
            assert before <= aimd.current <= before + 1
        assert 1 <= aimd.current <= maximum


# -- SharedPause: whose is a bare refusal's Retry-After -----------------------------------


@given(st.lists(st.booleans()), st.integers(1, 20))
def test_a_bare_refusal_pauses_everyone_only_while_everything_is_refused(
    answers: list[bool], streak: int
) -> None:
    """``answers``: True a success, False an overload answer. Shared: before any success,
    or after ``streak`` refusals in a row; a trusted (advertised budget's) one always."""
    from llmfanout._flow._adaptive import SharedPause

    pause = SharedPause(streak)
    succeeded, run = False, 0
    for ok in answers:
        if ok:
            pause.success()
            succeeded, run = True, 0
        else:
            pause.refused()
            run += 1
            assert pause.share(trusted=False) == (not succeeded or run >= streak)
            assert pause.share(trusted=True)


def test_a_shared_pause_needs_a_whole_streak() -> None:
    from llmfanout._flow._adaptive import SharedPause

    with pytest.raises(ValueError, match="streak"):
        SharedPause(0)
