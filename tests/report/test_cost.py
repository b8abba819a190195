"""Cost: usage with cached tokens from both APIs, priced from a table the user gives."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    AnthropicProvider,
    LLMResponse,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    Price,
    TaskResult,
    summarize,
)
from llmfanout._report._cost import load_prices, price_for

from support.fake_llm_server import Fault, serve_fake_llm

PRICES = {
    "gpt-test": {"input": 2.5, "cached_input": 1.25, "output": 10.0},
    "claude-test": {"input": 3.0, "cached_input": 0.3, "cache_write": 3.75, "output": 15.0},
}


def ok(response: LLMResponse, tag: str = "t") -> TaskResult:
    return TaskResult(tag, True, response, None, 1.0)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_the_cost_matches_the_usage_and_the_prices(kind: str) -> None:
    async with serve_fake_llm() as server:
        server.add_faults(*(Fault.ok("x" * 40, cached_tokens=8) for _ in range(3)))
        if kind == "openai":
            provider: Any = OpenAIProvider("gpt-test", base_url=server.openai_base_url, api_key="k")
        else:
            provider = AnthropicProvider(
                "claude-test", base_url=server.anthropic_base_url, api_key="k"
            )
        async with provider:
            tasks = {
                f"t{i}": LLMTask([{"role": "user", "content": "word " * (20 + i)}])
                for i in range(3)
            }
            results = await ParallelLLMExecutor(provider).execute(tasks)
    usages = [r.value.usage for r in results.values()]
    assert all(u["cached_prompt_tokens"] == 8 for u in usages)
    price = PRICES["gpt-test" if kind == "openai" else "claude-test"]
    expected = (
        sum(
            (u["prompt_tokens"] - 8) * price["input"]
            + 8 * price["cached_input"]
            + u["completion_tokens"] * price["output"]
            for u in usages
        )
        / 1_000_000
    )
    summary = summarize(results, prices=PRICES)
    assert summary.cost_usd == pytest.approx(expected, rel=1e-12)
    assert summary.cached_prompt_tokens == 24
    assert summary.unpriced == {}
    assert "cost: $0.00" in str(summary)


def test_anthropic_cache_writes_are_priced_as_writes() -> None:
    usage = {"prompt_tokens": 1000, "cache_write_tokens": 600, "cached_prompt_tokens": 300}
    usage["completion_tokens"] = 10
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    assert price.cost(usage) == pytest.approx((100 * 3.0 + 300 * 0.3 + 600 * 3.75 + 150) / 1e6)


counts = st.integers(min_value=0, max_value=10**7)
rates = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(counts, counts, counts, rates, rates, rates)
def test_cost_is_the_sum_of_tokens_times_their_price(
    uncached: int, cached: int, completion: int, input_: float, cached_input: float, out: float
) -> None:
    usage = {
        "prompt_tokens": uncached + cached,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
    }
    price = Price(input=input_, output=out, cached_input=cached_input)
    expected = (uncached * input_ + cached * cached_input + completion * out) / 1e6
    assert math.isclose(price.cost(usage), expected, rel_tol=1e-9, abs_tol=1e-12)
    assert Price(input=input_, output=out).cost(usage) == pytest.approx(
        ((uncached + cached) * input_ + completion * out) / 1e6, abs=1e-12
    )


@given(st.lists(st.tuples(counts, counts), max_size=20))
def test_a_run_costs_the_sum_of_its_responses(pairs: list[tuple[int, int]]) -> None:
    price = Price(input=1.5, output=6.0)
    responses = [
        LLMResponse("", model="m", usage={"prompt_tokens": p, "completion_tokens": c})
        for p, c in pairs
    ]
    summary = summarize([ok(r) for r in responses], prices={"m": price})
    expected = sum(price.cost(r.usage or {}) for r in responses)
    assert summary.cost_usd == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_dated_snapshots_match_the_undated_name() -> None:
    table = {"gpt-4o-mini": Price(0.15, 0.6), "claude-sonnet-4-5": Price(3, 15)}
    assert price_for("gpt-4o-mini-2024-07-18", table) is table["gpt-4o-mini"]
    assert price_for("claude-sonnet-4-5-20250929", table) is table["claude-sonnet-4-5"]
    assert price_for("gpt-4o-mini-audio", table) is None  # not a date: another model
    assert price_for("gpt-4o", table) is None


def test_responses_without_a_price_or_usage_are_counted_not_guessed() -> None:
    results = [
        ok(LLMResponse("", model="m", usage={"prompt_tokens": 10, "completion_tokens": 0})),
        ok(LLMResponse("", model="other", usage={"prompt_tokens": 5})),
        ok(LLMResponse("", model="m")),
        TaskResult("f", False, None, RuntimeError("x"), 1.0),
    ]
    summary = summarize(results, prices={"m": {"input": 1, "output": 1}})
    assert summary.cost_usd == pytest.approx(10 / 1e6)
    assert summary.unpriced == {"m": 1, "other": 1}
    assert "not counted, no price or no usage: m x1, other x1" in str(summary)
    assert summarize(results).cost_usd is None


@pytest.mark.parametrize(
    ("table", "error", "match"),
    [
        ([], TypeError, "summarize: prices must be a mapping of model name to prices"),
        ({"m": 3}, TypeError, r"summarize: prices\['m'\] is an int; give \{\"input\""),
        ({"m": {"input": 1}}, ValueError, r"prices\['m'\] has no 'output' price"),
        ({"m": {"input": 1, "output": 1, "cached": 1}}, ValueError, r"has 'cached'; the keys"),
        ({"m": {"input": -1, "output": 1}}, ValueError, r"Price.input is -1; give USD"),
    ],
)
def test_a_bad_price_table_is_refused_naming_the_model(
    table: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        summarize([], prices=table)


def test_prices_load_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(PRICES))
    table = load_prices(path)
    assert table["claude-test"] == Price(3.0, 15.0, cached_input=0.3, cache_write=3.75)
    path.write_text("{nope")
    with pytest.raises(ValueError, match=r"prices file .*prices\.json.*: not JSON"):
        load_prices(path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_prices(tmp_path / "missing.json")
