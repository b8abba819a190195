"""``hedge_after="p95"``: hedge a call once it has waited past a quantile of recent answers.

The estimator is pure and property-tested; the pool is tested with in-process providers
whose answers the test controls (a copy that never answers until cancelled), on both
backends. Times are read on the pool's own clock: the hedge's copy must start no
earlier than the threshold after the call did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import Deployment, JobSpec, LLMMessage, LLMResponse, Pool
from llmfanout._cli._main import main as cli_main
from llmfanout._deploy._latency import MIN_SAMPLES, LatencyWindow, parse_quantile

# -- the estimator ------------------------------------------------------------------------

latencies = st.floats(min_value=0, max_value=1e4, allow_nan=False)


def nearest_rank(samples: Sequence[float], quantile: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


@given(
    samples=st.lists(latencies, max_size=600),
    quantile=st.floats(min_value=0.01, max_value=0.999),
    size=st.integers(min_value=MIN_SAMPLES, max_value=300),
)
def test_the_quantile_is_the_nearest_rank_over_the_last_samples(
    samples: list[float], quantile: float, size: int
) -> None:
    window = LatencyWindow(quantile, size=size)
    for seconds in samples:
        window.add(seconds)
    recent = samples[-size:]
    assert len(window) == len(recent)
    if len(recent) < MIN_SAMPLES:
        assert window.exact() is None and window.threshold is None
        return
    exact = window.exact()
    assert exact == nearest_rank(recent, quantile)
    assert sum(s > exact for s in recent) <= (1 - quantile) * len(recent)
    assert sum(s <= exact for s in recent) >= quantile * len(recent)


@given(samples=st.lists(latencies, min_size=MIN_SAMPLES, max_size=400), data=st.data())
def test_the_cached_threshold_is_recent_and_renewed_once_a_sixteenth_is_new(
    samples: list[float], data: Any
) -> None:
    window = LatencyWindow(0.95, size=128)
    renewed = None
    for count, seconds in enumerate(samples, 1):
        window.add(seconds)
        if data.draw(st.booleans()):  # reads come at any time, or not at all
            threshold = window.threshold
            if count >= MIN_SAMPLES:
                assert threshold is not None and threshold in samples[:count][-128 - 128 // 16 :]
            if threshold != renewed:
                assert threshold == window.exact()  # a new value is the quantile now
                renewed = threshold
    assert window.threshold is not None  # at least MIN_SAMPLES came in


@pytest.mark.parametrize(
    ("given", "share"),
    [("p95", 0.95), ("P50", 0.5), (" p99.9 ", 0.999), ("p1", 0.01), ("p0", None), ("p100", None),
     ("95", None), ("p", None), ("p-5", None), ("fast", None), ("p95%", None)],
)  # fmt: skip
def test_parse_quantile(given: str, share: float | None) -> None:
    assert parse_quantile(given) == (None if share is None else pytest.approx(share))


# -- checked up front -----------------------------------------------------------------------


class Scripted:
    """Answers by prompt: ``slow`` after 0.1 s of simulated latency, ``stuck`` never
    (until cancelled) if it ``hangs``, anything else at once; records when each call came."""

    def __init__(self, name: str, *, hangs: bool = False) -> None:
        self.name = name
        self.hangs = hangs
        self.calls: list[tuple[str, float]] = []
        self.cancelled = 0

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        text = messages[-1].content
        self.calls.append((text, anyio.current_time()))
        answered = False
        try:
            if text.startswith("slow"):
                await anyio.sleep(0.1)  # the latency the quantile is learnt from
            elif text == "stuck" and self.hangs:
                await anyio.Event().wait()  # only a cancellation ends it
            else:
                await anyio.lowlevel.checkpoint()
            answered = True
        finally:
            if not answered:
                self.cancelled += 1
        return LLMResponse(f"{self.name}: {text}", model="m")


@pytest.mark.parametrize("bad", ["p100", "p0", "95", "soon", "", -1, 0, True, [1]])
def test_a_bad_hedge_after_is_refused_at_construction(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"hedge_after is .*a latency quantile such as 'p95'"):
        Pool([Scripted("a")], hedge_after=bad)
    with pytest.raises(ValueError, match="JobSpec: hedge_after is"):
        JobSpec(deployments=[{"name": "a", "provider": "echo"}], hedge_after=bad)


def test_the_cli_refuses_a_bad_hedge_after_before_anything_is_sent(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "d.json"
    listing.write_text('[{"name": "a", "provider": "echo"}]')
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "hi"}\n')
    argv = ["run", str(source), "-o", str(tmp_path / "o.jsonl"), "--deployments", str(listing)]
    assert cli_main([*argv, "--hedge-after", "p100"]) == 2
    assert "--hedge-after is 'p100'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    assert cli_main([*argv, "--hedge-after", "p90", "--quiet"]) == 0


# -- hedging past the quantile only -----------------------------------------------------------


def ask(text: str) -> list[LLMMessage]:
    return [LLMMessage("user", text)]


@pytest.mark.anyio
@pytest.mark.parametrize("entered", [False, True], ids=["own-group", "async-with"])
async def test_calls_are_hedged_only_past_the_quantile_of_recent_answers(entered: bool) -> None:
    # Entered (async with pool): one timer hedges every call; else a task group per call.
    async with AsyncExitStack() as stack:
        stack.enter_context(anyio.fail_after(30))  # a bug fails the test, never hangs
        first, second = Scripted("first", hangs=True), Scripted("second")
        pool = Pool(
            [
                Deployment(name="first", provider=first, weight=100.0),  # takes each call first
                Deployment(name="second", provider=second),
            ],
            hedge_after="p95",
        )
        if entered:
            await stack.enter_async_context(pool)
        assert pool.hedge_delay is None  # no answers yet: no quantile, no hedge
        # Too few answers to know the quantile: a slow one is not hedged.
        lone = await pool.complete(ask("slow 0"))
        assert "hedged" not in lone.metadata and second.calls == []
        async with anyio.create_task_group() as tg:
            for n in range(1, MIN_SAMPLES):
                tg.start_soon(pool.complete, ask(f"slow {n}"))
        threshold = pool.hedge_delay
        assert threshold is not None and threshold >= 0.1  # every answer took 0.1 s or more
        assert all(s.hedges == 0 for s in pool.stats().values())

        # An answer before the threshold: no copy.
        quick = await pool.complete(ask("quick"))
        assert quick.metadata["deployment"] == "first" and "hedged" not in quick.metadata
        assert [text for text, _ in second.calls if text == "quick"] == []

        # No answer: a copy goes to the other deployment past the threshold, and wins.
        answer = await pool.complete(ask("stuck"))
        assert answer.metadata == {"deployment": "second", "hedged": True, **answer.metadata}
        [(_, began)] = [c for c in first.calls if c[0] == "stuck"]
        [(_, hedged)] = [c for c in second.calls if c[0] == "stuck"]
        assert hedged - began >= threshold
        assert first.cancelled == 1  # the loser was cancelled, not left running
        assert pool.stats()["second"].hedges == 1
        # The copy cut short counts as waited at least that long: the quantile does not fall.
        assert pool.hedge_delay is not None and pool.hedge_delay >= 0.1
