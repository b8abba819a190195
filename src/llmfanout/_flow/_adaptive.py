"""Adaptive concurrency: fewer calls in flight when the server is overloaded, more as it copes.

Servers that never advertise limits (vLLM, Ollama, a proxy) still say when they are
overloaded: HTTP 429, 503 or 529. AIMD, as TCP does with its congestion window: an
overload answer halves the number of calls kept in flight (multiplicative decrease);
each success adds ``1 / current`` to it, so a whole round of successes adds one call
(additive increase), up to ``max_concurrency``. One burst of overload answers cuts once:
an answer to a call started before the last cut says nothing about the new figure.

A refusal is not always load's doing: a proxy may refuse a share of requests at random
whatever the load, and halving on each of those holds a run at one or two calls in
flight. So a cut needs evidence that load is the cause. :class:`AIMD` keeps, per figure
(in half-octaves: 1, 2, 3, 4-5, 6-7, 8-11, ...), the share of the calls started under it
that were refused, over the latest :data:`HORIZON` or so. A refusal (from a call started
since the last cut) cuts the figure if the share at the current figure is clearly
(:func:`clearly_higher`) above the share of all the smaller figures measured, pooled;
if no smaller figure is measured yet (at the start, it cuts to find out); or if the
shares differ but the smaller figures are thinly measured (it cuts to measure them
again). Otherwise the figure holds, and if the share is about the same at smaller
figures (refusals persist whatever the load), it climbs back fast: one call per success,
so a round doubles it, up to where it was before the last cut. The price: against a
server overloaded past N, some more refusals than plain AIMD while the evidence builds
up (a figure just above N holds until its share is clearly higher); against refusals at
random, the figure goes down once to measure, then stays near ``max_concurrency``.

:class:`AIMD` only counts; the executor's :class:`~llmfanout._flow._governor.Governor` gates
calls with an ``anyio.CapacityLimiter`` whose size follows the figure.
"""

from __future__ import annotations

import math

__all__ = ["AIMD", "SharedPause", "clearly_higher"]

EVIDENCE = 8
"""Calls started under a figure before its refused share counts as measured (fewer for
figures below 4: see :func:`_evidence`)."""
HORIZON = 64
"""A figure's tallies are halved past twice this many calls (or eight times its smallest
figure, if more, so that the answers still to come to calls in flight do not outnumber
them): the share is of the latest 64 to 128 calls or so."""
Z = 2.0
"""Standard errors a share must exceed another by to be clearly higher."""
MARGIN = 0.05
"""...and at least this much (a refusal or two among many calls is no trend)."""
PERSISTENT = 0.2
TOLERANCE = 0.1
"""Refusals persist at smaller figures if their share is :data:`PERSISTENT` or more and
the share here is within this much of it: the figure climbs back fast."""


def clearly_higher(
    refused: float, started: float, other_refused: float, other_started: float
) -> bool:
    """Whether ``refused / started`` is clearly above ``other_refused / other_started``: by
    :data:`Z` standard errors of the difference (pooled two-proportion test) and by
    :data:`MARGIN` at least."""
    share, other = refused / started, other_refused / other_started
    pooled = (refused + other_refused) / (started + other_started)
    error = math.sqrt(max(0.0, pooled * (1 - pooled)) * (1 / started + 1 / other_started))
    return share - other > max(Z * error, MARGIN)


def _level(size: int) -> int:
    """Figures are tallied in half-octaves: 1, 2, 3, 4-5, 6-7, 8-11, 12-15, 16-23, ..."""
    top = size.bit_length() - 1
    return 2 * top + (size >= 3 << top >> 1 and top > 0)


def _smallest(level: int) -> int:
    """The smallest figure tallied at ``level``."""
    return (2 if level % 2 == 0 else 3) << (level // 2) >> 1


def _evidence(level: int) -> int:
    """Calls started under ``level`` before its share counts as measured: :data:`EVIDENCE`,
    or two rounds of the smallest figure in it if fewer."""
    return min(EVIDENCE, 2 * _smallest(level))


class AIMD:
    """The figure: how many calls to keep in flight, between ``minimum`` and ``maximum``."""

    __slots__ = (
        "_ceiling",
        "_halve_past",
        "_refused",
        "_started",
        "_top",
        "_window",
        "cuts",
        "decrease",
        "maximum",
        "minimum",
    )

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
        self._ceiling = 0.0  # climb back fast (one per success) up to here
        levels = _level(maximum) + 1
        self._started = [0.0] * levels  # per half-octave (_level): calls started under it
        self._refused = [0.0] * levels  # ... and refused as overload
        # Made once, for start() on every call: past this many starts a level is halved;
        # the maximum's level (most calls start there).
        self._halve_past = [max(2 * HORIZON, 8 * _smallest(level)) for level in range(levels)]
        self._top = levels - 1

    def __repr__(self) -> str:
        return f"AIMD(current={self.current}, maximum={self.maximum})"

    @property
    def current(self) -> int:
        """Calls to keep in flight now."""
        return max(self.minimum, math.floor(self._window))

    def start(self, size: int | None = None) -> int:
        """A call starts with the figure at ``size`` (default: now); returns the figure, to
        give back to :meth:`overload` if it is refused."""
        if size is None:
            size = self.current
        level = self._top if size == self.maximum else _level(size)
        started = self._started[level] + 1
        if started > self._halve_past[level]:
            self._refused[level] /= 2
            started /= 2
        self._started[level] = started
        return size

    def started_at_maximum(self, count: int) -> None:
        """``count`` calls started at the maximum: :meth:`start` ``count`` times, at once."""
        level = self._top
        limit = self._halve_past[level]
        started, refused = self._started[level], self._refused[level]
        while count:
            room = math.floor(limit - started) + 1  # starts until the level is halved
            if started + room <= limit:  # as start()'s float sums round
                room += 1
            elif room > 1 and started + room - 1 > limit:
                room -= 1
            if count < room:
                started += count
                break
            count -= room
            started = (started + room) / 2
            refused /= 2
        self._started[level], self._refused[level] = started, refused

    def success(self) -> None:
        """A call succeeded: grow by one call per round of successes, up to ``maximum``
        (by one call per success while climbing back: refusals that persist whatever the
        figure)."""
        if self._window < self.maximum:
            step = 1.0 if self._window < self._ceiling else 1 / self.current
            self._window = min(float(self.maximum), self._window + step)

    def overload(self, epoch: int, size: int | None = None) -> bool:
        """A call started at ``epoch`` (``cuts`` then), with the figure at ``size`` (as
        :meth:`start` gave it; None: now, uncounted), was refused as overload; cut once,
        if load is the cause.

        Returns whether this answer cut the figure (False: an earlier cut already
        accounted for the calls in flight with it, or the refusals do not grow with the
        figure).
        """
        if size is None:
            size = self.start()
        level = _level(size)
        self._refused[level] = min(self._refused[level] + 1, self._started[level])
        if epoch != self.cuts:
            return False
        cut, ceiling = self._judge(_level(self.current))
        if not cut:
            self._ceiling = max(self._ceiling, min(float(self.maximum), ceiling))
            return False
        self._ceiling = 0.0
        # We leave this figure because its share looked high: judged on these same calls
        # again it would look high again (a chance run would stick), so they count half.
        here = _level(self.current)
        self._started[here] /= 2
        self._refused[here] /= 2
        self._window = max(float(self.minimum), self.current * self.decrease)
        self.cuts += 1
        return True

    def _judge(self, here: int) -> tuple[bool, float]:
        """Whether a refusal at the half-octave ``here`` should cut the figure (the refused
        share grows with it; see the module's docstring); if not, the figure to climb back
        to at one call per success (0: none, climb as usual). A few dozen steps at most
        (two per doubling of ``maximum``), whatever the number of calls."""
        started, refused = self._started, self._refused
        if started[here] < _evidence(here):  # too few calls here yet: cut only at the start
            return self.cuts == 0, 0.0
        share = refused[here] / started[here]
        # The calls started at smaller figures measured, pooled: one chance run at one
        # figure does not decide, and a figure near a capacity is diluted by the others.
        fewer = fewer_refused = 0.0
        for below in range(here):
            if started[below] >= _evidence(below):
                fewer += started[below]
                fewer_refused += refused[below]
        if not fewer:  # nothing measured at a smaller figure: cut, to compare
            return True, 0.0
        if clearly_higher(refused[here], started[here], fewer_refused, fewer):
            return True, 0.0  # fewer calls, fewer refusals: load is the cause
        smaller = fewer_refused / fewer
        if abs(share - smaller) <= TOLERANCE:
            # About as many refusals with fewer calls: not load's doing. If they persist
            # there, climb back fast.
            return False, self._window / self.decrease if smaller >= PERSISTENT else 0.0
        # The shares differ, but not clearly: if the smaller figures are thinly measured,
        # cut to measure them again (a hold would never revisit them); else hold.
        return fewer < 2 * EVIDENCE, 0.0


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

    __slots__ = ("_refusals", "_succeeded", "streak")

    def __init__(self, streak: int = 8) -> None:
        if not (isinstance(streak, int) and streak >= 1):
            raise ValueError(f"SharedPause: streak is {streak!r}; give a whole number >= 1")
        self.streak = streak
        self._succeeded = False
        self._refusals = 0  # overload answers since the last success

    def success(self) -> None:
        """A call was answered."""
        self._succeeded = True
        self._refusals = 0

    def refused(self) -> None:
        """A call got an overload answer (429, 529, 503 with ``Retry-After``)."""
        self._refusals += 1

    def share(self, trusted: bool) -> bool:
        """Whether the latest refusal's pause is everyone's (``trusted``: it comes from an
        advertised budget)."""
        return trusted or not self._succeeded or self._refusals >= self.streak
