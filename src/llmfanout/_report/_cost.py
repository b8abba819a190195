"""What a run cost, from its token usage and a price table the user gives.

The table itself (:class:`Price`, reading and checking it) and the tally of a run's
cost are vocabulary, in ``_base/_prices.py``, shared with the run's spend cap and with
embeddings (which the core prices).
"""

from __future__ import annotations

from .._base._prices import PER, CostTally, Price, check_prices, load_prices, price_for

__all__ = ["PER", "CostTally", "Price", "check_prices", "load_prices", "price_for"]
