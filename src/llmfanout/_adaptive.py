"""Adaptive concurrency: fewer calls in flight when the server is overloaded, more as it copes.

Servers that never advertise limits (vLLM, Ollama, a proxy) still say when they are
overloaded: HTTP 429, 503 or 529. AIMD, as TCP does with its congestion window: each
overload answer halves the number of calls kept in flight (multiplicative decrease);
each success adds ``1 / current`` to it, so a whole round of successes adds one call
(additive increase), up to ``max_concurrency``. One burst of overload answers cuts once:
an answer to a call started before the last cut says nothing about the new figure.

The pure core (:class:`AIMD`) only counts; :class:`AdaptiveConcurrency` adds the async
gate, an ``anyio.CapacityLimiter`` whose size follows the figure.
"""

from __future__ import annotations

import math

import anyio

from ._perloop import PerLoop

__all__ = ["AIMD", "AdaptiveConcurrency"]


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


class AdaptiveConcurrency:
    """The async gate: at most :attr:`current` calls inside at once.

    ``epoch = await gate.enter(token)`` before a call (``token`` any object unique to the
    call), ``gate.leave(token, epoch, overloaded=...)`` after it, whatever happened
    (``overloaded`` None when the outcome says nothing about load, an error of another
    kind say). Waiting callers go in arrival order. A cut does not stop calls already in
    flight; new ones wait until the count is below the figure.
    """

    def __init__(self, maximum: int, *, minimum: int = 1) -> None:
        self.aimd = AIMD(maximum, minimum=minimum)
        self._gates = PerLoop[anyio.CapacityLimiter]()

    def __repr__(self) -> str:
        return f"AdaptiveConcurrency(current={self.current}, maximum={self.aimd.maximum})"

    @property
    def current(self) -> int:
        """How many calls may be in flight now."""
        return self.aimd.current

    def _gate(self) -> anyio.CapacityLimiter:
        gate = self._gates.get(None)
        if gate is None:
            gate = anyio.CapacityLimiter(self.aimd.current)
            self._gates.set(gate)
        return gate

    async def enter(self, token: object) -> int:
        """Wait for room; return the epoch to hand to :meth:`leave`."""
        await self._gate().acquire_on_behalf_of(token)
        return self.aimd.cuts

    def leave(self, token: object, epoch: int, *, overloaded: bool | None) -> None:
        """The call ``token`` ended; ``overloaded`` True for 429/503/529, False for success."""
        gate = self._gate()
        gate.release_on_behalf_of(token)
        if overloaded:
            self.aimd.overload(epoch)
        elif overloaded is False:
            self.aimd.success()
        if gate.total_tokens != self.aimd.current:
            gate.total_tokens = self.aimd.current
