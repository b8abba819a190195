"""A latency quantile for ``hedge_after="p95"``: a ring of recent latencies, cheap to feed.

Pure (no clock, no I/O): the pool gives it seconds. The quantile is the nearest-rank one
over the last ``size`` samples; it is known only once ``min_samples`` have come in, so a
pool does not hedge on a handful of answers. Sorting the ring on every call would cost
more than routing itself, so the threshold is recomputed only once a sixteenth of the
ring is new: at most one sort of ``size`` floats per ``size / 16`` samples.
"""

from __future__ import annotations

import math
import re

__all__ = ["MIN_SAMPLES", "LatencyWindow", "parse_quantile"]

MIN_SAMPLES = 20
"""Answers a pool must have seen before it hedges by a quantile."""

_QUANTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")


def parse_quantile(value: str) -> float | None:
    """``"p95"`` as 0.95; None for anything else (``"p0"``, ``"p100"``, ``"95"``)."""
    found = _QUANTILE.fullmatch(value.strip().lower())
    if found is None:
        return None
    share = float(found.group(1)) / 100
    return share if 0 < share < 1 else None


class LatencyWindow:
    """The last ``size`` latencies (seconds) and their ``quantile`` (0.95 for p95)."""

    __slots__ = ("_next", "_samples", "_stale", "_threshold", "min_samples", "quantile", "size")

    def __init__(self, quantile: float, *, size: int = 256, min_samples: int = MIN_SAMPLES) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"LatencyWindow: quantile is {quantile!r}; give one in (0, 1)")
        if min_samples < 1 or size < min_samples:
            raise ValueError("LatencyWindow: give 1 <= min_samples <= size")
        self.quantile = quantile
        self.size = size
        self.min_samples = min_samples
        self._samples: list[float] = []
        self._next = 0  # where the next sample goes once the ring is full
        self._stale = 0  # samples added since the threshold was computed
        self._threshold: float | None = None

    def __repr__(self) -> str:
        return (
            f"LatencyWindow(p{self.quantile * 100:g}, {len(self._samples)} samples, "
            f"threshold={self._threshold!r})"
        )

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        """One more latency; the oldest is dropped once the ring is full."""
        samples = self._samples
        if len(samples) < self.size:
            samples.append(seconds)
        else:
            samples[self._next] = seconds
            self._next = (self._next + 1) % self.size
        self._stale += 1

    def exact(self) -> float | None:
        """The nearest-rank quantile of the samples now (None below ``min_samples``)."""
        samples = self._samples
        if len(samples) < self.min_samples:
            return None
        ordered = sorted(samples)
        return ordered[max(0, math.ceil(self.quantile * len(ordered)) - 1)]

    @property
    def threshold(self) -> float | None:
        """The quantile, recomputed once a sixteenth of the samples is new (None: too few
        samples yet)."""
        if self._stale and (self._threshold is None or self._stale * 16 >= len(self._samples)):
            self._threshold = self.exact()
            if self._threshold is not None:
                self._stale = 0
        return self._threshold
