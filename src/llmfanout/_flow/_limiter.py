"""The limiter interface: what the executor asks of anything that paces LLM calls.

``RateLimit`` (fixed budgets the user types in), the pacing the executor derives from a
server's rate-limit headers, and a budget shared across processes (``RedisRateLimit``)
all fit it. The executor calls, for each attempt of an LLM call:

1. ``await limiter.acquire(tokens)`` before sending: wait until a call of about
   ``tokens`` tokens may start, and count it as started. Cancellation while waiting must
   take nothing and let the next caller on.
2. ``limiter.settle(tokens, used)`` once the attempt ends: ``used`` is the response's
   ``total_tokens`` (None when the attempt failed or the server reported no usage), so
   the limiter can correct its estimate.
3. ``limiter.cooldown(seconds)`` when the server answered a rate-limit error that says
   when to come back: start nothing new until then.

``settle`` and ``cooldown`` are synchronous and must not block: a limiter that talks to
another process queues them and sends them with its next admission.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Limiter(Protocol):
    """Anything with these three methods can pace an executor's LLM calls."""

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of ``tokens`` tokens may start; count it as started."""
        ...

    def settle(self, booked: int, used: int | None) -> None:
        """Correct a call's ``booked`` token estimate with the ``used`` tokens it reported."""
        ...

    def cooldown(self, seconds: float) -> None:
        """Start nothing new for ``seconds``: a server said so."""
        ...


def check_limiter(value: object, owner: str) -> Limiter | None:
    """``value`` if it is None or a :class:`Limiter`; else a ``TypeError`` saying what to give."""
    if value is None or isinstance(value, Limiter):
        return value
    raise TypeError(
        f"{owner}: rate_limit is {type(value).__name__}, which is not a limiter; give a "
        "RateLimit, or an object with async acquire(tokens), settle(booked, used) and "
        "cooldown(seconds)"
    )
