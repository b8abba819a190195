"""RedisRateLimit against a real redis-server: the script's maths (generated, against
RateLimit's), admission, order, cancellation, corrections, cooldown, workers that
disagree, Redis going away and coming back, the executor, and 4 processes sharing one
budget."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    EchoProvider,
    JobError,
    JobSpec,
    Limiter,
    ParallelLLMExecutor,
    RateLimit,
    run_rows,
)
from llmfanout._cli._main import main as cli_main
from llmfanout._flow import _redislimit as redislimit
from llmfanout._flow._redislimit import _SCRIPT
from llmfanout.limits import RedisRateLimit, SharedLimitError

from support.helpers import ask
from support.latency_proxy import LatencyProxy
from support.redis_server import RedisServer, free_port, require_binary, running_redis

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running_redis() as started:
        yield started


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.url


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url) as connected:
        yield connected


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def state(client: redis.Redis, limit: RedisRateLimit) -> dict[str, float]:
    """The budget's fields as numbers, and the server's time as ``now``."""
    fields = {k.decode(): float(v) for k, v in client.hgetall(limit._keys[0]).items()}
    seconds, micros = client.time()
    return {**fields, "now": seconds + micros / 1e6}


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "give requests_per_minute, tokens_per_minute or both"),
        ({"requests_per_minute": 0}, "requests_per_minute is 0"),
        ({"requests_per_minute": True}, "requests_per_minute is True"),
        ({"tokens_per_minute": -5}, "tokens_per_minute is -5"),
        ({"requests_per_minute": 60, "key": ""}, "key is ''"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match="RedisRateLimit") as caught:
        RedisRateLimit("redis://localhost:6379/0", **kwargs)
    assert words in str(caught.value)


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValueError, match="give a Redis URL") as caught:
        RedisRateLimit("http://user:hunter2@example.test:6379/0", requests_per_minute=60)
    assert "hunter2" not in str(caught.value)
    assert "example.test:6379" in str(caught.value)


def test_repr_and_pickle_keep_the_settings_not_the_password_or_the_worker() -> None:
    limit = RedisRateLimit("redis://:hunter2@localhost:6379/2", requests_per_minute=600, key="jobs")
    assert "hunter2" not in repr(limit)
    assert repr(limit) == (
        "RedisRateLimit('redis://localhost:6379/2', requests_per_minute=600, "
        "tokens_per_minute=None, key='jobs')"
    )
    copy = pickle.loads(pickle.dumps(limit))
    assert (copy.url, copy.requests_per_minute, copy.key) == (limit.url, 600, "jobs")
    assert copy._worker != limit._worker  # a copy in another process is another worker
    assert isinstance(copy, Limiter)


@pytest.mark.anyio
async def test_the_url_may_name_the_budget(url: str, client: redis.Redis) -> None:
    limit = RedisRateLimit(f"{url}?key=team-b", requests_per_minute=60)
    assert limit.key == "team-b"
    await limit.acquire()  # redis-py never saw the key parameter
    assert client.hget("llmfanout:limit:{team-b}", "rpm") is not None
    assert pickle.loads(pickle.dumps(limit)).key == "team-b"
    with pytest.raises(ValueError, match="key is 'x' but the URL names 'team-b'; give one"):
        RedisRateLimit(f"{url}?key=team-b", requests_per_minute=60, key="x")
    client.delete("llmfanout:limit:{team-b}")


# -- the script's maths, with the time given, against RateLimit's ----------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.floats(0, 3), st.integers(0, 40)),
        st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 30)),
        st.tuples(st.just("cooldown"), st.floats(0.01, 5), st.just(0)),
    ),
    max_size=25,
)


@given(
    rpm=st.sampled_from([None, 30.0, 600.0, 6000.0]),
    tpm=st.sampled_from([None, 60.0, 1200.0]),
    steps=ops,
)
def test_one_worker_is_admitted_exactly_when_ratelimit_would(
    client: redis.Redis, rpm: float | None, tpm: float | None, steps: list[tuple[str, Any, Any]]
) -> None:
    """Corrections ride with the next ask, so the model applies them at that ask's time.

    Only corrections that debit are generated: RateLimit lets a refund lift a bucket
    above its capacity until time passes; the script keeps it at capacity.
    """
    if rpm is None and tpm is None:
        rpm = 60.0
    script = client.register_script(_SCRIPT)
    base = f"llmfanout:limit:{{hyp-{uuid.uuid4().hex}}}"
    keys = (base, f"{base}:workers", f"{base}:queue")
    now = 1_000_000.0
    model = RateLimit(rpm, tpm, clock=lambda: now)
    settles: list[tuple[int, int]] = []
    cool = 0.0
    for op, a, b in steps:
        if op == "settle":
            settles.append((a, max(a, b)))
            continue
        if op == "cooldown":
            cool = max(cool, a)
            continue
        now += a
        for booked, used in settles:
            model.settle(booked, used)
        if cool:
            model.cooldown(cool)
        debit = sum(used - booked for booked, used in settles) if tpm else 0
        tokens = b if tpm else 0
        args = (repr(rpm or 0.0), repr(tpm or 0.0), tokens, 0, debit, repr(cool), "w", "30", "3")
        admitted, wait_us, workers = script(keys=keys, args=(*args, repr(now)))
        settles, cool = [], 0.0
        expected_at = model.ready_at(now, tokens)
        if expected_at <= now:
            model.book(now, tokens)
            assert (admitted, wait_us) == (1, 0)
        else:
            assert admitted == 0
            assert wait_us / 1e6 == pytest.approx(expected_at - now, abs=2e-6)
        assert workers == 1
    client.delete(*keys)


def test_a_refund_never_lifts_a_bucket_above_one_second_of_burst(client: redis.Redis) -> None:
    script = client.register_script(_SCRIPT)
    base = f"llmfanout:limit:{{refund-{uuid.uuid4().hex}}}"
    keys = (base, f"{base}:workers", f"{base}:queue")
    limits = ("0.0", "600.0")  # 10 tokens a second, 10 of burst

    def call(tokens: int, debit: int) -> list[Any]:
        return list(script(keys=keys, args=(*limits, tokens, 0, debit, "0", "w", "30", "3", "5")))

    assert call(10, 0)[0] == 1  # the whole burst
    assert call(0, -50)[0] == 1  # a refund of more than was taken
    assert float(client.hget(base, "tl") or 0) == 10
    assert call(10, 0)[0] == 1
    assert call(1, 0)[:2] == [0, 100_000]  # empty again: 1 token in 0.1 s


def test_workers_take_turns_and_a_silent_one_loses_its_turn(client: redis.Redis) -> None:
    script = client.register_script(_SCRIPT)
    base = f"llmfanout:limit:{{turns-{uuid.uuid4().hex}}}"
    keys = (base, f"{base}:workers", f"{base}:queue")

    def ask(worker: str, at: float) -> tuple[int, int]:
        args = ("60.0", "0.0", 0, 0, 0, "0", worker, "30", "3", repr(at))
        admitted, wait_us, _ = script(keys=keys, args=args)
        return admitted, wait_us

    assert ask("a", 100.0) == (1, 0)  # the burst: one request
    assert ask("a", 100.2) == (0, 800_000)  # a waits its turn, first in line
    assert ask("b", 100.5) == (0, 1_500_000)  # b after a: the next request and one more
    assert ask("b", 101.05) == (0, 1_000_000)  # a bucket with one request is a's
    assert ask("a", 101.1) == (1, 0)
    assert ask("a", 101.2) == (0, 1_900_000)  # a again, now behind b
    assert ask("b", 102.1) == (1, 0)
    # A worker that stops asking gives up its turn after 3 s (it may have died).
    assert ask("a", 102.2) == (0, 900_000)
    assert ask("b", 103.2) == (0, 1_000_000)  # behind a, which last asked 1 s ago
    assert ask("b", 106.0) == (1, 0)  # a has been silent for 3.8 s: b goes
    client.delete(*keys)


# -- acquire ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_waits_past_the_burst_and_cancelling_a_waiter_takes_nothing(
    url: str, key: str, client: redis.Redis
) -> None:
    limit = RedisRateLimit(url, requests_per_minute=6, key=key)  # one every 10 s
    await limit.acquire()
    with anyio.move_on_after(1) as scope:
        await limit.acquire()  # the next is 10 s away
    assert scope.cancelled_caught
    budget = state(client, limit)
    # Taken once: the level is what 1 s or so of refill gives after one request.
    assert -0.01 < budget["rl"] < 0.5
    assert limit.workers == 1
    assert limit.shared


@pytest.mark.anyio
async def test_a_caller_cancelled_while_redis_admits_it_gives_the_request_back(
    url: str, key: str, client: redis.Redis
) -> None:
    # One request every 10 s; 2 tokens a second, 2 of burst (a call of more waits for 2).
    limit = RedisRateLimit(url, requests_per_minute=6, tokens_per_minute=120, key=key)
    real_call = limit._call
    scope = anyio.CancelScope()

    def call_then_cancel(args: tuple[object, ...]) -> list[Any]:
        reply = real_call(args)  # Redis admits the caller...
        anyio.from_thread.run_sync(scope.cancel)  # ...which is cancelled meanwhile
        return reply

    limit._call = call_then_cancel  # type: ignore[method-assign]
    with scope:
        await limit.acquire(7)
    assert scope.cancelled_caught
    taken = state(client, limit)
    assert taken["rl"] < 0.5 and taken["tl"] < -4  # admitted: both buckets were debited
    limit._call = real_call  # type: ignore[method-assign]
    with anyio.fail_after(5):  # without the refund, the next request is 10 s away
        await limit.acquire(0)  # carries the refund, and takes the request back
    assert state(client, limit)["tl"] > 1  # the 7 tokens are back too


@pytest.mark.anyio
async def test_callers_in_one_process_are_admitted_in_arrival_order(url: str, key: str) -> None:
    limit = RedisRateLimit(url, requests_per_minute=1200, key=key)  # 20 a second
    for _ in range(20):  # spend the burst
        await limit.acquire()
    admitted: list[int] = []

    async def caller(i: int) -> None:
        await limit.acquire()
        admitted.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(caller, i)
            await anyio.wait_all_tasks_blocked()  # caller i queued before caller i + 1 starts
    assert admitted == list(range(6))


@pytest.mark.anyio
async def test_a_cooldown_reaches_every_worker(url: str, key: str, client: redis.Redis) -> None:
    first = RedisRateLimit(url, requests_per_minute=600, key=key)
    second = RedisRateLimit(url, requests_per_minute=600, key=key)
    await first.acquire()
    first.cooldown(30)
    with anyio.move_on_after(1) as waited:
        await first.acquire()  # carries the cooldown to Redis, then waits it out
    assert waited.cancelled_caught
    with anyio.move_on_after(1) as waited:
        await second.acquire()
    assert waited.cancelled_caught
    budget = state(client, first)
    assert 25 < budget["resume"] - budget["now"] <= 30


@pytest.mark.anyio
async def test_token_usage_corrects_the_shared_estimate(
    url: str, key: str, client: redis.Redis
) -> None:
    first = RedisRateLimit(url, tokens_per_minute=60, key=key)  # a token a second
    second = RedisRateLimit(url, tokens_per_minute=60, key=key)
    await first.acquire(1)
    first.settle(1, 31)  # 30 more than booked: queued, not sent
    first.settle(5, None)  # no usage reported: the estimate stands
    await first.acquire(0)  # carries the correction
    assert state(client, first)["tl"] <= -25
    with anyio.move_on_after(1) as waited:
        await second.acquire(1)
    assert waited.cancelled_caught


@pytest.mark.anyio
async def test_workers_that_disagree_on_the_limits_are_told(url: str, key: str) -> None:
    await RedisRateLimit(url, requests_per_minute=600, key=key).acquire()
    other = RedisRateLimit(url, requests_per_minute=300, tokens_per_minute=1000, key=key)
    with pytest.raises(SharedLimitError) as caught:
        await other.acquire(10)
    message = str(caught.value)
    assert "requests_per_minute=600, tokens_per_minute=None by other workers" in message
    assert "this worker was given requests_per_minute=300, tokens_per_minute=1000" in message
    assert caught.value.retryable is False


@pytest.mark.anyio
async def test_a_redis_never_reached_is_a_clear_error_without_the_password(key: str) -> None:
    limit = RedisRateLimit(
        f"redis://:hunter2@127.0.0.1:{free_port()}/0", requests_per_minute=60, key=key
    )
    with pytest.raises(SharedLimitError) as caught:
        await limit.acquire()
    assert "cannot reach Redis at redis://127.0.0.1:" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "start Redis there or fix the URL" in str(caught.value)


@pytest.mark.anyio
async def test_without_redis_each_worker_runs_on_its_share_then_returns(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RedisServer(require_binary())
    try:
        server.start()
        first = RedisRateLimit(server.url, requests_per_minute=120, tokens_per_minute=6000, key=key)
        second = RedisRateLimit(
            server.url, requests_per_minute=120, tokens_per_minute=6000, key=key
        )
        await first.acquire()
        await second.acquire()
        await first.acquire()
        assert first.workers == 2
        monkeypatch.setattr(redislimit, "_PROBE_EVERY", 0.0)  # try Redis at every call
        server.stop()
        first.cooldown(0.001)  # kept through the outage
        await first.acquire(10)  # not refused: falls back
        assert not first.shared
        assert first._fallback is not None
        assert first._fallback.requests_per_minute == 60
        assert first._fallback.tokens_per_minute == 3000
        first.settle(10, 20)  # lands on the local share
        server.start()
        await first.acquire()
        assert first.shared
    finally:
        server.close()


# -- several callers per round trip, and a slow Redis ------------------------------------


@pytest.mark.anyio
async def test_the_callers_waiting_are_admitted_in_one_round_trip(url: str, key: str) -> None:
    limit = RedisRateLimit(url, requests_per_minute=6000, key=key)  # 100 of burst
    await limit.acquire()  # connected
    asked: list[object] = []
    real_call = limit._call

    def counting_call(args: tuple[object, ...]) -> list[Any]:
        asked.append(args[2])  # the costs of the callers in line
        return real_call(args)

    limit._call = counting_call  # type: ignore[method-assign]
    limit.cooldown(0.3)  # the first to come waits (and asks again), the others line up
    admitted: list[int] = []

    async def caller(i: int) -> None:
        await limit.acquire()
        admitted.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(caller, i)
            await anyio.wait_all_tasks_blocked()
    assert admitted == list(range(10))
    # One call told the head to wait out the cooldown; the next admitted all ten.
    assert asked == ["0 ", "0 " * 10]


@pytest.mark.anyio
async def test_a_caller_granted_then_cancelled_gives_its_request_back(
    url: str, key: str, client: redis.Redis
) -> None:
    limit = RedisRateLimit(url, requests_per_minute=6000, tokens_per_minute=6000, key=key)
    await limit.acquire()
    behind = anyio.CancelScope()
    real_call = limit._call

    def call_then_cancel(args: tuple[object, ...]) -> list[Any]:
        reply = real_call(args)
        if args[2] == "5 7":  # both admitted by Redis, and the second one is cancelled
            anyio.from_thread.run_sync(behind.cancel)
        return reply

    limit._call = call_then_cancel  # type: ignore[method-assign]
    limit.cooldown(0.3)

    async def second() -> None:
        with behind:
            await limit.acquire(7)

    async with anyio.create_task_group() as tg:
        tg.start_soon(limit.acquire, 5)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
    assert behind.cancelled_caught
    pending = limit._pending
    assert (pending.refunds, pending.debit) == (1, -7)  # rides with the next call
    before = state(client, limit)["tl"]
    limit._call = real_call  # type: ignore[method-assign]
    await limit.acquire(0)
    assert state(client, limit)["tl"] >= min(before + 7, 100) - 0.01


@pytest.mark.anyio
async def test_a_slow_redis_still_gives_the_whole_rate(
    server: RedisServer, key: str, client: redis.Redis
) -> None:
    """0.3 s each way: one admission per round trip would give 1.7 a second of the 10."""
    rate, seconds = 10.0, 3.0
    with LatencyProxy(("127.0.0.1", server.port), delay=0.3) as proxy:
        limit = RedisRateLimit(proxy.url, requests_per_minute=rate * 60, key=key)
        await limit.acquire()  # connected (and the script loaded) before the window
        start = server_time(client) + 1.5  # the callers are well under way by then
        seen: list[float] = []

        async def caller() -> None:
            while True:
                await limit.acquire()
                # Admitted: when, on the Redis server's clock (asked directly, no delay).
                now = await anyio.to_thread.run_sync(server_time, client)
                if now >= start + seconds:
                    return
                seen.append(now)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(caller)
    admitted = len([at for at in seen if at >= start])
    # Never more than the budget (one second of burst at most on top), nearly all of it.
    assert 0.8 * rate * seconds <= admitted <= rate * (seconds + 1) + 1, admitted


@pytest.mark.anyio
async def test_a_first_answer_slower_than_a_second_is_waited_for(
    server: RedisServer, key: str
) -> None:
    with LatencyProxy(("127.0.0.1", server.port), delay=0.6) as proxy:  # 1.2 s a round trip
        limit = RedisRateLimit(proxy.url, requests_per_minute=6000, key=key)
        await limit.acquire()
        await limit.acquire()
    assert limit.shared
    assert limit.workers == 1


@pytest.mark.anyio
async def test_a_redis_never_reached_fails_every_waiting_caller_at_once(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redislimit, "_TIMEOUT", 0.3)
    with LatencyProxy(("127.0.0.1", free_port()), delay=0, mute=True) as silent:
        limit = RedisRateLimit(silent.url, requests_per_minute=60, key=key)
        failed: list[str] = []

        async def caller() -> None:
            with pytest.raises(SharedLimitError) as caught:
                await limit.acquire()
            failed.append(str(caught.value))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(caller)
        with pytest.raises(SharedLimitError):  # and a caller just after, without asking
            await limit.acquire()
        tried = silent.connections
    assert len(failed) == 8
    assert all("cannot reach Redis at redis://127.0.0.1:" in text for text in failed)
    assert all("TimeoutError" in text for text in failed)
    assert tried == 1  # one try, not one per caller


# -- in the executor, and across processes ---------------------------------------------


@pytest.mark.anyio
async def test_an_executor_paces_its_calls_through_redis(
    url: str, key: str, client: redis.Redis
) -> None:
    limit = RedisRateLimit(url, requests_per_minute=6000, tokens_per_minute=10**6, key=key)
    executor = ParallelLLMExecutor(EchoProvider(), rate_limit=limit, max_concurrency=4)
    results = await executor.execute({f"t{i}": ask(f"hi {i}") for i in range(12)})
    assert all(r.success for r in results.values())
    assert client.zscore(limit._keys[1], limit._worker) is not None
    # 12 requests taken from 100 of burst, less what refilled since
    assert state(client, limit)["rl"] < 100 - 12 + 100 * 60  # sanity: the key is real
    assert math.isclose(float(client.hget(limit._keys[0], "rpm") or 0), 6000)


def test_four_processes_on_two_backends_share_one_budget_fairly(server: RedisServer) -> None:
    """The short form of benchmarks/bench_shared_limit.py (20 s there, 6 s here).

    Never more than the limit allows; most of it used; nobody starved. The benchmark
    holds the tighter targets (2% in total, 25% each) over 20 s.

    The bound on each share is statistical, not a fixed 0.6..1.4 (which a loaded machine
    broke once, at 1.41 over 4 s): if each of the N admissions went to one of the 4
    processes at random, a process's share of an equal one would have a standard
    deviation of sqrt(3 / N) (0.15 at N = 140). Turn-taking should do better than
    chance; a machine so loaded that one process misses its turns does worse, but
    rarely by 4 deviations (under chance, 4 x 6e-5 of runs). A limiter that lets the
    quickest process win, or starves one, is off by far more (a share of 0 is 6.8
    deviations away at N = 140), so the test still fails on what it is for.
    """
    script = ROOT / "benchmarks" / "bench_shared_limit.py"
    command = [sys.executable, str(script), "--url", server.url, "--json"]
    command += ["--rpm", "1200", "--seconds", "6", "--callers", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    allowed = result["allowed"]  # 20 of burst + 20 a second x 6 s = 140
    assert result["admitted"] <= allowed + 1, result
    assert result["admitted"] >= 0.85 * allowed, result
    equal = result["admitted"] / 4
    shares = [round(got / equal, 2) for got in result["per_process"]]
    spread = 4 * math.sqrt(3 / result["admitted"])
    assert all(abs(share - 1) <= spread for share in shares), (shares, spread)
    assert sorted(result["backends"]) == ["asyncio", "asyncio", "trio", "trio"]


# -- in a job and on the command line --------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_job_spec_with_a_shared_limit_runs_through_redis(
    url: str, client: redis.Redis, backend: str
) -> None:
    spec = JobSpec(shared_limit=url, rpm=6000, tpm=10**6, concurrency=4, backend=backend)
    rows = [{"id": f"r{i}", "prompt": f"say {i}"} for i in range(20)]
    out = list(run_rows(rows, spec))
    assert sorted(row["id"] for row in out) == sorted(row["id"] for row in rows)
    assert all(row["success"] for row in out)
    budget = client.hgetall("llmfanout:limit:{echo:any}")  # a budget per provider and model
    assert float(budget[b"rpm"]) == 6000  # the job's limits reached the shared budget
    client.delete("llmfanout:limit:{echo:any}")


def test_a_bad_shared_limit_url_stops_the_job_before_it_starts() -> None:
    spec = JobSpec(shared_limit="http://:hunter2@cache:6379", rpm=600)
    with pytest.raises(JobError, match="shared_limit: RedisRateLimit: url is") as caught:
        list(run_rows([{"id": 1, "prompt": "hi"}], spec))
    assert "hunter2" not in str(caught.value)


def test_the_cli_shares_its_rpm_through_shared_limit(
    url: str, client: redis.Redis, tmp_path: Path
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n" for i in range(8)))
    argv = ["run", str(source), "-o", str(output), "--provider", "echo", "--quiet"]
    assert cli_main([*argv, "--rpm", "3000", "--shared-limit", f"{url}?key=team-a"]) == 0
    assert len(output.read_text().splitlines()) == 8
    assert float(client.hget("llmfanout:limit:{team-a}", "rpm") or 0) == 3000
    client.delete("llmfanout:limit:{team-a}")
