"""Structured outputs: the CPU validation adds to a call, against the same calls without a
schema, measured in the same run.

N calls (default 2000) at 100 in flight, each answered with the same ~1 KB JSON object
(an invoice with line items), on asyncio. Two providers:

- ``scripted``: a provider that yields once and returns the prebuilt answer, so the call
  costs only scheduling: the ratio is an upper bound (no HTTP, no JSON body to parse).
- ``openai``: ``OpenAIProvider`` over an ``httpx.MockTransport`` answering a Chat
  Completions body in process: the request's JSON, httpx, the body's JSON, ``LLMResponse``
  (a real call's CPU but for the socket).

Each is run without a schema (the baseline), with ``response_model=`` (pydantic) and with
``response_schema=`` (jsonschema); the numbers are process CPU seconds, best of
``--repeats``, and the ratio against the baseline of the same provider.

Run: ``python benchmarks/bench_structured.py`` (well under a minute), ``--n``,
``--repeats``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pydantic

from llmfanout import LLMMessage, LLMResponse, LLMTask, OpenAIProvider, ParallelLLMExecutor

CONCURRENCY = 100


class Line(pydantic.BaseModel):
    sku: str
    description: str
    quantity: int
    unit_price: float


class Invoice(pydantic.BaseModel):
    vendor: str
    number: str
    currency: str
    total: float
    lines: list[Line]


ANSWER = json.dumps(
    {
        "vendor": "ACME Corporation International",
        "number": "INV-2026-000123",
        "currency": "EUR",
        "total": 1234.5,
        "lines": [
            {
                "sku": f"SKU-{i:05d}",
                "description": f"widget model {i}, blue, boxed",
                "quantity": i + 1,
                "unit_price": 9.99 + i,
            }
            for i in range(9)
        ],
    }
)
SCHEMA = Invoice.model_json_schema()
RESPONSE = LLMResponse(ANSWER, model="m", usage={"prompt_tokens": 20, "completion_tokens": 250})


class Scripted:
    """Yields once, returns the prebuilt 1 KB answer."""

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        await anyio.lowlevel.checkpoint()
        return RESPONSE


def _body() -> bytes:
    message = {"role": "assistant", "content": ANSWER}
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 250, "total_tokens": 270},
        }
    ).encode()


BODY = _body()


def _openai() -> OpenAIProvider:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=BODY))
    client = httpx.AsyncClient(transport=transport)
    return OpenAIProvider("m", api_key="sk-bench", http_client=client)


def _tasks(n: int, kind: str) -> dict[str, LLMTask]:
    options: dict[str, Any] = {}
    if kind == "pydantic":
        options["response_model"] = Invoice
    elif kind == "jsonschema":
        options["response_schema"] = SCHEMA
    messages = [{"role": "user", "content": "Extract the invoice."}]
    return {str(i): LLMTask(messages, **options) for i in range(n)}


def _measure(provider: Any, n: int, kind: str) -> float:
    tasks = _tasks(n, kind)  # made outside the clock: the same for every contender
    executor = ParallelLLMExecutor(provider, max_concurrency=CONCURRENCY)
    gc.collect()
    start = time.process_time()
    results = anyio.run(executor.execute, tasks)
    spent = time.process_time() - start
    assert all(r.success for r in results.values()), next(
        r.error for r in results.values() if not r.success
    )
    if kind != "none":
        assert results["0"].value.parsed is not None
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.n} calls, {CONCURRENCY} in flight, {len(ANSWER)}-byte answers, asyncio")
    print(f"{'provider':<10} {'schema':<11} {'CPU s':>8} {'us/call':>9} {'vs none':>8}")
    for name, make in (("scripted", Scripted), ("openai", _openai)):
        provider = make()
        _measure(provider, min(args.n, 500), "pydantic")  # warm up imports and caches
        baseline = 0.0
        for kind in ("none", "pydantic", "jsonschema"):
            best = min(_measure(provider, args.n, kind) for _ in range(args.repeats))
            if kind == "none":
                baseline = best
            per_call = best / args.n * 1e6
            ratio = best / baseline
            print(f"{name:<10} {kind:<11} {best:>8.3f} {per_call:>9.1f} {ratio:>7.2f}x")


if __name__ == "__main__":
    main()
