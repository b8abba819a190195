"""Adaptive concurrency: the AIMD figure (pure, generated). The executor against an
overloaded server: tests/flow/test_governor.py, tests/flow/test_refusals.py and
tests/cli/test_pacing_cli.py."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout._flow._adaptive import AIMD, clearly_higher


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


# -- judged cuts: refusals at random against refusals from load ---------------------------


def rounds(aimd: AIMD, refused: float | None, capacity: int, seed: int, calls: int) -> list[int]:
    """Run ``calls`` calls in rounds: each round starts ``aimd.current`` calls, then they
    answer in random order. A call is refused with chance ``refused`` (whatever the load),
    or, with ``refused`` None, ``1 - capacity / n`` in a round of ``n`` (a server that
    serves ``capacity`` at a time). Returns the figure after each round."""
    chance = random.Random(seed)
    figures: list[int] = []
    while calls > 0:
        n = aimd.current
        batch = [(aimd.start(), aimd.cuts) for _ in range(n)]
        chance.shuffle(batch)
        share = refused if refused is not None else max(0.0, 1 - capacity / n)
        for size, epoch in batch:
            if chance.random() < share:
                aimd.overload(epoch, size)
            else:
                aimd.success()
        calls -= n
        figures.append(aimd.current)
    return figures


@given(st.integers(4, 64), st.floats(0, 0.5), st.integers(0, 2**32))
def test_refusals_at_random_do_not_collapse_the_figure(
    maximum: int, share: float, seed: int
) -> None:
    """Plain AIMD settles near 1-2 here whatever the maximum: a cut a round, one call
    back a round. Judged cuts stop once smaller figures are seen refused as often."""
    figures = rounds(AIMD(maximum), share, 0, seed, 1000)
    assert statistics.fmean(figures[len(figures) // 2 :]) >= maximum / 10


@given(st.integers(4, 128), st.data())
def test_refusals_from_load_still_bring_the_figure_to_the_capacity(
    maximum: int, data: st.DataObject
) -> None:
    capacity = data.draw(st.integers(2, max(2, maximum // 2)), label="capacity")
    aimd = AIMD(maximum)
    figures = rounds(aimd, None, capacity, data.draw(st.integers(0, 2**32)), 1000)
    assert capacity / 2 <= statistics.fmean(figures[len(figures) // 2 :]) <= 2 * capacity


def test_once_smaller_figures_are_refused_as_often_refusals_stop_cutting() -> None:
    aimd = AIMD(32)
    rounds(aimd, 0.45, 0, seed=1, calls=2000)
    cuts = aimd.cuts
    figures = rounds(aimd, 0.45, 0, seed=2, calls=2000)  # ~900 more refusals
    assert aimd.cuts - cuts < 10
    assert statistics.fmean(figures) >= 16


@given(st.integers(0, 100), st.integers(1, 100), st.integers(0, 100), st.integers(1, 100))
def test_clearly_higher_means_higher_by_a_margin(
    refused: int, started: int, other_refused: int, other_started: int
) -> None:
    refused, other_refused = min(refused, started), min(other_refused, other_started)
    if clearly_higher(refused, started, other_refused, other_started):
        assert refused / started > other_refused / other_started + 0.05
        assert not clearly_higher(other_refused, other_started, refused, started)


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


@given(
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 3)), max_size=8),
)
def test_starts_counted_at_once_equal_starts_one_by_one(
    maximum: int, rounds: list[tuple[int, int]]
) -> None:
    """The fast path's answers, told to AIMD in one go, leave it as one start each would."""
    one_by_one, at_once = AIMD(maximum), AIMD(maximum)
    for starts, refusals in rounds:
        for _ in range(starts):
            one_by_one.start(maximum)
        at_once.started_at_maximum(starts)
        assert at_once._started == pytest.approx(one_by_one._started)
        assert at_once._refused == pytest.approx(one_by_one._refused)
        for _ in range(refusals):  # refusals in between, judged on the same counts
            assert one_by_one.overload(one_by_one.cuts, maximum) == at_once.overload(
                at_once.cuts, maximum
            )
        assert at_once.current == one_by_one.current
