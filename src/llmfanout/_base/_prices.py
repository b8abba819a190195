"""Model prices: a table of USD per million tokens, and a model's price looked up in it.

llmfanout ships no prices: they change, and a stale table would give a wrong figure
without saying so. A table maps a model name to USD per million tokens for input,
cached input, cache writes and output. A response's model is looked up as the server
reported it (``gpt-4o-mini-2024-07-18``), then without a trailing date
(``gpt-4o-mini``), so a table keyed by the names users type matches dated snapshots.
The vocabulary of the run's cost (``_report``), of its spend cap (``_flow``) and of
embeddings' cost (``_core``): :class:`CostTally` adds responses' costs up.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._messages import a_kind

PER = 1_000_000
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")  # -2024-07-18, -20250929
_PRICE_KEYS = ("input", "output", "cached_input", "cache_write")


def _check_price(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name in ("cached_input", "cache_write"):
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"Price.{attribute.name} is {value!r}; give USD per million tokens (a number >= 0)"
        )


@attrs.frozen
class Price:
    """A model's prices in USD per million tokens.

    ``cached_input`` prices prompt tokens read from the provider's cache and
    ``cache_write`` those written to it (Anthropic); each defaults to ``input``.
    """

    input: float = attrs.field(validator=_check_price)
    output: float = attrs.field(validator=_check_price)
    cached_input: float | None = attrs.field(default=None, validator=_check_price)
    cache_write: float | None = attrs.field(default=None, validator=_check_price)

    def cost(self, usage: Mapping[str, int]) -> float:
        """USD for one response's ``usage`` (its prompt tokens include the cached ones)."""
        cached = usage.get("cached_prompt_tokens") or 0
        written = usage.get("cache_write_tokens") or 0
        uncached = max((usage.get("prompt_tokens") or 0) - cached - written, 0)
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        return (
            uncached * self.input
            + cached * cached_price
            + written * write_price
            + (usage.get("completion_tokens") or 0) * self.output
        ) / PER


def check_prices(value: object, owner: str) -> dict[str, Price]:
    """A price table from ``{model: Price or {"input", "output", ...}}``; raise naming the
    model and the field at fault."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{owner}: prices must be a mapping of model name to prices, not {type(value).__name__}"
        )
    table: dict[str, Price] = {}
    for model, given in value.items():
        if not isinstance(model, str) or not model:
            raise TypeError(f"{owner}: price table key {model!r} is not a model name")
        if isinstance(given, Price):
            table[model] = given
            continue
        where = f"{owner}: prices[{model!r}]"
        if not isinstance(given, Mapping):
            raise TypeError(
                f'{where} is {a_kind(given)}; give {{"input": ..., "output": ...}} '
                "in USD per million tokens"
            )
        unknown = [k for k in given if k not in _PRICE_KEYS]
        if unknown:
            raise ValueError(
                f"{where} has {unknown[0]!r}; the keys are {', '.join(_PRICE_KEYS)} "
                "(USD per million tokens)"
            )
        missing = [k for k in ("input", "output") if k not in given]
        if missing:
            raise ValueError(f"{where} has no {missing[0]!r} price; give USD per million tokens")
        try:
            table[model] = Price(**given)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return table


def price_for(model: str, table: Mapping[str, Price]) -> Price | None:
    """The price of ``model``: by its name, else by its name without a date suffix."""
    price = table.get(model)
    if price is None:
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model:
            price = table.get(undated)
    return price


def load_prices(path: str | Path) -> dict[str, Price]:
    """A price table from a JSON file of ``{model: {"input", "output", ...}}``."""
    where = f"prices file {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    return check_prices(data, where)


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
