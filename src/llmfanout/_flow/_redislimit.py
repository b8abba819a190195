"""One rate budget shared by many processes: token buckets kept in Redis.

Every admission is one call of a Lua script, so it is atomic however many workers ask,
and the script reads the time from the Redis server (``TIME``), so the workers' clocks
do not matter. The buckets behave as :class:`~llmfanout.RateLimit`'s do: one second of
burst, debited at admission (a caller that gives up while waiting takes nothing),
token estimates corrected with the usage a response reports, a cooldown after a 429
that every worker honours.

Within a process callers queue in arrival order and only the one at the head talks to
Redis, for itself and the callers behind it: the call carries their costs, the script
admits as many of them, in order, as the budget allows now and says how long the next
one must wait, and the head lets the admitted through at once (or, if none, sleeps that
long, at most :data:`_MAX_NAP`, and asks again). So one round trip admits what the
budget allows however long it takes: a Redis 0.3 s away still gives the whole rate.
``settle`` and ``cooldown`` must not block, so they are queued and ride along with the
next call.

redis-py's asyncio client serves asyncio only and binds its connections to one event
loop, so the synchronous client runs in a worker thread on both backends: one code path,
no connection tied to a loop, and a call in flight finishes even if its caller is
cancelled (measured cost in docs/benchmarks.md).

Each call also records this worker in a sorted set of live workers (a heartbeat that
lapses after :data:`_LIVE_FOR` seconds without a call) and returns how many there are.
A slow Redis gets :data:`_TIMEOUT` to answer. When Redis cannot be reached, the worker
falls back to a local :class:`RateLimit` with its share of the budget (the budget
divided by the last count Redis gave) and tries Redis again every :data:`_PROBE_EVERY`
seconds (or twice as long as the failed try took, so that tries do not hold up most of
the time); a worker
that has never reached Redis does not know its share and raises
:class:`SharedLimitError` instead, to every caller waiting at once, and to new callers
for :data:`_PROBE_EVERY` seconds without asking again.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._base._perloop import PerLoop
from ._admission import AdmissionQueue, Waiter
from ._ratelimit import RateLimit

_MAX_NAP = 1.0  # seconds a waiting head sleeps at most before asking again
_LIVE_FOR = 30.0  # seconds a worker counts as live after its last call
_PROBE_EVERY = 2.0  # seconds between tries to reach Redis again while falling back
_PATIENCE = _MAX_NAP + 2.0  # seconds a waiting worker keeps its turn without asking
# Seconds to connect, or to get an answer, before Redis counts as unreachable: a slow
# one (a round trip of a second or two, across a region) still counts as working.
_TIMEOUT = 5.0
_BATCH = 64  # callers in line whose costs one call to Redis carries at most
_SCHEMES = ("redis", "rediss", "unix")

# KEYS: the budget (a hash), the live workers (a sorted set scored by last call), the
# workers waiting their turn (a sorted set scored by when they began to wait).
# ARGV: rpm, tpm (0: none), the token costs of the callers waiting in this process, in
# their order, separated by spaces (none: corrections only), requests refunded, tokens
# to debit (negative refunds), cooldown seconds, worker id, seconds a worker stays
# live, seconds a waiting worker keeps its turn without asking again, and (tests
# only) the time to use instead of the server's.
# Returns {how many of the callers are admitted (the first ones) | -1 limits differ,
# microseconds the first caller not admitted must wait, live workers}; on -1 the
# stored rpm and tpm instead of the last two.
_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local now
if ARGV[10] then
  now = tonumber(ARGV[10])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'rl', 'ra', 'tl', 'ta', 'resume')
if s[1] and (s[1] ~= ARGV[1] or s[2] ~= ARGV[2]) then
  return {-1, s[1], s[2]}
end
local me, live, patience = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local function fmt(x) return string.format('%.17g', x) end
local function bucket(per_minute, level, at)
  local rate = tonumber(per_minute) / 60
  if rate <= 0 then return nil end
  local b = {rate = rate, cap = math.max(rate, 1)}
  b.level = tonumber(level) or b.cap
  b.at = tonumber(at) or now
  return b
end
-- The earliest time, not before when, at which the bucket holds cost.
local function ready_at(b, when, cost)
  local base = math.max(when, b.at)
  local level = math.min(b.cap, b.level + b.rate * (base - b.at))
  if level >= cost then return base end
  return base + (cost - level) / b.rate
end
local function take(b, cost)
  if now > b.at then
    b.level = math.min(b.cap, b.level + b.rate * (now - b.at))
    b.at = now
  end
  b.level = math.min(b.cap, b.level - cost)
end
local req = bucket(ARGV[1], s[3], s[4])
local tok = bucket(ARGV[2], s[5], s[6])
local resume = tonumber(s[7]) or 0
local costs = {}
for cost in string.gmatch(ARGV[3], '%S+') do costs[#costs + 1] = tonumber(cost) end
local refund, debit, cool = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if req and refund > 0 then take(req, -refund) end
if tok and debit ~= 0 then take(tok, debit) end
if cool > 0 then resume = math.max(resume, now + cool) end
redis.call('ZADD', KEYS[2], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - live)
redis.call('PEXPIRE', KEYS[2], math.ceil(live * 2000))
local admitted, wait = 0, 0
if #costs > 0 then
  -- Workers take turns: one that waits earlier goes first, so a worker that is quicker
  -- to ask does not win every slot. Count those ahead that still ask.
  local ahead = 0
  local queue = redis.call('ZRANGE', KEYS[3], 0, -1)
  for _, other in ipairs(queue) do
    if other == me then break end
    local seen = tonumber(redis.call('ZSCORE', KEYS[2], other))
    if seen and seen >= now - patience then
      ahead = ahead + 1
    else
      redis.call('ZREM', KEYS[3], other)
    end
  end
  -- The callers in order, as many as the buckets allow now; the first that must wait
  -- stops the batch (arrival order), and its wait is the answer.
  -- With nobody ahead, as RateLimit: a cost over the burst waits for a full bucket.
  -- Else leave one request (and as many tokens as this call's) for each worker ahead.
  for _, tokens in ipairs(costs) do
    local when = math.max(now, resume)
    if req then
      when = ready_at(req, when, ahead == 0 and 1 or ahead + 1)
    end
    if tok and tokens > 0 then
      when = ready_at(tok, when, ahead == 0 and math.min(tokens, tok.cap) or tokens * (ahead + 1))
    end
    if when > now then
      wait = when - now
      break
    end
    admitted = admitted + 1
    if req then take(req, 1) end
    if tok and tokens > 0 then take(tok, tokens) end
  end
  if admitted > 0 then
    redis.call('ZREM', KEYS[3], me)
  else
    redis.call('ZADD', KEYS[3], 'NX', now, me)
    redis.call('PEXPIRE', KEYS[3], math.ceil(patience * 2000))
  end
end
local state = {'rpm', ARGV[1], 'tpm', ARGV[2], 'resume', fmt(resume)}
if req then
  table.insert(state, 'rl'); table.insert(state, fmt(req.level))
  table.insert(state, 'ra'); table.insert(state, fmt(req.at))
end
if tok then
  table.insert(state, 'tl'); table.insert(state, fmt(tok.level))
  table.insert(state, 'ta'); table.insert(state, fmt(tok.at))
end
redis.call('HSET', KEYS[1], unpack(state))
-- A minute idle refills every bucket: the state can go, unless a cooldown outlasts it.
redis.call('PEXPIRE', KEYS[1], math.ceil((60 + math.max(0, resume - now)) * 1000))
return {admitted, math.ceil(wait * 1000000), redis.call('ZCARD', KEYS[2])}
"""


class SharedLimitError(Exception):
    """A shared rate limit cannot do its job: Redis was never reached, or workers disagree.

    Never retried: the fix is in the configuration (the URL, the server, the limits).
    """

    retryable = False


def redact(url: str) -> str:
    """``url`` without its user and password, fit for messages and reprs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_key(url: str) -> tuple[str, str | None]:
    """``url`` without a ``key`` query parameter (redis-py would refuse it), and its value."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [value for name, value in query if name == "key"]
    if not keys:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "key"])
    return urlunsplit(parts._replace(query=rest)), keys[-1]


def _per_minute(name: str, value: object) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"RedisRateLimit: {name} is {value!r}; give a number > 0, or None")
    return float(value)


class _Pending:
    """Corrections waiting for the next call to Redis."""

    __slots__ = ("debit", "refunds", "resume_at")

    def __init__(self) -> None:
        self.refunds = 0  # requests admitted to callers that were cancelled at once
        self.debit = 0  # tokens used beyond their estimates (negative: fewer)
        self.resume_at = -math.inf  # local monotonic time until which a server said wait


class RedisRateLimit:
    """Limits on requests and tokens per minute shared by every worker that uses ``key``.

    Give each worker (process, Ray actor, machine) a ``RedisRateLimit`` with the same
    ``url``, ``key`` and limits, and pass it as ``ParallelLLMExecutor(rate_limit=...)``:
    together they start at most ``requests_per_minute`` calls a minute (one second of
    burst), and at most ``tokens_per_minute`` tokens, estimated at the start and
    corrected by the usage each response reports. A 429 that gives ``Retry-After`` to one
    worker pauses every worker. Callers in one process are admitted in arrival order;
    cancellation while waiting takes nothing. Time is the Redis server's.

    ``url`` is a redis-py URL (``redis://[:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix://``); its password never appears in a repr or a message. ``key`` names
    the budget (one per API key and model, say); it may also be given in the URL as
    ``?key=NAME``, and is ``"default"`` when neither gives one. Workers that give the
    same ``key`` different limits get a :class:`SharedLimitError`.

    If Redis stops answering, each worker goes on alone with its share of the budget
    (the limits divided by the number of live workers Redis last reported) and returns
    to the shared budget as soon as Redis answers again. A worker that has never reached
    Redis raises :class:`SharedLimitError` from ``acquire``. Needs ``llmfanout[redis]``.
    A ``RedisRateLimit`` pickles to a new worker with the same settings.
    """

    def __init__(
        self,
        url: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        key: str | None = None,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            shown = redact(url) if isinstance(url, str) else repr(url)
            raise ValueError(
                f"RedisRateLimit: url is {shown!r}; give a Redis URL such as "
                "'redis://localhost:6379/0' (or rediss:// for TLS, unix:// for a socket)"
            )
        rpm = _per_minute("requests_per_minute", requests_per_minute)
        tpm = _per_minute("tokens_per_minute", tokens_per_minute)
        if not (rpm or tpm):
            raise ValueError(
                "RedisRateLimit: give requests_per_minute, tokens_per_minute or both; "
                "a shared limit with neither limits nothing"
            )
        client_url, url_key = split_key(url)
        if key is not None and url_key is not None and key != url_key:
            raise ValueError(
                f"RedisRateLimit: key is {key!r} but the URL names {url_key!r}; give one"
            )
        key = key if key is not None else url_key if url_key is not None else "default"
        if not isinstance(key, str) or not key:
            raise ValueError(f"RedisRateLimit: key is {key!r}; give a non-empty string")
        try:
            import redis  # noqa: F401  (fail here, not in a worker thread mid-run)
        except ImportError as exc:
            raise ImportError(
                "RedisRateLimit needs the redis client: pip install 'llmfanout[redis]'"
            ) from exc
        self.url = url
        self._client_url = client_url
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.key = key
        base = f"llmfanout:limit:{{{key}}}"  # braces: one Redis Cluster slot for all three
        self._keys = (base, f"{base}:workers", f"{base}:queue")
        self._limits = (repr(rpm), repr(tpm))
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mutex = threading.Lock()  # guards the client and the pending corrections
        self._client: Any = None
        self._script: Any = None
        self._pending = _Pending()
        self._queues: PerLoop[AdmissionQueue] = PerLoop()
        self._threads: PerLoop[anyio.CapacityLimiter] = PerLoop()
        self._workers: int | None = None
        self._loaded = False  # the script known to this worker's Redis (see _call)
        self._unreached: tuple[float, str] | None = None  # (until, message): fail at once
        self._fallback: RateLimit | None = None
        self._probe_at = 0.0

    def __repr__(self) -> str:
        return (
            f"RedisRateLimit({redact(self.url)!r}, requests_per_minute="
            f"{self.requests_per_minute!r}, tokens_per_minute={self.tokens_per_minute!r}, "
            f"key={self.key!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy is another worker: it connects and registers on its own.
        return (_rebuild, (self.url, self.requests_per_minute, self.tokens_per_minute, self.key))

    @property
    def workers(self) -> int | None:
        """How many workers Redis last counted as live (this one included); None before."""
        return self._workers

    @property
    def shared(self) -> bool:
        """False while Redis cannot be reached and this worker runs on its own share."""
        return self._fallback is None

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of ``tokens`` tokens may start, and count it as started.

        Callers in this process are admitted in arrival order, as many per round trip to
        Redis as the budget allows. Cancellation while waiting takes nothing from the
        shared budget. Raises :class:`SharedLimitError` if Redis has never answered this
        worker (every caller waiting then fails at once), or if other workers use the
        key with other limits.
        """
        unreached = self._unreached
        if unreached is not None and time.monotonic() < unreached[0]:
            raise SharedLimitError(unreached[1])
        queue = self._queues.get(None)
        if queue is None:
            queue = AdmissionQueue()
            self._queues.set(queue)
        waiter = Waiter(tokens)
        try:
            await queue.turn(tokens, waiter)
        except BaseException:  # re-raised (noqa: cancellation-ok)
            if waiter.granted:  # admitted by the head, but the caller is gone
                self._refund(tokens)
            raise
        if waiter.error is not None:
            raise waiter.error
        if not waiter.granted:  # the head: ask for itself and those behind it
            try:
                await self._lead(queue)
            finally:
                queue.leave(waiter)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            self._refund(tokens)  # admitted, but the caller is gone: give it back
            raise

    async def _lead(self, queue: AdmissionQueue) -> None:
        """At the head of ``queue``: ask Redis until the head is admitted.

        Each ask carries the costs of the first :data:`_BATCH` callers in line; those
        Redis admits are let through at once (the head included).
        """
        while True:
            fallback = self._fallback
            head = next(iter(queue))
            if fallback is not None and time.monotonic() < self._probe_at:
                await fallback.acquire(head.cost)
                return
            batch = list(islice(queue, _BATCH))
            asked = time.monotonic()
            try:
                count, wait = await self._ask([waiter.cost for waiter in batch])
            except SharedLimitError as exc:
                self._fail_waiting(queue, head, str(exc))
                raise
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                workers = self._workers
                if workers is None:
                    message = self._never_reached(exc)
                    self._fail_waiting(queue, head, message)
                    raise SharedLimitError(message) from None
                await self._fall_back(workers, time.monotonic() - asked).acquire(head.cost)
                return
            if count:
                for gone in queue.grant_in_order(batch[1:count]):
                    self._refund(gone.cost)  # cancelled while Redis admitted it
                return
            await queue.nap(min(wait, _MAX_NAP))

    def _fail_waiting(self, queue: AdmissionQueue, head: Waiter, message: str) -> None:
        """Fail every caller behind ``head`` at once: none of them would fare better."""
        for waiter in [waiter for waiter in queue if waiter is not head]:
            queue.grant(waiter, SharedLimitError(message))

    def _refund(self, tokens: int) -> None:
        """A request (and its ``tokens``) admitted to a caller that is gone: give it back."""
        with self._mutex:
            self._pending.refunds += 1
            self._pending.debit -= tokens if self.tokens_per_minute else 0

    def settle(self, booked: int, used: int | None) -> None:
        """Correct a call's ``booked`` token estimate once it reports ``used`` tokens.

        Queued, and sent to Redis with the next admission; never blocks.
        """
        if used is None or used == booked or not self.tokens_per_minute:
            return
        fallback = self._fallback
        if fallback is not None:
            fallback.settle(booked, used)
            return
        with self._mutex:
            self._pending.debit += used - booked

    def cooldown(self, seconds: float) -> None:
        """Start nothing new for ``seconds``, here at once and on every worker soon.

        This process's callers wait from now; the other workers learn of it with this
        worker's next call to Redis. Never blocks.
        """
        fallback = self._fallback
        if fallback is not None:
            fallback.cooldown(seconds)
        with self._mutex:
            pending = self._pending
            pending.resume_at = max(pending.resume_at, time.monotonic() + seconds)

    async def _ask(self, costs: list[int]) -> tuple[int, float]:
        """One call to Redis for callers of ``costs`` tokens, in line order.

        Returns how many of them (the first ones) are admitted, and the seconds the
        first one not admitted must wait.
        """
        with self._mutex:
            pending, self._pending = self._pending, _Pending()
        cool = pending.resume_at - time.monotonic()
        args = (
            *self._limits,
            " ".join(str(cost) for cost in costs) if self.tokens_per_minute else "0 " * len(costs),
            pending.refunds,
            pending.debit,
            repr(cool) if cool > 0 else "0",
            self._worker,
            repr(_LIVE_FOR),
            repr(_PATIENCE),
        )
        limiter = self._threads.get(None)
        if limiter is None:
            limiter = anyio.CapacityLimiter(1)
            self._threads.set(limiter)
        try:
            reply = await anyio.to_thread.run_sync(self._call, args, limiter=limiter)
        except Exception:
            with self._mutex:  # not sent: keep them for when Redis answers again
                self._pending.refunds += pending.refunds
                self._pending.debit += pending.debit
                self._pending.resume_at = max(self._pending.resume_at, pending.resume_at)
            raise
        admitted, wait_us, workers = reply
        if admitted == -1:  # then the other two are the limits the key is in use with
            raise SharedLimitError(
                f"RedisRateLimit: key {self.key!r} on {redact(self.url)} is in use with "
                f"requests_per_minute={_shown(wait_us)}, tokens_per_minute={_shown(workers)} "
                f"by other workers, but this worker was given requests_per_minute="
                f"{_shown(self._limits[0])}, tokens_per_minute={_shown(self._limits[1])}; "
                "give every worker the same limits, or another key"
            )
        self._workers = int(workers)
        self._unreached = None
        if self._fallback is not None:
            self._fallback = None
        # The cooldown this worker heard of holds here even before Redis says so.
        return int(admitted), max(int(wait_us) / 1e6, cool)

    def _call(self, args: tuple[object, ...]) -> list[Any]:
        """Run the script (in a worker thread): the only place that touches the client."""
        with self._mutex:
            if self._client is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.exceptions import ConnectionError as BrokenConnection
                from redis.retry import Retry

                # One quick retry on a broken connection (a restarted server), none on a
                # timeout: a Redis that does not answer would hold up every admission.
                self._client = redis.Redis.from_url(
                    self._client_url,
                    socket_timeout=_TIMEOUT,
                    socket_connect_timeout=_TIMEOUT,
                    retry=Retry(NoBackoff(), 1, supported_errors=(BrokenConnection,)),
                )
                self._script = self._client.register_script(_SCRIPT)
            client, script, loaded = self._client, self._script, self._loaded
        if loaded:
            return list(script(keys=self._keys, args=args))
        # EVAL loads the script as it runs it: one round trip, where EVALSHA, NOSCRIPT,
        # SCRIPT LOAD and EVALSHA again take three (1.8 s on a Redis 0.3 s away).
        reply = list(client.eval(_SCRIPT, len(self._keys), *self._keys, *args))
        self._loaded = True
        return reply

    def _never_reached(self, exc: Exception) -> str:
        """What to tell callers when Redis has never answered; said at once for a while."""
        message = (
            f"RedisRateLimit: cannot reach Redis at {redact(self.url)} ({_describe(exc)}); "
            "start Redis there or fix the URL. This worker has never heard from it, so "
            "it does not know its share of the budget and will not guess."
        )
        self._unreached = (time.monotonic() + _PROBE_EVERY, message)
        return message

    def _fall_back(self, workers: int, took: float) -> RateLimit:
        """Redis did not answer within ``took`` seconds (but has before, counting
        ``workers``): go on alone with this worker's share."""
        if self._fallback is None:
            share = 1 / workers
            rpm, tpm = self.requests_per_minute, self.tokens_per_minute
            self._fallback = RateLimit(rpm and rpm * share, tpm and tpm * share)
            with self._mutex:
                resume_at = self._pending.resume_at
            if resume_at > time.monotonic():
                self._fallback.cooldown(resume_at - time.monotonic())
        self._probe_at = time.monotonic() + max(_PROBE_EVERY, 2 * took)
        return self._fallback


def _rebuild(
    url: str, rpm: float | None, tpm: float | None, key: str
) -> RedisRateLimit:  # pragma: no cover - called by pickle
    return RedisRateLimit(url, requests_per_minute=rpm, tokens_per_minute=tpm, key=key)


def _unreachable(exc: Exception) -> bool:
    """Whether ``exc`` means Redis did not answer (or cannot serve now), not a bug of ours."""
    import redis.exceptions as errors

    return isinstance(
        exc, errors.ConnectionError | errors.TimeoutError | errors.ReadOnlyError | OSError
    ) or (isinstance(exc, errors.ResponseError) and str(exc).startswith(("LOADING", "BUSY")))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _shown(value: object) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    number = float(text)
    return "None" if number == 0 else f"{number:g}"
