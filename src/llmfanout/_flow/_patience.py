"""Patience: how long a call waits out rate-limit and overload answers, apart from attempts.

A 429 ("too many requests"), a 529 ("overloaded") or a 503 that says when to come back
is the server asking us to wait, not the call failing: it is retried until a deadline
(``RetryConfig.patience``, ten minutes by default) without spending one of
``max_attempts``, which keep counting real failures. The server's ``Retry-After`` is
honoured; without it the waits grow (doubling from ``initial`` up to ``cap``) with full
jitter, so calls refused together do not come back together. A wait that would end
past the deadline is not taken: the call fails with the server's answer instead.
"""

from __future__ import annotations

import random

__all__ = ["OVERLOAD_STATUSES", "Patience", "is_overload", "overload_wait"]

OVERLOAD_STATUSES = frozenset({429, 529})
"""Statuses that always mean "too much, come back later"; a 503 does with ``retry_after``."""


def is_overload(exc: BaseException) -> bool:
    """Whether ``exc`` is a rate-limit or overload answer, retried within patience.

    429 and 529 always; 503 when it says when to come back (``retry_after``): a 503
    without it is as likely a server that is down, which ``max_attempts`` governs. An
    error the server marked not retryable (``x-should-retry: false``) never is.
    """
    if getattr(exc, "retryable", True) is False:
        return False
    status = getattr(exc, "status_code", None)
    if status in OVERLOAD_STATUSES:
        return True
    return status == 503 and isinstance(getattr(exc, "retry_after", None), int | float)


def overload_wait(
    waits: int,
    retry_after: float | None,
    *,
    initial: float = 1.0,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``waits``-th overload answer (1-based) of one call.

    ``retry_after`` (the server's word) when given; else full jitter over a doubling
    ceiling: uniform in ``[0, min(cap, initial * 2 ** (waits - 1))]``, at least
    ``initial / 10`` so a call never spins.
    """
    if retry_after is not None:
        return max(0.0, float(retry_after))
    ceiling = min(cap, initial * 2.0 ** min(waits - 1, 64))
    return max(initial / 10, (rng or random).uniform(0.0, ceiling))


class Patience:
    """One call's patience: how long it may keep waiting out overload answers.

    The clock starts at the call's first overload answer. :meth:`next_wait` says how long
    to wait before trying again, or None once the wait would end past the deadline.
    """

    __slots__ = ("_rng", "cap", "deadline", "initial", "seconds", "waits")

    def __init__(
        self,
        seconds: float,
        *,
        initial: float = 1.0,
        cap: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.seconds = seconds
        self.initial = initial
        self.cap = cap
        self.deadline: float | None = None
        self.waits = 0
        self._rng = rng

    def left(self, now: float) -> float:
        """Seconds of patience left at ``now`` (all of it before the first overload answer)."""
        return self.seconds if self.deadline is None else self.deadline - now

    def next_wait(self, exc: BaseException, now: float) -> float | None:
        """Seconds to wait after overload answer ``exc`` arriving at ``now``, or None."""
        if self.deadline is None:
            self.deadline = now + self.seconds
        self.waits += 1
        retry_after = getattr(exc, "retry_after", None)
        wait = overload_wait(
            self.waits,
            retry_after if isinstance(retry_after, int | float) else None,
            initial=self.initial,
            cap=self.cap,
            rng=self._rng,
        )
        return wait if now + wait <= self.deadline else None
