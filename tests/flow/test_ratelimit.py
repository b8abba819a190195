"""RateLimit: the bucket maths (pure, generated), acquire and cooldown, sharing, the executor."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    RateLimit,
    RetryConfig,
)
from llmfanout._flow._ratelimit import IMAGE_TOKENS, estimate_tokens, is_rate_limit_error
from llmfanout.errors import RateLimitError, ServerError

from support.helpers import ask

pytestmark = pytest.mark.anyio

EPS = 1e-6


class FakeClock:
    """A clock the test moves by hand. ``read_again`` waits until it has been read anew."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        self._watch: tuple[int, anyio.Event] | None = None

    def __call__(self) -> float:
        self.reads += 1
        if self._watch is not None and self.reads >= self._watch[0]:
            self._watch[1].set()
        return self.now

    async def read_again(self, times: int = 2) -> None:
        """Return once a waiting caller has looked at the time again (and decided)."""
        event = anyio.Event()
        self._watch = (self.reads + times, event)
        await event.wait()


class Admitted:
    """Callers admitted so far, in order; ``reach(n)`` waits until there are ``n``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._changed = anyio.Event()

    def add(self, name: str) -> None:
        self.names.append(name)
        self._changed.set()
        self._changed = anyio.Event()

    async def reach(self, n: int) -> None:
        while len(self.names) < n:
            await self._changed.wait()


async def acquire_into(
    limit: RateLimit,
    admitted: Admitted,
    name: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Start with ``await tg.start(...)``: the caller goes on once this one is queued."""
    task_status.started()  # the parent resumes only after we block in acquire()
    await limit.acquire()
    admitted.add(name)


async def spent_limit(clock: FakeClock) -> RateLimit:
    """100 calls a second, its one-second burst already taken: the next caller waits."""
    limit = RateLimit(requests_per_minute=6000, clock=clock)
    for _ in range(100):
        await limit.acquire()
    return limit


# -- the bucket maths, pure (book: explicit clock, no sleeping) --------------------------


def test_a_burst_of_one_second_then_one_per_interval() -> None:
    limit = RateLimit(requests_per_minute=600)  # 10 a second
    times = [limit.book(0.0) for _ in range(13)]
    assert times[:10] == [0.0] * 10
    assert times[10:] == pytest.approx([0.1, 0.2, 0.3])
    assert limit.book(5.0) == 5.0  # refilled while idle


def test_a_slow_rate_still_allows_one_request() -> None:
    limit = RateLimit(requests_per_minute=6)  # one every 10 s, a burst of one
    assert [limit.book(0.0) for _ in range(3)] == pytest.approx([0.0, 10.0, 20.0])


def test_tokens_are_limited_and_a_call_over_the_burst_waits_for_a_full_bucket() -> None:
    limit = RateLimit(tokens_per_minute=6000)  # 100 a second, a burst of 100
    assert limit.book(0.0, 60) == 0.0
    assert limit.book(0.0, 60) == pytest.approx(0.2)  # 40 left; 20 more come in 0.2 s
    assert limit.book(0.2, 250) == pytest.approx(1.2)  # needs a full bucket: 100 tokens
    assert limit.book(1.2, 10) == pytest.approx(2.8)  # and left a debt of 150 behind it
    assert limit.book(2.8, 0) == 2.8  # a call of no tokens is not held by the token bucket


def test_a_call_of_few_tokens_does_not_overtake_one_waiting_for_many() -> None:
    limit = RateLimit(tokens_per_minute=60)  # one a second
    assert [limit.book(0.0, 1), limit.book(0.0, 1), limit.book(0.0, 0)] == [0.0, 1.0, 1.0]


def test_both_limits_apply_together() -> None:
    limit = RateLimit(requests_per_minute=120, tokens_per_minute=600)  # 2 req/s, 10 tok/s
    # Calls of 8 tokens wait for the token bucket (2 left, then 0 left at 0.6 s)...
    assert [limit.book(0.0, 8) for _ in range(3)] == pytest.approx([0.0, 0.6, 1.4])
    # ...calls of none only for the request bucket (one left at 1.4 s, then one per 0.5 s).
    assert [limit.book(0.0) for _ in range(2)] == pytest.approx([1.4, 1.9])


def test_settle_charges_extra_usage_and_refunds_unused_estimates() -> None:
    clock = FakeClock()
    clock.now = 0.0
    limit = RateLimit(tokens_per_minute=6000, clock=clock)  # 100 a second
    assert limit.book(0.0, 100) == 0.0
    limit.settle(100, 150)  # used 50 more than booked: a debt
    assert limit.ready_at(0.0, 10) == pytest.approx(0.6)
    limit.settle(100, 20)  # (another call) used 80 fewer than booked
    assert limit.ready_at(0.0, 10) == pytest.approx(0.0)
    limit.settle(100, None)  # no usage reported: the estimate stands
    assert limit.ready_at(0.0, 40) == pytest.approx(0.1)


def test_a_cooldown_holds_every_start_until_it_ends() -> None:
    clock = FakeClock()
    clock.now = 0.0
    limit = RateLimit(requests_per_minute=600, clock=clock)
    assert limit.book(0.0) == 0.0
    limit.cooldown(2.5)
    assert limit.book(0.0) == 2.5
    assert limit.book(3.0) == 3.0
    limit.cooldown(1.0)  # a shorter cooldown never shortens one already running
    clock.now = 3.0
    limit.cooldown(0.5)
    assert limit.book(3.0) == 3.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"requests_per_minute": 0}, ValueError, "requests_per_minute is 0; give a number > 0"),
        ({"tokens_per_minute": -5}, ValueError, "tokens_per_minute is -5"),
        ({"requests_per_minute": True}, ValueError, "requests_per_minute is True"),
        ({"requests_per_minute": "60"}, ValueError, "requests_per_minute is '60'"),
        ({"tokens_per_minute": math.nan}, ValueError, "tokens_per_minute is nan"),
        ({"clock": 3}, TypeError, "clock is a int; give a callable"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RateLimit(**kwargs)


def test_repr_shows_the_limits() -> None:
    assert repr(RateLimit(requests_per_minute=500)) == (
        "RateLimit(requests_per_minute=500, tokens_per_minute=None)"
    )


# Arrivals come in order; each is a call of some tokens or, now and then, a 429 cooldown.
arrival = st.tuples(
    st.floats(0, 2, allow_nan=False),  # seconds since the previous arrival
    st.integers(0, 400),  # tokens
    st.one_of(st.none(), st.floats(0.01, 3)),  # or a cooldown of that many seconds
)


@given(
    rpm=st.one_of(st.none(), st.floats(1, 6000)),
    tpm=st.one_of(st.none(), st.floats(60, 60000)),
    arrivals=st.lists(arrival, min_size=1, max_size=80),
)
def test_no_window_ever_admits_more_than_rate_times_window_plus_burst(
    rpm: float | None, tpm: float | None, arrivals: list[tuple[float, int, float | None]]
) -> None:
    clock = FakeClock()
    clock.now = 0.0
    limit = RateLimit(requests_per_minute=rpm, tokens_per_minute=tpm, clock=clock)
    admitted: list[tuple[float, int]] = []  # (start time, tokens)
    cooldowns: list[tuple[float, float]] = []  # (from, until)
    previous = -math.inf
    for gap, tokens, cooldown in arrivals:
        clock.now += gap
        if cooldown is not None:
            limit.cooldown(cooldown)
            cooldowns.append((clock.now, clock.now + cooldown))
            continue
        start = limit.book(clock.now, tokens)
        assert start >= clock.now and start >= previous  # never early, first come first served
        previous = start
        admitted.append((start, tokens))
        for _, until in cooldowns:  # a call arriving during a cooldown waits it out
            if clock.now < until:
                assert start >= until - EPS

    for rate_per_minute, cost in ((rpm, lambda t: 1), (tpm, lambda t: t)):
        if rate_per_minute is None:
            continue
        rate = rate_per_minute / 60
        burst = max(rate, 1.0)
        for i in range(len(admitted)):
            used = biggest = 0.0
            for j in range(i, len(admitted)):
                c = cost(admitted[j][1])
                if rate_per_minute is tpm and c == 0:
                    continue  # a call of no tokens does not touch the token bucket
                used += c
                biggest = max(biggest, c)
                window = admitted[j][0] - admitted[i][0]
                # A single call larger than the burst runs the bucket into debt.
                assert used <= rate * window + burst + max(0.0, biggest - burst) + EPS


@given(
    rpm=st.floats(6, 6000),
    count=st.integers(1, 300),
)
def test_callers_arriving_together_are_spaced_exactly_by_the_rate(rpm: float, count: int) -> None:
    limit = RateLimit(requests_per_minute=rpm)
    rate = rpm / 60
    burst = max(rate, 1.0)
    for k in range(count):  # the limiter is never more careful than it must be
        expected = max(0.0, (k + 1 - burst) / rate)
        assert limit.book(0.0) == pytest.approx(expected, abs=1e-9, rel=1e-9)


# -- acquire: waits, order, cancellation, cooldown (a fake clock, so nothing is timed) ---


async def test_acquire_admits_the_burst_at_once_then_paces_in_arrival_order() -> None:
    clock = FakeClock()
    limit = RateLimit(requests_per_minute=6000, clock=clock)  # 100 a second
    admitted = Admitted()
    with anyio.fail_after(5):
        for i in range(100):
            await limit.acquire()
            admitted.add(f"burst{i}")
        async with anyio.create_task_group() as tg:
            for name in "abcde":
                await tg.start(acquire_into, limit, admitted, name)
            await clock.read_again()
            assert len(admitted.names) == 100  # no time has passed: nobody more
            clock.now += 0.01
            await admitted.reach(101)
            clock.now += 0.03
            await admitted.reach(104)
            await clock.read_again()
            assert len(admitted.names) == 104
            clock.now += 1
    assert admitted.names[100:] == list("abcde")


async def test_callers_that_give_up_waiting_leave_nothing_booked() -> None:
    clock = FakeClock()
    admitted = Admitted()
    with anyio.fail_after(5):
        limit = await spent_limit(clock)
        async with anyio.create_task_group() as tg:
            for i in range(200):  # two seconds of callers queue up...
                await tg.start(acquire_into, limit, admitted, str(i))
            tg.cancel_scope.cancel()  # ...and leave
        clock.now += 0.01  # one request's worth of time
        with anyio.fail_after(1):  # had the 200 kept their places, this would wait 2 s
            await limit.acquire()
    assert admitted.names == []


async def test_one_caller_leaving_the_queue_lets_the_next_one_on() -> None:
    clock = FakeClock()
    admitted = Admitted()
    with anyio.fail_after(5):
        limit = await spent_limit(clock)
        async with anyio.create_task_group() as tg:
            scopes = {}
            for name in "abc":
                scope = scopes[name] = anyio.CancelScope()

                async def wait(
                    name: str = name,
                    scope: anyio.CancelScope = scope,
                    *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                ) -> None:
                    with scope:
                        await acquire_into(limit, admitted, name, task_status=task_status)

                await tg.start(wait)
            scopes["a"].cancel()  # the head of the queue gives up
            clock.now += 0.02
            await admitted.reach(2)
    assert admitted.names == ["b", "c"]


async def test_a_cooldown_holds_callers_already_waiting() -> None:
    clock = FakeClock()
    admitted = Admitted()
    with anyio.fail_after(5):
        limit = await spent_limit(clock)
        async with anyio.create_task_group() as tg:
            for name in "abc":
                await tg.start(acquire_into, limit, admitted, name)
            limit.cooldown(0.05)  # a 429 elsewhere
            clock.now += 0.04  # the bucket would allow 4 by now; the cooldown allows none
            await clock.read_again()
            assert admitted.names == []
            await tg.start(acquire_into, limit, admitted, "late")  # a newcomer waits too
            assert admitted.names == []
            clock.now += 0.01
            await admitted.reach(4)
    assert admitted.names == ["a", "b", "c", "late"]


async def test_executors_sharing_one_limit_are_limited_together() -> None:
    clock = FakeClock()  # frozen: only the burst of 100 can ever start

    async def run(limits: list[RateLimit]) -> int:
        providers = [EchoProvider(), EchoProvider()]
        executors = [
            ParallelLLMExecutor(p, max_concurrency=80, rate_limit=limit)
            for p, limit in zip(providers, limits, strict=True)
        ]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for name, executor in zip("ab", executors, strict=True):
                    tg.start_soon(executor.execute, {f"{name}{i}": ask("x") for i in range(75)})
                await anyio.wait_all_tasks_blocked()  # the clock is frozen: no more can go
                tg.cancel_scope.cancel()
        return sum(p.call_count for p in providers)

    shared = RateLimit(requests_per_minute=6000, clock=clock)
    assert await run([shared, shared]) == 100
    own = [RateLimit(requests_per_minute=6000, clock=clock) for _ in range(2)]
    assert await run(own) == 150


async def test_the_executor_books_estimated_tokens_and_settles_with_usage() -> None:
    clock = FakeClock()
    limit = RateLimit(tokens_per_minute=60_000, clock=clock)  # 1000 a second
    provider = EchoProvider(
        [LLMResponse("a", usage={"total_tokens": 900}), LLMResponse("b", usage={})]
    )
    executor = ParallelLLMExecutor(provider, rate_limit=limit)
    await executor.execute({"t": ask("x", estimated_tokens=100)})
    assert limit.ready_at(clock.now, 100) == pytest.approx(clock.now)
    assert limit.ready_at(clock.now, 101) > clock.now  # 900 used, not the 100 estimated
    clock.now += 1
    await executor.execute({"t": ask("x", estimated_tokens=300)})  # no usage: estimate stays
    assert limit.ready_at(clock.now, 700) == pytest.approx(clock.now)
    assert limit.ready_at(clock.now, 701) > clock.now


async def test_functions_are_not_rate_limited() -> None:
    clock = FakeClock()  # frozen: one request, then nothing more could start
    limit = RateLimit(requests_per_minute=60, clock=clock)
    executor = ParallelLLMExecutor(EchoProvider(), rate_limit=limit)
    with anyio.fail_after(5):
        results = await executor.execute_mixed(
            {"llm": ask("x"), **{str(i): DeterministicTask(abs, (-i,)) for i in range(20)}}
        )
    assert all(r.success for r in results.values())


# -- in real time, small numbers ---------------------------------------------------------


async def test_acquire_paces_in_real_time() -> None:
    limit = RateLimit(requests_per_minute=60 * 100)  # 100 a second, a burst of 100
    starts: list[float] = []

    async def one() -> None:
        await limit.acquire()
        starts.append(anyio.current_time())

    with anyio.fail_after(10):
        begin = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(120):
                tg.start_soon(one)
    offsets = sorted(s - begin for s in starts)
    assert offsets[99] < 0.5  # the burst goes at once (without it: 1 s)
    assert offsets[-1] >= 0.19  # the last 20 at 100 a second: 0.2 s
    for i in range(100, 120):  # never ahead of the rate
        assert offsets[i] >= (i - 99) / 100 - 0.002


class ServerWithQuota:
    """Answers the first call, after 10 ms, with a 429 (retry after 0.15 s), and refuses
    any call that starts in those 0.15 s: what a provider does when a client keeps
    knocking."""

    def __init__(self) -> None:
        self.blocked_until = -math.inf
        self.refused = 0
        self.starts: list[float] = []

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        now = anyio.current_time()
        self.starts.append(now)
        if len(self.starts) == 1:
            await anyio.sleep(0.01)  # meanwhile the other callers queue in the limiter
            self.blocked_until = anyio.current_time() + 0.15
        if len(self.starts) == 1 or now < self.blocked_until:
            self.refused += 1
            raise RateLimitError("slow down", status_code=429, retry_after=0.15)
        await anyio.sleep(0.01)
        return LLMResponse("ok")


async def test_one_429_pauses_every_start_instead_of_becoming_many() -> None:
    server = ServerWithQuota()
    limit = RateLimit(requests_per_minute=60 * 10)  # 10 a second, a burst of 10
    retry = RetryConfig(max_attempts=3, initial_delay=0, max_delay=1)
    executor = ParallelLLMExecutor(
        server, max_concurrency=20, default_retry=retry, rate_limit=limit
    )
    with anyio.fail_after(10):
        begin = anyio.current_time()
        results = await executor.execute({str(i): ask(str(i)) for i in range(13)})
    assert all(r.success for r in results.values())
    # The three beyond the burst were already queued (for 0.1 s, 0.2 s, 0.3 s) when the
    # 429 came: they, and the retry, start only once the cooldown is over.
    assert server.refused == 1
    later = sorted(s - begin for s in server.starts)[10:]
    assert len(later) == 4 and min(later) >= (0.01 + 0.15) * 0.95


# -- helpers of the executor -------------------------------------------------------------


def test_estimated_tokens_wins_over_the_guess() -> None:
    assert estimate_tokens(ask("x" * 400, estimated_tokens=7), {"max_tokens": 50}) == 7


def test_the_guess_counts_text_messages_and_max_tokens() -> None:
    task = LLMTask([LLMMessage("system", "s" * 40), LLMMessage("user", "u" * 60)])
    assert estimate_tokens(task, None) == 100 // 4 + 2 * 4
    assert estimate_tokens(task, {"max_tokens": 500}) == 33 + 500
    assert estimate_tokens(task, {"max_completion_tokens": 70}) == 33 + 70


def test_only_a_429_with_retry_after_starts_a_cooldown() -> None:
    assert is_rate_limit_error(RateLimitError("x", status_code=429, retry_after=1.5))
    assert not is_rate_limit_error(RateLimitError("x", status_code=429))
    assert not is_rate_limit_error(ServerError("x", status_code=503, retry_after=2))
    assert not is_rate_limit_error(ValueError("x"))


# -- event loops: one at a time, several in turn -------------------------------------------


def test_a_limit_serves_successive_event_loops_and_keeps_its_budget() -> None:
    # Each loop has its own clock (trio's starts at a random offset): the second trio
    # run used to wait hours, or forget the budget, depending on the two offsets.
    limit = RateLimit(requests_per_minute=6)  # a burst of one, then one per 10 s

    async def spend() -> None:
        await limit.acquire()
        limit.settle(0, None)

    async def wait_left() -> float:
        with anyio.move_on_after(0.01):  # it must wait: the budget is spent
            await limit.acquire()
        now = anyio.current_time()
        return limit.ready_at(now) - now

    anyio.run(spend, backend="trio")
    for backend in ("trio", "asyncio", "trio"):
        # Kept (not 0) and on the right clock (not hours), whatever time a loaded machine
        # takes to start three loops.
        assert 5 < anyio.run(wait_left, backend=backend) <= 10


@pytest.mark.parametrize(
    "backends", [("asyncio", "asyncio"), ("trio", "trio"), ("asyncio", "trio")], ids=str
)
def test_a_second_event_loop_gets_a_clear_error_at_its_first_call(
    backends: tuple[str, str],
) -> None:
    limit = RateLimit(requests_per_minute=6000)
    started, release = threading.Event(), threading.Event()

    class Held:
        async def complete(self, messages: Any, config_overrides: Any = None) -> LLMResponse:
            started.set()
            await anyio.to_thread.run_sync(release.wait, 10)
            return LLMResponse("held")

    retry = RetryConfig(max_attempts=3, initial_delay=0)
    held: dict[str, Any] = {}

    async def first_loop() -> None:
        executor = ParallelLLMExecutor(Held(), rate_limit=limit)
        held.update(await executor.execute({"a": LLMTask([LLMMessage("user", "a")])}))

    async def second_loop() -> Any:
        executor = ParallelLLMExecutor(EchoProvider(), rate_limit=limit, default_retry=retry)
        with anyio.fail_after(5):  # it used to hang here on asyncio
            return await executor.execute({"b": LLMTask([LLMMessage("user", "b")])})

    thread = threading.Thread(target=anyio.run, args=(first_loop,), kwargs={"backend": backends[0]})
    thread.start()
    try:
        assert started.wait(10)
        results = anyio.run(second_loop, backend=backends[1])
    finally:
        release.set()
        thread.join(10)
    error = results["b"].error
    assert isinstance(error, RuntimeError) and results["b"].attempts == 1  # not retried
    assert "in use by another event loop" in str(error)
    assert "Give each event loop its own RateLimit" in str(error)
    assert held["a"].value.content == "held"  # the first loop's call was not disturbed


def test_estimate_counts_the_text_of_content_parts_and_a_guess_per_image() -> None:
    parts = LLMTask(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "x" * 80},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": "y" * 20},
                ],
            }
        ]
    )
    plain = ask("x" * 80 + "y" * 20)
    # The parts' characters, not their count: the same text as a plain string estimates
    # the same, and the image adds its flat guess.
    assert estimate_tokens(parts, None) == estimate_tokens(plain, None) + IMAGE_TOKENS
    assert estimate_tokens(plain, None) == 100 // 4 + 4
