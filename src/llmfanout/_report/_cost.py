"""What a run cost, from its token usage and a price table the user gives.

The table itself (:class:`Price`, reading and checking it) is vocabulary, in
``_base/_prices.py``, shared with the run's spend cap.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._base._prices import PER, Price, check_prices, load_prices, price_for

__all__ = ["PER", "CostTally", "Price", "check_prices", "load_prices", "price_for"]


class CostTally:
    """Adds up the cost of responses; counts those it cannot price, by model."""

    __slots__ = ("_cache", "_table", "total", "unpriced")

    def __init__(self, table: Mapping[str, Price]) -> None:
        self._table = table
        self._cache: dict[str, Price | None] = {}
        self.total = 0.0
        self.unpriced: dict[str, int] = {}  # model -> responses without a price or usage

    def add(self, model: str, usage: Mapping[str, int] | None) -> None:
        """Count one successful response."""
        try:
            price = self._cache[model]
        except KeyError:
            price = self._cache[model] = price_for(model, self._table)
        if price is None or not usage:
            self.unpriced[model] = self.unpriced.get(model, 0) + 1
            return
        self.total += price.cost(usage)
