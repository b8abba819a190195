"""HeaderPacer: the pure core against a simulated honest server (generated), the async
layer (order, cancellation, probes), and raw HTTP calls against the fake server's limits."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import HeaderPacer, Limiter, RateLimitBudget, RateLimitInfo, parse_rate_limit_headers
from llmfanout._flow._pacing import _MARGIN, _PROBE_WAIT

from support.fake_llm_server import (
    FakeLLMServer,
    Fault,
    RecordedRequest,
    ServerLimit,
    serve_fake_llm,
)

EPS = 1e-9


def budget(limit: int, remaining: int, reset: float) -> RateLimitInfo:
    return RateLimitInfo(requests=RateLimitBudget(limit, remaining, reset))


# -- the pure core ----------------------------------------------------------------------


def test_a_pacer_is_a_limiter() -> None:
    assert isinstance(HeaderPacer(), Limiter)


def test_nothing_known_admits_at_once() -> None:
    pacer = HeaderPacer()
    assert [pacer.book(5.0)[0] for _ in range(100)] == [5.0] * 100
    assert pacer.starts == 100


def test_paces_at_the_advertised_per_minute_rate_after_one_second_of_burst() -> None:
    pacer = HeaderPacer()
    _, ticket = pacer.book(0.0)
    pacer.observe(budget(600, 599, 0.1), ticket, now=0.0)
    starts = [pacer.book(0.0)[0] for _ in range(30)]
    assert starts[:10] == [0.0] * 10  # one second's worth (10) at once
    assert starts[10:] == pytest.approx([0.1 * k for k in range(1, 21)])


def test_calls_started_after_the_reported_one_count_against_remaining() -> None:
    pacer = HeaderPacer()
    tickets = [pacer.book(0.0)[1] for _ in range(8)]
    # The first call's answer: 5 left of 60, refilled at one a second. The 7 calls
    # started after it were not counted yet: 2 over, one more for the next call, and a
    # tenth of a second's worth kept in hand.
    pacer.observe(budget(60, 5, 55.0), tickets[0], now=1.0)
    assert pacer.ready_at(1.0) == pytest.approx(1.0 + 3.0 + _MARGIN)


def test_a_stale_report_is_ignored() -> None:
    pacer = HeaderPacer()
    first, second = pacer.book(0.0)[1], pacer.book(0.0)[1]
    pacer.observe(budget(60, 0, 60.0), second, now=0.0)
    blocked = pacer.ready_at(0.0)
    pacer.observe(budget(60, 60, 0.0), first, now=0.0)  # older: says nothing new
    assert pacer.ready_at(0.0) == blocked > 0


def test_a_day_long_budget_refills_at_its_own_rate() -> None:
    pacer = HeaderPacer()
    _, ticket = pacer.book(0.0)
    # 200 a day, none left, whole in 86400 s: one every 432 s, not 200 a minute (and the
    # margin kept in hand: a tenth of a second's worth of 200 a minute).
    pacer.observe(budget(200, 0, 86_400.0), ticket, now=0.0)
    assert pacer.ready_at(0.0) == pytest.approx(432.0 * (1 + 200 / 60 * _MARGIN))


def test_a_remaining_with_no_limit_is_not_believed() -> None:
    pacer = HeaderPacer()
    _, ticket = pacer.book(0.0)
    info = RateLimitInfo(requests=RateLimitBudget(None, 0, 7.5))
    pacer.observe(info, ticket, now=0.0)
    # Nothing says how fast it refills: once this waited for ever (issue 23, 1).
    assert pacer.ready_at(0.0) == 0.0
    # ...until a report that does.
    pacer.observe(budget(60, 2, 58.0), ticket, now=1.0)
    assert pacer.ready_at(1.0) == 1.0


def test_tokens_are_paced_by_the_token_budget() -> None:
    pacer = HeaderPacer()
    _, ticket = pacer.book(0.0, 100)
    # 250 left of 60,000 a minute (1,000 a second), 100 kept in hand: then 100 tokens
    # every 0.1 s.
    info = RateLimitInfo(tokens=RateLimitBudget(60_000, 250, 59.75))
    pacer.observe(info, ticket, now=0.0)
    assert pacer.ready_at(0.0, 100) == 0.0
    starts = [pacer.book(0.0, 100)[0] for _ in range(5)]
    assert starts == pytest.approx([0, 0.05, 0.15, 0.25, 0.35])
    assert pacer.ready_at(0.0, 0) == starts[-1]  # a call of no tokens still keeps its turn


def test_a_shrinking_limit_slows_the_pace() -> None:
    pacer = HeaderPacer()
    _, ticket = pacer.book(0.0)
    pacer.observe(budget(600, 599, 0.1), ticket, now=0.0)
    _, ticket = pacer.book(0.0)
    pacer.observe(budget(60, 59, 1.0), ticket, now=0.0)
    starts = [pacer.book(0.0)[0] for _ in range(3)]
    assert starts == pytest.approx([0.0, 1.0, 2.0])  # one a second now


def test_after_a_cooldown_one_probe_goes_alone() -> None:
    clock = [0.0]
    pacer = HeaderPacer(clock=lambda: clock[0])
    pacer.cooldown(2.0)
    when, probe = pacer.book(0.0)
    assert when == 2.0
    assert pacer.ready_at(2.0) == 2.0 + _PROBE_WAIT  # the others wait for its answer
    clock[0] = 2.5
    pacer.observe(None, probe)
    assert pacer.ready_at(2.5) == 2.5


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    per_minute = draw(st.integers(60, 6000))  # at least one a second: a bucket holds one
    return {
        "per_minute": per_minute,
        "burst": draw(st.floats(1.0, 60.0)),  # seconds' worth the server's bucket holds
        "initial": draw(st.floats(0.0, 1.0)),
        "calls": draw(st.integers(1, 120)),
        "concurrency": draw(st.integers(1, 64)),
        "costs": draw(st.lists(st.integers(1, 3 * per_minute), min_size=1, max_size=8)),
        "latencies": draw(st.lists(st.floats(0.001, 5.0), min_size=1, max_size=8)),
        "tokens": draw(st.booleans()),
    }


class HonestServer:
    """A token bucket (per minute, ``burst`` seconds deep) that reports itself truly."""

    def __init__(self, per_minute: int, burst: float, initial: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60
        self.capacity = self.rate * burst
        self.level = self.capacity * initial
        self.at = 0.0
        self.refused = 0

    def admit(self, now: float, cost: float) -> RateLimitBudget:
        self.level = min(self.capacity, self.level + self.rate * (now - self.at))
        self.at = now
        if self.level + EPS >= min(cost, self.capacity):
            self.level -= cost
        else:
            self.refused += 1
        remaining = max(0, math.floor(self.level + EPS))
        return RateLimitBudget(
            self.per_minute, remaining, max(0.0, (self.capacity - self.level) / self.rate)
        )


@given(scenarios())
def test_against_an_honest_server_nothing_is_refused_once_it_has_spoken(
    scenario: dict[str, object],
) -> None:
    """The property the issue asks for: the pacer never admits beyond what the headers
    allow. Calls started before the first report are not bound by it (nothing was known);
    every call after is, whatever the latencies and the order answers come back in."""
    per_minute = scenario["per_minute"]
    calls = scenario["calls"]
    concurrency = scenario["concurrency"]
    costs = scenario["costs"]
    latencies = scenario["latencies"]
    tokens = scenario["tokens"]
    assert isinstance(per_minute, int) and isinstance(calls, int)
    assert isinstance(concurrency, int) and isinstance(tokens, bool)
    assert isinstance(costs, Sequence) and isinstance(latencies, Sequence)
    burst, initial = scenario["burst"], scenario["initial"]
    assert isinstance(burst, float) and isinstance(initial, float)
    server = HonestServer(per_minute, burst, initial)
    pacer = HeaderPacer()
    in_flight: list[tuple[float, int, RateLimitBudget]] = []
    spoken = False
    refused_before = 0
    now = 0.0
    for index in range(calls):
        cost = costs[index % len(costs)] if tokens else 1
        while True:
            when = pacer.ready_at(now, cost)
            answer_at = in_flight[0][0] if in_flight else math.inf
            if len(in_flight) >= concurrency or answer_at <= when:
                assert answer_at < math.inf, "the pacer waits for an answer none will give"
                now = max(now, answer_at)
                _, ticket, reported = heapq.heappop(in_flight)
                if not spoken:
                    spoken, refused_before = True, server.refused
                kind = "tokens" if tokens else "requests"
                pacer.observe(RateLimitInfo(**{kind: reported}), ticket, now=now)
                continue
            break
        start, ticket = pacer.book(now, cost)
        assert start == when
        now = start
        reported = server.admit(now, cost)
        latency = latencies[index % len(latencies)]
        heapq.heappush(in_flight, (now + latency, ticket, reported))
    if spoken:
        assert server.refused == refused_before


@given(
    st.lists(
        st.tuples(st.floats(0, 10), st.integers(0, 100), st.booleans()), min_size=1, max_size=60
    )
)
def test_starts_are_in_arrival_order(steps: list[tuple[float, int, bool]]) -> None:
    pacer = HeaderPacer()
    now, last = 0.0, -math.inf
    for advance, remaining, report in steps:
        now += advance
        start, ticket = pacer.book(now)
        assert start >= max(now, last)
        last = start
        if report:
            pacer.observe(budget(100, remaining, 30.0), ticket, now=start)


# -- the async layer --------------------------------------------------------------------


@pytest.mark.anyio
async def test_acquire_waits_for_the_budget() -> None:
    pacer = HeaderPacer()
    ticket = await pacer.admit()
    # None left; one comes back in 0.05 s (1200 a minute, 20 a second).
    pacer.observe(budget(1200, 0, 3.0), ticket)
    before = anyio.current_time()
    await pacer.acquire()
    assert anyio.current_time() - before >= 0.05 - 1e-3


@pytest.mark.anyio
async def test_a_probe_answer_lets_the_next_caller_on_at_once() -> None:
    pacer = HeaderPacer()
    pacer.cooldown(0.0)
    probe = await pacer.admit()
    admitted = anyio.Event()

    async def second() -> None:
        await pacer.acquire()
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert not admitted.is_set()  # waiting behind the probe
        pacer.observe(None, probe)
        with anyio.fail_after(_PROBE_WAIT / 2):  # woken by the answer, not by the time
            await admitted.wait()


@pytest.mark.anyio
async def test_cancelled_while_waiting_takes_nothing() -> None:
    pacer = HeaderPacer()
    ticket = await pacer.admit()
    pacer.observe(budget(60, 0, 60.0), ticket)  # a second to wait
    with anyio.move_on_after(0.01):
        await pacer.acquire()
    assert pacer.starts == 1
    pacer.observe(budget(60, 60, 0.0), ticket)  # whole again
    with anyio.fail_after(5):
        await pacer.acquire()
    assert pacer.starts == 2


@pytest.mark.anyio
async def test_waiters_are_admitted_in_arrival_order() -> None:
    pacer = HeaderPacer()
    ticket = await pacer.admit()
    pacer.observe(budget(6000, 0, 0.6), ticket)  # 100 a second, none left
    order: list[int] = []

    async def waiter(n: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await pacer.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(6):
            await tg.start(waiter, n)
    assert order == list(range(6))


# -- raw HTTP against the fake server's limits ------------------------------------------


async def paced_calls(
    server: FakeLLMServer, wire: str, count: int, concurrency: int, key: str = "k"
) -> list[int]:
    """``count`` calls through one pacer, retried after 429s: every status seen."""
    pacer = HeaderPacer()
    statuses: list[int] = []
    path = "/v1/chat/completions" if wire == "openai" else "/v1/messages"
    slots = anyio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, n: int) -> None:
        async with slots:
            while True:
                ticket = await pacer.admit()
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]}
                headers = {"x-api-key": key, "x-ticket": str(ticket)}
                response = await client.post(path, json=body, headers=headers)
                pacer.observe(parse_rate_limit_headers(response.headers), ticket)
                statuses.append(response.status_code)
                if response.status_code != 429:
                    return
                retry_after_ms = response.headers.get("retry-after-ms")
                pacer.cooldown(float(retry_after_ms) / 1000 if retry_after_ms else 0.05)

    async with (
        httpx.AsyncClient(base_url=server.base_url) as client,
        anyio.create_task_group() as tg,
    ):
        for n in range(count):
            tg.start_soon(one, client, n)
    return statuses


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_paced_by_the_headers_the_server_is_never_overrun(wire: str) -> None:
    async with serve_fake_llm() as server:
        # 3000 a minute (50 a second), enforced over one second: a burst of 50 at most.
        server.limit = ServerLimit(requests_per_minute=3000, burst=1.0)
        statuses = await paced_calls(server, wire, 90, concurrency=16)
    assert statuses.count(200) == 90
    # A call admitted earlier may reach the server after a later one whose answer we
    # already used: rarely, that one is refused. Never more than a stray few.
    assert len(server.limited) <= 3
    times = [r.time for r in server.requests]
    # On the server's clock: 50 at once, then 50 a second.
    assert times[-1] - times[0] >= (90 - 50 - 1) / 50 - 0.01


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_after_real_429s_the_calls_recover_without_a_storm(wire: str) -> None:
    async with serve_fake_llm() as server:
        # The key's budget is spent when we arrive: the first wave is refused.
        server.limit = ServerLimit(requests_per_minute=6000, burst=0.2, initial=0.0)
        statuses = await paced_calls(server, wire, 60, concurrency=20)
    assert statuses.count(200) == 60
    # The first wave (all 20 in flight) may be refused; after that, hardly any.
    assert statuses.count(429) <= 20 + 3


@pytest.mark.anyio
async def test_a_limit_that_shrinks_mid_run_slows_the_calls_down() -> None:
    async with serve_fake_llm() as server:
        server.limit = ServerLimit(requests_per_minute=6000, burst=0.1)

        def shrink(request: RecordedRequest) -> Fault | None:
            if len(server.requests) == 40:
                server.limit = ServerLimit(requests_per_minute=1200, burst=0.1)
            return None

        server.fault_for = shrink
        statuses = await paced_calls(server, "openai", 80, concurrency=8)
    assert statuses.count(200) == 80
    assert statuses.count(429) <= 8 + 3  # those in flight when it shrank, and a few
    answered = [r.time for r in server.requests if r not in server.limited]
    late = answered[-20:]
    assert late[-1] - late[0] >= (20 - 2 - 1) / 20 - 0.01  # 20 a second now
