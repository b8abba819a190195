"""Adaptive concurrency: AIMD (pure, generated) and the gate against an overloaded server."""

from __future__ import annotations

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_llm_server import serve_fake_llm
from llmfanout._adaptive import AIMD, AdaptiveConcurrency


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


@pytest.mark.anyio
async def test_the_gate_holds_new_calls_after_a_cut() -> None:
    gate = AdaptiveConcurrency(4)
    tokens = [object() for _ in range(4)]
    epochs = [await gate.enter(t) for t in tokens]
    gate.leave(tokens[0], epochs[0], overloaded=True)  # 3 in flight, figure now 2
    assert gate.current == 2
    entered = anyio.Event()
    late = object()

    async def another() -> None:
        await gate.enter(late)
        entered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(another)
        await anyio.wait_all_tasks_blocked()
        gate.leave(tokens[1], epochs[1], overloaded=None)
        await anyio.wait_all_tasks_blocked()
        assert not entered.is_set()  # 2 in flight: at the figure
        gate.leave(tokens[2], epochs[2], overloaded=False)
        await entered.wait()
    gate.leave(late, gate.aimd.cuts, overloaded=False)
    gate.leave(tokens[3], epochs[3], overloaded=False)


@pytest.mark.anyio
async def test_against_a_server_that_refuses_past_20_in_flight_every_call_succeeds() -> None:
    """vLLM-like: no limit headers, 429 without Retry-After once 20 are in flight."""
    gate = AdaptiveConcurrency(64)
    statuses: list[int] = []
    async with serve_fake_llm() as server:
        server.overload_after = 20
        server.latency = 0.02

        async def one(client: httpx.AsyncClient, n: int) -> None:
            token = object()
            while True:
                epoch = await gate.enter(token)
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]}
                response = await client.post("/v1/chat/completions", json=body)
                statuses.append(response.status_code)
                overloaded = response.status_code == 429
                gate.leave(token, epoch, overloaded=overloaded)
                if not overloaded:
                    return
                await anyio.sleep(0.01)

        limits = httpx.Limits(max_connections=100)
        async with (
            httpx.AsyncClient(base_url=server.base_url, limits=limits) as client,
            anyio.create_task_group() as tg,
        ):
            for n in range(150):
                tg.start_soon(one, client, n)
    assert statuses.count(200) == 150
    assert server.peak_in_flight <= 64
    assert gate.aimd.cuts >= 1  # it learned the server is smaller...
    assert statuses.count(429) <= 64  # ...for fewer refusals than one blind wave
