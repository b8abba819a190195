"""Pacing by the limits a server advertises: a :class:`Limiter` fed by response headers.

A server that sends rate-limit headers tells us, on every answer, its budget (``limit``),
what is left (``remaining``) and when the budget is whole again (``reset``). The pacer
keeps, per budget kind (requests, tokens), the newest such report as its *basis* and
admits a call only when:

- the budget covers it: its cost, plus what started after the request the report
  answered (the server had not counted those yet), plus what started since the report,
  is within ``remaining`` and what has refilled since, at the rate the report implies
  (``(limit - remaining) / reset``: both APIs refill evenly until whole, by ``reset``);
- it keeps to the sustained rate ``limit / 60`` per second with one second of burst:
  what remains is spread over the minute, not burst and then stalled on, as providers
  enforce per-minute limits over shorter spans.

A report answering an older request than the basis may only lower it (that request may
have reached the server after the basis's one, uncounted there). Nothing is known
before the first report: calls start freely (bounded by the concurrency cap) until one
arrives. After a cooldown (a 429 that said when to come back) the first call goes alone
as a probe, and the others wait for its answer, then start in arrival order at the pace
the answer allows: never all at once.

The pure core (:meth:`HeaderPacer.ready_at`, :meth:`HeaderPacer.book`,
:meth:`HeaderPacer.observe`) takes the clock as an argument; :meth:`HeaderPacer.acquire`
is the thin async layer over it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import anyio

from .._base._advertised import RateLimitBudget, RateLimitInfo
from ..errors import PacingError
from ._admission import AdmissionQueue, Bucket, WaitTooLong

__all__ = ["HeaderPacer", "distrusted", "trusted"]

logger = logging.getLogger("llmfanout")

_WINDOW = 60.0
"""Seconds the advertised ``limit`` is per: both APIs document per-minute limits."""
_MARGIN = 0.1
"""Seconds' worth of the sustained rate the pacer leaves unspent (see ``_Kind.margin``)."""
_MAX_RESET = 86_400.0
"""Seconds: an advertised reset further off than a day (the longest window providers
document: requests per day) is not believed; a reset of years (``87600h``, a 400-digit
number, an Anthropic reset in 2999) is a broken server or proxy. A believed reset that
still holds a call past its patience fails the call at once (:class:`PacingError`)."""
_HEADERS = {
    "requests": "x-ratelimit-*-requests / anthropic-ratelimit-requests-*",
    "tokens": "x-ratelimit-*-tokens / anthropic-ratelimit-*tokens-*",
}
_PROBE_WAIT = 2.0
"""The longest the calls behind a probe wait for its answer before going anyway: an
answer slower than that (a long generation) says nothing quick enough to wait for."""


class _Kind:
    """One advertised budget (requests or tokens) of one key, tracked between reports."""

    __slots__ = (
        "available",
        "bucket",
        "limit",
        "margin",
        "observed_at",
        "refill",
        "spent",
        "ticket",
    )

    def __init__(self) -> None:
        self.bucket: Bucket | None = None  # the sustained rate: limit per minute
        self.limit: int | None = None
        self.ticket = 0  # the basis: the report answering call number ``ticket``
        self.available = 0.0  # its ``remaining`` less what started after ``ticket``
        self.refill = 0.0  # per second, as the report's reset implies
        self.observed_at = math.inf  # no basis yet
        self.spent = 0.0  # admitted since the basis arrived
        # Kept in hand: a tenth of a second's worth, for requests that reach the server
        # in another order than they were admitted in (and so escape the accounting).
        self.margin = 0.0

    def ready_at(self, now: float, cost: float) -> float:
        when = now
        if self.limit is not None:
            cost = min(cost, self.limit)  # more than the whole budget waits for all of it
        deficit = self.spent + cost + self.margin - self.available
        if deficit > 0 and now >= self.observed_at:
            when = max(when, self.observed_at + deficit / self.refill if self.refill else math.inf)
        if self.bucket is not None:
            when = self.bucket.ready_at(when, cost)
        return when

    def take(self, when: float, cost: float) -> None:
        self.spent += cost
        if self.bucket is not None:
            self.bucket.take(when, cost)

    def observe(self, now: float, budget: RateLimitBudget, ticket: int, since: float) -> None:
        """Take ``budget``, reported for call ``ticket``; ``since`` started after that call."""
        limit = budget.limit
        if limit is not None and limit > 0 and limit != self.limit:
            self.limit = limit
            rate = limit / _WINDOW
            self.margin = rate * _MARGIN
            if self.bucket is None:
                self.bucket = Bucket(rate)
            else:  # a changed limit: keep the level, within the new burst
                self.bucket.resize(now, rate)
        remaining = budget.remaining
        if remaining is None:
            return
        available = remaining - since
        if ticket < self.ticket:
            # An older call's answer. Usually stale; but when that call reached the server
            # after the basis's one (answers and arrivals overtake each other), it is the
            # only report counting it: it may lower the basis, never raise it.
            elapsed = max(0.0, now - self.observed_at)
            if available >= self.available - self.spent + self.refill * elapsed:
                return
            ticket = self.ticket
        sustained = self.limit / _WINDOW if self.limit else 0.0
        reset = budget.reset
        missing = (self.limit - remaining) if self.limit else 0
        if reset is not None and reset > 0 and missing > 0:
            # Refilled evenly until whole: what both APIs document. Never assumed faster
            # than the per-minute rate, so a server that refills all at once at the reset
            # (a fixed window) is not overrun before it.
            refill = min(missing / reset, sustained) if sustained else missing / reset
        else:
            refill = sustained
        self.ticket = ticket
        self.available = available
        self.refill = refill
        self.observed_at = now
        self.spent = 0.0


def distrusted(budget: RateLimitBudget) -> str | None:
    """Why an advertised ``budget`` cannot be paced by (None: it can).

    A reset beyond :data:`_MAX_RESET` (or not finite), and a ``remaining`` with no
    ``limit`` or a limit of 0 (nothing says how fast it refills), would hold calls for
    ever or for days: such a report is ignored, and the overload answers the server sends
    instead drive the adaptive concurrency (AIMD) as if it advertised nothing.
    """
    reset = budget.reset
    if reset is not None and not reset <= _MAX_RESET:
        return f"a reset {reset:.6g} s away (more than {_MAX_RESET:g} s is not believed)"
    if budget.remaining is not None and not budget.limit:
        return f"remaining={budget.remaining} with limit={budget.limit} (no refill rate)"
    return None


def trusted(info: RateLimitInfo | None) -> bool:
    """Whether ``info`` holds a budget the pacer can go by."""
    if info is None:
        return False
    budgets = (info.requests, info.token_budget)
    return any(b is not None and distrusted(b) is None for b in budgets)


class HeaderPacer:
    """Paces one API key's calls (for one model) by the limits its server advertises.

    A :class:`~llmfanout.Limiter`: ``acquire`` before each call, ``settle`` after it, and
    ``cooldown`` on a 429 that says when to come back. On top, ``observe(info, ticket)``
    after each call with the :class:`~llmfanout.RateLimitInfo` its answer carried (None if
    none), ``ticket`` being what :meth:`admit` returned for it. Callers are admitted in
    arrival order; cancellation while waiting takes nothing and lets the next one on.

    ``clock`` is the time source in seconds (``anyio.current_time`` by default); waits
    use anyio, so a custom clock must keep pace with the event loop's. A pacer belongs
    to one event loop at a time.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or anyio.current_time
        self._requests = _Kind()
        self._tokens = _Kind()
        self.starts = 0
        """Calls admitted so far; the n-th admitted call's ticket is n."""
        self._ledger: deque[float] = deque()  # tokens admitted up to each ticket from _base
        self._base = 1
        self._total = 0.0  # tokens admitted in all
        self._open: dict[int, float] = {}  # calls not reported yet: ticket -> tokens
        self._resume_at = -math.inf
        self._last = -math.inf  # the latest start booked
        self._probe_wanted = False  # after a cooldown, the next call goes alone
        self._probe: int | None = None  # the ticket of the probe in flight
        self._probe_until = -math.inf
        self._queue = AdmissionQueue()
        self._distrusted: set[str] = set()  # budget kinds already logged as not believed

    def __repr__(self) -> str:
        return (
            f"HeaderPacer(requests_limit={self._requests.limit!r}, "
            f"tokens_limit={self._tokens.limit!r}, starts={self.starts})"
        )

    @property
    def limits(self) -> tuple[int | None, int | None]:
        """The advertised (requests, tokens) limits last seen; None where none was."""
        return self._requests.limit, self._tokens.limit

    # -- the pure core ------------------------------------------------------------------

    def ready_at(self, now: float, tokens: int = 0) -> float:
        """The earliest time, not before ``now``, at which a call of ``tokens`` may start.

        While a probe is out, not before its answer (:meth:`observe`) or ``_PROBE_WAIT``
        seconds after it started, whichever is first (an answer never reported must not
        stall the key for ever).
        """
        when = max(now, self._resume_at, self._last)
        if self._probe is not None:
            when = max(when, self._probe_until)
        when = self._requests.ready_at(when, 1)
        if tokens > 0:
            when = self._tokens.ready_at(when, tokens)
        return when

    def book(self, now: float, tokens: int = 0) -> tuple[float, int]:
        """Admit one call of ``tokens`` arriving at ``now``: ``(start time, ticket)``.

        Never sleeps. Calls booked in order get start times in order.
        """
        when = self._last = self.ready_at(now, tokens)
        self.starts += 1
        ticket = self.starts
        self._requests.take(when, 1)
        if tokens > 0:
            self._tokens.take(when, tokens)
        self._total += tokens
        self._ledger.append(self._total)
        if len(self._ledger) > 1 << 16:  # nobody reports: keep memory bounded
            self._ledger.popleft()
            self._base += 1
        self._open[ticket] = tokens
        if len(self._open) > 1 << 16:  # answers never reported: keep memory bounded
            del self._open[next(iter(self._open))]
        if self._probe_wanted:
            self._probe_wanted = False
            self._probe = ticket
            self._probe_until = when + _PROBE_WAIT
        return when, ticket

    def observe(
        self,
        info: RateLimitInfo | None,
        ticket: int,
        now: float | None = None,
        *,
        uncounted: int = 0,
        uncounted_tokens: float = 0.0,
    ) -> None:
        """A call admitted as ``ticket`` ended; ``info`` is what its answer advertised.

        Call it for every admitted call, whatever its outcome (``info`` None when the
        answer carried no limits, or none arrived): a probe's answer is what lets the
        calls waiting behind it go. ``ticket`` 0 is a call this pacer did not admit;
        ``uncounted``: calls in flight that it did not admit either (the report may not
        count them), of ``uncounted_tokens`` tokens.
        """
        now = self._clock() if now is None else now
        self._open.pop(ticket, None)
        if ticket == self._probe:
            self._probe, self._probe_until = None, -math.inf
        if info is not None and ticket >= min(self._requests.ticket, self._tokens.ticket):
            # Not counted in the report: calls started after this one, and earlier ones
            # still unanswered (they may have reached the server after this one did).
            older, older_tokens = 0, 0.0
            for open_ticket, tokens in self._open.items():
                if open_ticket > ticket:
                    break
                older += 1
                older_tokens += tokens
            requests, budget = info.requests, info.token_budget
            if requests is not None and self._believe("requests", requests):
                since = self.starts - ticket + older + uncounted
                self._requests.observe(now, requests, ticket, since)
            if budget is not None and self._believe("tokens", budget):
                since_tokens = self._tokens_after(ticket) + older_tokens + uncounted_tokens
                self._tokens.observe(now, budget, ticket, since_tokens)
            self._forget(min(self._requests.ticket, self._tokens.ticket))
        self._wake()

    def _believe(self, kind: str, budget: RateLimitBudget) -> bool:
        reason = distrusted(budget)
        if reason is None:
            return True
        if kind not in self._distrusted:  # once per pacer and kind: not a log line per call
            self._distrusted.add(kind)
            logger.warning(
                "pacing: ignoring the %s budget the server advertises (%s): %s; "
                "falling back to adaptive concurrency for it",
                kind,
                _HEADERS[kind],
                reason,
            )
        return False

    def _tokens_after(self, ticket: int) -> float:
        index = ticket - self._base
        if index < 0:  # forgotten: count everything we know of
            return self._total - (self._ledger[0] if self._ledger else self._total)
        return self._total - self._ledger[min(index, len(self._ledger) - 1)]

    def _forget(self, ticket: int) -> None:
        """Reports for calls before ``ticket`` are stale now: drop their ledger entries."""
        while self._base < ticket and len(self._ledger) > 1:
            self._ledger.popleft()
            self._base += 1

    # -- the Limiter protocol -----------------------------------------------------------

    async def admit(self, tokens: int = 0, *, patience: float = math.inf) -> int:
        """Wait until one call of ``tokens`` may start; count it as started; its ticket.

        Callers are admitted in arrival order. Cancellation while waiting takes nothing
        and lets the next caller on. A call at the head of the line that the advertised
        budgets (or a cooldown) would hold more than ``patience`` seconds does not wait:
        :class:`~llmfanout.errors.PacingError` at once, naming the budget's headers.
        """
        try:
            return (await self._queue.admit(self, tokens, self._clock, patience))[1]
        except WaitTooLong as exc:
            raise PacingError(self._explain(tokens, exc.seconds, patience)) from None

    def _explain(self, tokens: int, wait: float, patience: float) -> str:
        """What holds a call of ``tokens`` ``wait`` seconds: the cooldown, or which budget."""
        now = self._clock()
        held = f"this call would wait {wait:.6g} s to start, past its patience of {patience:g} s"
        fix = (
            "; raise RetryConfig.patience, or turn pacing off (pacing=False, --no-pacing) "
            "if the server's figures are wrong"
        )
        if self._resume_at - now >= wait - 1e-6:
            return f"pacing: a 429's Retry-After (a cooldown) says {held}{fix}"
        binding = "requests"
        if tokens > 0 and self._tokens.ready_at(now, tokens) > self._requests.ready_at(now, 1):
            binding = "tokens"
        kind = self._requests if binding == "requests" else self._tokens
        return (
            f"pacing: the {binding} budget the server advertises ({_HEADERS[binding]}: "
            f"limit={kind.limit}, {kind.available:.6g} left at its last report, refilling "
            f"{kind.refill:.6g}/s) says {held}{fix}"
        )

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of ``tokens`` tokens may start; count it as started."""
        await self.admit(tokens)

    def settle(self, booked: int, used: int | None) -> None:
        """Correct a call's ``booked`` token estimate once it reports ``used`` tokens."""
        if used is not None and used != booked and self._tokens.bucket is not None:
            self._tokens.bucket.take(self._clock(), used - booked)

    def probe(self) -> None:
        """Let the next call go alone: the others wait for its answer (as after a cooldown).

        For a server whose limits are not known yet: its first answer tells them.
        """
        if self._probe is None:
            self._probe_wanted = True

    def cooldown(self, seconds: float) -> None:
        """Start nothing new for ``seconds``; then one call alone, as a probe."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)
        if self._probe is None:
            self._probe_wanted = True
        self._wake()

    def _wake(self) -> None:
        self._queue.wake()
