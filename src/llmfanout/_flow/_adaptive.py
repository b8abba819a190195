"""Adaptive concurrency: fewer calls in flight when the server is overloaded, more as it copes.

Servers that never advertise limits (vLLM, Ollama, a proxy) still say when they are
overloaded: HTTP 429, 503 or 529. AIMD, as TCP does with its congestion window: each
overload answer halves the number of calls kept in flight (multiplicative decrease);
each success adds ``1 / current`` to it, so a whole round of successes adds one call
(additive increase), up to ``max_concurrency``. One burst of overload answers cuts once:
an answer to a call started before the last cut says nothing about the new figure.

:class:`AIMD` only counts; the executor's :class:`~llmfanout._flow._governor.Governor` gates
calls with an ``anyio.CapacityLimiter`` whose size follows the figure.
"""

from __future__ import annotations

import math

__all__ = ["AIMD", "SharedPause"]


class AIMD:
    """The figure: how many calls to keep in flight, between ``minimum`` and ``maximum``."""

    __slots__ = ("_window", "cuts", "decrease", "maximum", "minimum")

    def __init__(self, maximum: int, *, minimum: int = 1, decrease: float = 0.5) -> None:
        if not (isinstance(maximum, int) and maximum >= 1):
            raise ValueError(f"AIMD: maximum is {maximum!r}; give a whole number >= 1")
        if not (isinstance(minimum, int) and 1 <= minimum <= maximum):
            raise ValueError(f"AIMD: minimum is {minimum!r}; give a whole number in [1, maximum]")
        if not 0 < decrease < 1:
            raise ValueError(f"AIMD: decrease is {decrease!r}; give a fraction in (0, 1)")
        self.maximum = maximum
        self.minimum = minimum
        self.decrease = decrease
        self._window = float(maximum)
        self.cuts = 0
        """Decreases so far: a call remembers the count it started under (its epoch)."""

    def __repr__(self) -> str:
        return f"AIMD(current={self.current}, maximum={self.maximum})"

    @property
    def current(self) -> int:
        """Calls to keep in flight now."""
        return max(self.minimum, math.floor(self._window))

    def success(self) -> None:
        """A call succeeded: grow by one call per round of successes, up to ``maximum``."""
        if self._window < self.maximum:
            self._window = min(float(self.maximum), self._window + 1 / self.current)

    def overload(self, epoch: int) -> bool:
        """A call started at ``epoch`` (``cuts`` then) was refused as overload; cut once.

        Returns whether this answer cut the figure (False: an earlier cut already
        accounted for the calls in flight with it).
        """
        if epoch != self.cuts:
            return False
        self._window = max(float(self.minimum), self.current * self.decrease)
        self.cuts += 1
        return True


class SharedPause:
    """Whether an overload answer's ``Retry-After`` should pause every call, or only its own.

    A refusal that comes from a budget the server advertises (trusted rate-limit headers)
    is the whole key's: everyone pauses, then one call probes alone. A bare 429/503 with
    ``Retry-After`` may be that too (a quota used up, no headers to say so) or a proxy
    refusing a share of requests at random, whatever the load; sharing its pause then
    holds the whole run near one call in flight. So such a refusal pauses everyone only
    while the server is refusing everything: before any call has succeeded, or after
    ``streak`` refusals in a row. Otherwise the refused call waits its ``Retry-After``
    alone and the others go on (adaptive concurrency still cuts if load is the cause).
    """

    __slots__ = ("_refusals", "_succeeded", "calm", "streak")

    def __init__(self, streak: int = 8) -> None:
        if not (isinstance(streak, int) and streak >= 1):
            raise ValueError(f"SharedPause: streak is {streak!r}; give a whole number >= 1")
        self.streak = streak
        self._succeeded = False
        self._refusals = 0  # overload answers since the last success
        self.calm = False
        """A call has succeeded since the last refusal: :meth:`success` changes nothing
        (read by the scheduler per call, to spare the call)."""

    def success(self) -> None:
        """A call was answered."""
        self._succeeded = True
        self._refusals = 0
        self.calm = True

    def refused(self) -> None:
        """A call got an overload answer (429, 529, 503 with ``Retry-After``)."""
        self._refusals += 1
        self.calm = False

    def share(self, trusted: bool) -> bool:
        """Whether the latest refusal's pause is everyone's (``trusted``: it comes from an
        advertised budget)."""
        return trusted or not self._succeeded or self._refusals >= self.streak
