"""Request and token rate limits: token buckets with one second of burst, and a cooldown.

Each caller books its admission time up front (virtual scheduling), so callers are
admitted in arrival order with no lock and no polling: a caller computes when the
buckets will allow it, debits them as of that moment, and sleeps until then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._tasks import LLMTask


class _Bucket:
    """A token bucket whose state may lie in the future (booked but not yet admitted)."""

    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = max(per_second, 1.0)  # one second of burst, at least one unit
        self.level = self.capacity
        self.at = -math.inf

    def ready_at(self, now: float, cost: float) -> float:
        """The earliest time, not before ``now``, at which ``cost`` may be taken."""
        base = max(now, self.at)
        level = min(self.capacity, self.level + self.rate * (base - self.at))
        need = min(cost, self.capacity)  # a cost over the burst waits for a full bucket
        return base if level >= need else base + (need - level) / self.rate

    def take(self, when: float, cost: float) -> None:
        self.level = min(self.capacity, self.level + self.rate * (when - self.at)) - cost
        self.at = when


class RateLimit:
    """Limits on requests and tokens per minute, shareable between executors.

    Pass it as ``ParallelLLMExecutor(rate_limit=...)``; every executor (and every
    concurrent call) given the same object is limited together. Each bucket allows one
    second of burst. Tokens are booked from an estimate before a call and corrected with
    the response's ``usage`` afterwards. A rate-limit error (HTTP 429 with
    ``retry_after``) pauses all new starts until then, so one 429 does not become fifty.
    A ``RateLimit`` belongs to one event loop at a time.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool) or not value > 0
            ):
                raise ValueError(f"RateLimit: {name} is {value!r}; give a number > 0, or None")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = _Bucket(requests_per_minute / 60) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute / 60) if tokens_per_minute else None
        self._resume_at = -math.inf
        self._clock = clock or anyio.current_time

    def __repr__(self) -> str:
        return (
            f"RateLimit(requests_per_minute={self.requests_per_minute!r}, "
            f"tokens_per_minute={self.tokens_per_minute!r})"
        )

    def book(self, now: float, tokens: int = 0) -> float:
        """Reserve one request of ``tokens`` tokens; return the time it may start."""
        when = max(now, self._resume_at)
        requests, token_bucket = self._requests, self._tokens
        if requests is not None:
            when = max(when, requests.ready_at(when, 1))
        if token_bucket is not None and tokens > 0:
            when = max(when, token_bucket.ready_at(when, tokens))
        if requests is not None:
            requests.take(when, 1)
        if token_bucket is not None and tokens > 0:
            token_bucket.take(when, tokens)
        return when

    def unbook(self, tokens: int = 0) -> None:
        """Give back a booking that was never used (its caller was cancelled)."""
        if self._requests is not None:
            self._requests.level += 1
        if self._tokens is not None:
            self._tokens.level += tokens

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of ``tokens`` tokens may start. Cancellation gives it back."""
        now = self._clock()
        when = self.book(now, tokens)
        if when > now:
            admitted = False
            try:
                await anyio.sleep(when - now)
                admitted = True
            finally:
                if not admitted:  # cancelled while waiting: the slot goes to the next caller
                    self.unbook(tokens)

    def settle(self, booked: int, used: int | None) -> None:
        """Correct a booking of ``booked`` tokens once the call reports ``used`` tokens."""
        if used is not None and self._tokens is not None:
            self._tokens.level -= used - booked

    def cooldown(self, seconds: float) -> None:
        """Start nothing new for ``seconds`` (a server said so with Retry-After)."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)


def estimate_tokens(task: LLMTask, overrides: Mapping[str, Any] | None) -> int:
    """The tokens a call will likely use: ``task.estimated_tokens``, else a cheap guess.

    The guess is about four characters a token for the prompt, a few tokens of framing
    per message, plus the ``max_tokens`` the call may generate.
    """
    if task.estimated_tokens is not None:
        return task.estimated_tokens
    prompt = sum(len(m.content) for m in task.messages) // 4 + 4 * len(task.messages)
    completion = 0
    if overrides:
        limit = overrides.get("max_tokens", overrides.get("max_completion_tokens"))
        if isinstance(limit, int):
            completion = limit
    return prompt + completion


def is_rate_limit_error(exc: Exception) -> bool:
    """A 429 that says when to come back: it should pause every caller of the limit."""
    retry_after = getattr(exc, "retry_after", None)
    return getattr(exc, "status_code", None) == 429 and isinstance(retry_after, int | float)
