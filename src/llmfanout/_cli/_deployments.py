"""The per-deployment lines of ``llmfanout run --deployments``'s summary."""

from __future__ import annotations

from collections.abc import Mapping

from .._deploy._slots import DeploymentStats
from .._report._cost import Price, price_for

__all__ = ["deployments_table"]


def deployments_table(
    stats: Mapping[str, DeploymentStats], prices: Mapping[str, Price] | None
) -> str:
    """One line per deployment: requests, outcomes, 429s, fallbacks, hedges, tokens, cost."""
    lines = ["deployments:"]
    width = max(len(name) for name in stats)
    for name, s in stats.items():
        line = (
            f"  {name:<{width}}  {s.calls} requests, {s.succeeded} ok, {s.failed} failed, "
            f"{s.rate_limited} rate-limited, {s.fallbacks} fallbacks, {s.hedges} hedges, "
            f"{s.prompt_tokens + s.completion_tokens} tokens"
        )
        price = price_for(s.model, prices) if prices and s.model else None
        if price is not None:
            usage = {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens}
            line += f", ${price.cost(usage):.4f}"
        if s.state != "ok":
            line += f" ({s.state})"
        lines.append(line)
    return "\n".join(lines)
