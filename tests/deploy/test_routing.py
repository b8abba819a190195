"""Routing invariants, by property: a call never goes where it cannot fit, and goes to
the least loaded deployment (for its weight) among those that can start it now."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import Deployment, EchoProvider, ErrorResponse, Pool
from llmfanout._deploy._pool import _Call
from llmfanout.errors import BadRequestError, ServerError

shapes = st.lists(
    st.tuples(
        st.none() | st.integers(1, 1000),  # context window
        st.integers(0, 20),  # calls in flight
        st.sampled_from([0.5, 1.0, 3.0]),  # weight
    ),
    min_size=1,
    max_size=5,
)


@given(shapes, st.integers(1, 1200))
def test_the_choice_fits_and_is_the_least_loaded(
    shape: list[tuple[int | None, int, float]], need: int
) -> None:
    pool = Pool(
        [
            Deployment(name=f"d{i}", provider=EchoProvider(), context_window=w, weight=weight)
            for i, (w, _, weight) in enumerate(shape)
        ]
    )
    for slot, (_, in_flight, _) in zip(pool._slots, shape, strict=True):
        slot.in_flight = in_flight
    call = _Call(pool, [], None)
    call.need = need

    async def choose() -> None:
        fitting = [
            s
            for s in pool._slots
            if s.deployment.context_window is None or need <= s.deployment.context_window
        ]
        if not fitting:
            with pytest.raises(BadRequestError, match="context_window"):
                pool._choose(call, None, None)
            return
        chosen = pool._choose(call, None, None)
        assert chosen in fitting
        assert chosen.in_flight / chosen.weight == min(s.in_flight / s.weight for s in fitting)

    anyio.run(choose)


def test_a_transient_failure_sends_the_next_attempt_elsewhere() -> None:
    pool = Pool([EchoProvider(), EchoProvider()])
    call = _Call(pool, [], None)

    async def choose() -> None:
        first = pool._choose(call, None, None)
        call.failed = frozenset({first.index})
        first.in_flight = 0
        assert pool._choose(call, None, None) is not first

    anyio.run(choose)


@pytest.mark.anyio
async def test_a_provider_that_reports_nothing_fails_over_too() -> None:
    """The quick path (no limits reported yet) accounts for failures as the paced one."""
    broken = EchoProvider([ErrorResponse(ServerError("down", status_code=503))], strict=True)
    pool = Pool([broken, EchoProvider()], trip_after=1)
    with pytest.raises(ServerError):
        await pool.complete([{"role": "user", "content": "x"}])  # type: ignore[list-item]
    answer = await pool.complete([{"role": "user", "content": "x"}])  # type: ignore[list-item]
    assert answer.metadata["deployment"] == "deployment-2"
    assert pool.stats()["deployment-1"].state == "out"
