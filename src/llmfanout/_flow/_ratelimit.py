"""Request and token rate limits: token buckets with one second of burst, and a cooldown.

A bucket is debited only when a caller is admitted, never in advance: a caller that
gives up while waiting (cancelled, its run stopped at ``max_errors``) leaves nothing
booked behind it, so a shared limit never waits out time for callers that have left.
While nobody waits, a caller the buckets allow is admitted at once, with no lock; once
one has to wait, later callers queue behind it (FIFO) and the one at the head sleeps
until the buckets allow it, then checks again, so a cooldown or a usage correction that
arrives meanwhile is honoured.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio
from anyio.lowlevel import current_token

from .._base._checks import positive
from .._base._messages import LLMMessage, TextPart
from ._admission import AdmissionQueue, Bucket


class RateLimit:
    """Limits on requests and tokens per minute, shareable between executors.

    Pass it as ``ParallelLLMExecutor(rate_limit=...)``; every executor (and every
    concurrent call) given the same object is limited together. Each bucket allows one
    second of burst (``requests_per_minute / 60`` requests, at least one). Tokens are
    debited from an estimate when a call starts and corrected with the response's
    ``usage`` when it ends. A rate-limit error (HTTP 429 with ``retry_after``) pauses all
    new starts until then, so one 429 does not become fifty. Deterministic tasks are
    never limited. Callers are admitted in arrival order.

    ``clock`` is the time source in seconds (``anyio.current_time`` by default); waits
    use ``anyio.sleep``, so a custom clock must keep pace with the event loop's.

    A ``RateLimit`` belongs to one event loop at a time. It may serve several in turn (a
    module-level limit used by successive ``anyio.run`` calls keeps its budget across
    them), but a call from a second loop while the first still has calls in flight or
    waiting raises ``RuntimeError`` (not retried) saying so: give each loop its own.
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
            if value is not None:
                positive(value, f"RateLimit: {name}", unit="a number", hint=", or None")
        if clock is not None and not callable(clock):
            raise TypeError(f"RateLimit: clock is a {type(clock).__name__}; give a callable")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = Bucket(requests_per_minute / 60) if requests_per_minute else None
        self._tokens = Bucket(tokens_per_minute / 60) if tokens_per_minute else None
        self._resume_at = -math.inf
        self._last = -math.inf  # the latest start booked
        self._clock = clock or anyio.current_time
        self._queue = AdmissionQueue()  # callers waiting in acquire(), first come first
        self._in_flight = 0  # admitted, not settled yet
        self._loop: weakref.ref[object] | None = None  # the event loop it belongs to
        self._offset = 0.0  # that loop's clock minus time.monotonic() (default clock only)

    def __repr__(self) -> str:
        return (
            f"RateLimit(requests_per_minute={self.requests_per_minute!r}, "
            f"tokens_per_minute={self.tokens_per_minute!r})"
        )

    def ready_at(self, now: float, tokens: int = 0) -> float:
        """The earliest time, not before ``now``, at which a call of ``tokens`` may start.

        Never before a call already booked: a call of few tokens does not overtake one of
        many that waits for the token bucket.
        """
        when = max(now, self._resume_at, self._last)
        if self._requests is not None:
            when = self._requests.ready_at(when, 1)
        if self._tokens is not None and tokens > 0:
            # Buckets only fill with time, so the request bucket still allows ``when``.
            when = self._tokens.ready_at(when, tokens)
        return when

    def book(self, now: float, tokens: int = 0) -> float:
        """Admit one call of ``tokens`` tokens arriving at ``now``; return when it may start.

        The pure core of :meth:`acquire`, with the clock made explicit: it debits the
        buckets as of the returned time and never sleeps. Callers booked in order get
        start times in order.
        """
        when = self._last = self.ready_at(now, tokens)
        if self._requests is not None:
            self._requests.take(when, 1)
        if self._tokens is not None and tokens > 0:
            self._tokens.take(when, tokens)
        return when

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of ``tokens`` tokens may start, and count it as started.

        Callers are admitted in arrival order. Cancellation while waiting takes nothing
        from the buckets and lets the next caller on. Raises ``RuntimeError`` if another
        event loop is using this limit at the same time.
        """
        native = current_token().native_token
        if self._loop is None or self._loop() is not native:
            self._move_to(native)
        await self._queue.admit(self, tokens, self._clock)
        self._in_flight += 1

    def settle(self, booked: int, used: int | None) -> None:
        """Correct a call's ``booked`` token estimate once it reports ``used`` tokens.

        More than booked is debited now (later callers wait for it); less is refunded.
        ``used=None`` (no usage reported) keeps the estimate.
        """
        if self._in_flight:
            self._in_flight -= 1
        if used is not None and self._tokens is not None and used != booked:
            self._tokens.take(self._clock(), used - booked)

    def cooldown(self, seconds: float) -> None:
        """Start nothing new for ``seconds`` (a server said so with Retry-After).

        Callers already waiting wait until then too; a call already started is not touched.
        """
        self._resume_at = max(self._resume_at, self._clock() + seconds)

    def _move_to(self, native: object) -> None:
        """Belong to the running event loop from now on, if the one before is done with us."""
        before = None if self._loop is None else self._loop()
        if before is not None and (self._in_flight or self._queue):
            error = RuntimeError(
                f"{self!r} is in use by another event loop (another thread running its own "
                "anyio.run or asyncio.run); a RateLimit belongs to one event loop at a "
                "time. Give each event loop its own RateLimit (splitting the budget), or "
                "run every executor that shares it in one event loop"
            )
            error.retryable = False  # type: ignore[attr-defined]
            raise error
        if self._clock is anyio.current_time:
            # Each loop has its own clock (trio's starts at a random offset): carry the
            # booked times over, so the budget holds across loops and nothing waits for
            # a time that the new clock reaches only hours later.
            offset = anyio.current_time() - time.monotonic()
            if self._loop is not None:
                self._shift(offset - self._offset)
            self._offset = offset
        self._loop = weakref.ref(native)
        self._in_flight = 0  # whatever the old loop left unsettled ended with it

    def _shift(self, delta: float) -> None:
        self._resume_at += delta
        self._last += delta
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.at += delta


IMAGE_TOKENS = 1000
"""The guess for one image (or other non-text part): OpenAI bills a 1024x1024 image at
high detail 765 tokens, Anthropic about 1,600 for a megapixel; give ``estimated_tokens``
where it matters."""


class Estimable(Protocol):
    """What a token estimate reads of a task (an ``LLMTask`` has both)."""

    @property
    def messages(self) -> Sequence[LLMMessage]: ...

    @property
    def estimated_tokens(self) -> int | None: ...


def estimate_tokens(task: Estimable, overrides: Mapping[str, Any] | None) -> int:
    """The tokens a call will likely use: ``task.estimated_tokens``, else a cheap guess.

    The guess is about four characters a token for the prompt's text, a few tokens of
    framing per message, :data:`IMAGE_TOKENS` per image or other non-text part, plus the
    ``max_tokens`` the call may generate.
    """
    if task.estimated_tokens is not None:
        return task.estimated_tokens
    characters = parts = 0
    for m in task.messages:
        content = m.content
        if isinstance(content, str):
            characters += len(content)
        else:  # content parts: their text, and a flat guess per image
            text = m.text
            characters += len(text)
            parts += sum(1 for part in content if not isinstance(part, TextPart))
    prompt = characters // 4 + 4 * len(task.messages) + IMAGE_TOKENS * parts
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
