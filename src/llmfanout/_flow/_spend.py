"""The run's spend cap: no call starts that could take the spending past ``max_cost_usd``.

Before each call (first attempts, retries and re-asks alike) :class:`SpendCap` reserves
the most the call could cost: its prompt (a generous guess from the text) at the input
price plus ``max_tokens`` at the output price. The call may start only if the cost
already spent plus every reservation in flight plus its own stays within the cap; when
one is refused, the cap is reached for good and nothing else starts, so the order of
what ran is the order of admission. When the call ends its reservation is replaced by
what it cost (its usage at the table's price); an error answer (an HTTP status) costs
nothing, a call that ended without one (a timeout, a dropped connection, cancellation)
keeps its reservation, since the provider may have billed it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .._base._prices import Price, price_for
from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse
from ..errors import TaskAborted

DEFAULT_OUTPUT_TOKENS = 4096
"""Output tokens reserved for a call with no ``max_tokens``: set it for a tight bound."""


class UnpricedModel(ValueError):
    """A call to a model the price table does not have, under a spend cap; not retried."""

    retryable = False


def prompt_guess(messages: Sequence[LLMMessage]) -> int:
    """A generous guess at a prompt's tokens: three characters a token, plus framing."""
    characters = 0
    for m in messages:
        content = m.content
        characters += len(content) if isinstance(content, str) else len(m.text) + 1000
    return characters // 3 + 8 * len(messages)


class SpendCap:
    """The spend of everything sent through it, against ``max_usd``. Thread-safe: one
    executor may serve several event loops."""

    __slots__ = ("_lock", "_prices", "in_flight", "max_usd", "reached", "spent")

    def __init__(self, max_usd: float, prices: Mapping[str, Price]) -> None:
        if (
            not isinstance(max_usd, int | float)
            or isinstance(max_usd, bool)
            or not math.isfinite(max_usd)
            or max_usd <= 0
        ):
            raise ValueError(f"max_cost_usd is {max_usd!r}; give USD > 0, or None for no cap")
        self.max_usd = float(max_usd)
        self._prices = prices
        self._lock = threading.Lock()
        self.spent = 0.0
        self.in_flight = 0.0
        self.reached = False

    @property
    def reason(self) -> str:
        """Why calls are refused, for the results of the tasks not sent."""
        return (
            f"the spend cap max_cost_usd=${self.max_usd:g} was reached (${self.spent:.6g} "
            f"spent, ${self.in_flight:.6g} in flight); run again (--resume) to send the rest"
        )

    def price(self, model: str) -> Price:
        """The model's price; :class:`UnpricedModel` naming it when the table has none."""
        price = price_for(model, self._prices)
        if price is None:
            raise UnpricedModel(
                f"model {model!r} has no price in the price table, so the spend cap "
                "(max_cost_usd) cannot bound its calls; add it to the prices"
            )
        return price

    def reserve(self, price: Price, prompt_tokens: int, max_tokens: int) -> float:
        """Reserve a call's most; raise :class:`TaskAborted` if it does not fit."""
        most = price.cost({"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens})
        with self._lock:
            if self.reached or self.spent + self.in_flight + most > self.max_usd:
                self.reached = True
                raise TaskAborted(f"not sent: {self.reason}")
            self.in_flight += most
        return most

    def settle(self, reserved: float, cost: float) -> None:
        """Replace a reservation by what the call cost."""
        with self._lock:
            self.in_flight = max(self.in_flight - reserved, 0.0)
            self.spent += cost


def _max_tokens(provider: Any, overrides: Mapping[str, Any] | None) -> int:
    for source in (overrides or {}, getattr(provider, "default_params", None) or {}):
        limit = source.get("max_tokens", source.get("max_completion_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool):
            return limit
    limit = getattr(provider, "max_tokens", None)
    return limit if isinstance(limit, int) else DEFAULT_OUTPUT_TOKENS


class CappedProvider:
    """``provider`` with every call admitted by a :class:`SpendCap` first."""

    __slots__ = ("cap", "provider")

    def __init__(self, provider: AsyncLLMProvider, cap: SpendCap) -> None:
        self.provider = provider
        self.cap = cap

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        """The provider's answer, if the call fits under the cap (else TaskAborted)."""
        provider = self.provider
        model = (config_overrides or {}).get("model") or getattr(provider, "model", None)
        price = self.cap.price(str(model))
        reserved = self.cap.reserve(
            price, prompt_guess(messages), _max_tokens(provider, config_overrides)
        )
        cost = reserved
        try:
            response = await provider.complete(messages, config_overrides=config_overrides)
            usage = response.usage
            if usage:
                answered = price_for(response.model, self.cap._prices) or price
                cost = answered.cost(usage)
            return response
        except Exception as exc:
            if getattr(exc, "status_code", None) is not None:
                cost = 0.0  # an error answer: nothing generated, nothing billed
            raise
        finally:
            self.cap.settle(reserved, cost)
