"""The run summary as a JSON document, per model and deployment too, written atomically.

``llmfanout run --stats-json FILE`` writes :meth:`RunStats.document` at the start, every
few seconds and at the end, so a scheduler or a notebook can watch a run without an
observability stack. Each write goes to a temporary file beside ``FILE`` which then
replaces it (``os.replace``, atomic on POSIX and Windows): a reader, or a run killed
with ``kill -9`` at any instant, finds the previous document or the next one whole,
never a torn one.

The top level is the run's :class:`~llmfanout._report._summary.RunSummary` (the very
numbers the CLI prints), plus latency quantiles (p50, p90, p99) and time to first token
(streamed answers only); ``by_model`` repeats them for each model asked for and the
deployment (provider and server) that answered.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._base._types import LLMResponse
from .._core._tasks import TaskResult
from .._telemetry._attributes import provider_name, server
from ._cost import Price, price_for
from ._summary import SummaryAccumulator, _percentile

SCHEMA = "llmfanout.stats/1"


def deployment(provider: object) -> str:
    """``openai@api.openai.com:443``: the provider's name and its server, if it has one."""
    name = provider_name(provider)
    where = server(provider)
    return name if where is None else f"{name}@{where[0]}:{where[1]}"


def pricer(table: Mapping[str, Price]) -> Callable[[LLMResponse], float | None]:
    """USD for one answer from a price table (None: no price for its model, or no usage)."""
    cache: dict[str, Price | None] = {}

    def cost(answer: LLMResponse) -> float | None:
        model = answer.model
        if model not in cache:
            cache[model] = price_for(model, table)
        price = cache[model]
        return None if price is None or not answer.usage else price.cost(answer.usage)

    return cost


class _Group:
    __slots__ = ("summary", "ttft")

    def __init__(self, prices: Mapping[str, Price] | None) -> None:
        self.summary = SummaryAccumulator(prices)
        self.ttft = array("d")


class RunStats:
    """Results by model and deployment, with their time to first token, for the document."""

    __slots__ = ("_groups", "_prices", "deployment", "ttft")

    def __init__(self, deployment: str, prices: Mapping[str, Price] | None = None) -> None:
        self.deployment = deployment
        self._prices = prices
        self._groups: dict[str, _Group] = {}
        self.ttft = array("d")  # seconds, over the whole run

    def add(self, result: TaskResult, model: str) -> None:
        """Count one result of a call to ``model`` (the model asked for)."""
        group = self._groups.get(model)
        if group is None:
            group = self._groups[model] = _Group(self._prices)
        group.summary.add(result)
        metadata = getattr(result.value, "metadata", None)
        if isinstance(metadata, Mapping):
            first = metadata.get("time_to_first_token_s")
            if isinstance(first, int | float) and not isinstance(first, bool):
                group.ttft.append(first)
                self.ttft.append(first)

    def document(
        self, summary: SummaryAccumulator, *, elapsed: float, state: str
    ) -> dict[str, Any]:
        """The JSON document: ``summary`` (the run's own) at the top, then ``by_model``."""
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "state": state,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **_numbers(summary, self.ttft, elapsed),
            "by_model": [
                {"model": model, "deployment": self.deployment}
                | _numbers(group.summary, group.ttft, None)
                for model, group in sorted(self._groups.items())
            ],
        }
        return document


def _numbers(
    accumulator: SummaryAccumulator, ttft: array[float], elapsed: float | None
) -> dict[str, Any]:
    numbers = attrs.asdict(accumulator.summary(elapsed=elapsed))
    numbers["unpriced"] = dict(numbers["unpriced"])
    if elapsed is None:
        for key in ("elapsed_s", "throughput", "concurrency"):
            numbers.pop(key)
    durations = sorted(accumulator.durations)
    numbers["latency_ms"] = _quantiles(durations, 1.0)
    numbers["ttft_ms"] = _quantiles(sorted(ttft), 1000.0) if ttft else None
    return numbers


def _quantiles(ordered: list[float], scale: float) -> dict[str, float | int | None]:
    def at(q: float) -> float | None:
        value = _percentile(ordered, q)
        return None if value is None else round(value * scale, 3)

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1] * scale, 3) if ordered else None,
    }


def write_atomically(path: str, document: Mapping[str, Any]) -> None:
    """Write ``document`` as JSON to ``path``: whole or not at all, never torn."""
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # any failure, cancellation included (noqa: cancellation-ok)
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
