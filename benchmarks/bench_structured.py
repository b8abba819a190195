"""Structured outputs: the CPU validation adds to a call, against the same calls without a
schema, measured in the same run.

N calls (default 1000) at 100 in flight, each answered with the same ~1 KB JSON object
(an invoice with line items), on asyncio and on trio. Two providers:

- ``scripted``: a provider that yields once and returns the prebuilt answer, so the call
  costs only scheduling: the ratio is an upper bound (no HTTP, no JSON body to parse).
- ``openai``: ``OpenAIProvider`` over an ``httpx.MockTransport`` answering a Chat
  Completions body in process: the request's JSON, httpx, the body's JSON, ``LLMResponse``
  (a real call's CPU but for the socket).

Each is run without a schema (the baseline), with ``response_model=`` (pydantic), with
``response_schema=`` (jsonschema) and with a callable validator. The numbers are process
CPU seconds, the median of ``--rounds`` rounds in which every kind runs once, in an order
that turns each round (so a noisy neighbour on a shared machine falls on all of them);
the ratio is the median over rounds of each round's ratio against the baseline of the
same provider and backend in that round.

Run: ``python benchmarks/bench_structured.py`` (about a minute), ``--n``, ``--rounds``,
``--backend asyncio|trio``, ``--provider scripted|openai``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pydantic

from llmfanout import LLMMessage, LLMResponse, LLMTask, OpenAIProvider, ParallelLLMExecutor

CONCURRENCY = 100
KINDS = ("none", "pydantic", "jsonschema", "callable")


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


def _invoice(value: Any) -> None:
    """A callable validator: the checks a hand-written one would make."""
    if not isinstance(value, dict) or not isinstance(value.get("lines"), list):
        raise ValueError("an invoice is an object with a list of lines")
    for line in value["lines"]:
        if not isinstance(line.get("quantity"), int):
            raise ValueError("quantity must be an integer")


def _tasks(n: int, kind: str) -> dict[str, LLMTask]:
    options: dict[str, Any] = {}
    if kind == "pydantic":
        options["response_model"] = Invoice
    elif kind == "jsonschema":
        options["response_schema"] = SCHEMA
    elif kind == "callable":
        options["response_model"] = _invoice
    messages = [{"role": "user", "content": "Extract the invoice."}]
    return {str(i): LLMTask(messages, **options) for i in range(n)}


def _measure(provider: Any, n: int, kind: str, backend: str) -> float:
    tasks = _tasks(n, kind)  # made outside the clock: the same for every contender
    executor = ParallelLLMExecutor(provider, max_concurrency=CONCURRENCY)
    gc.collect()
    start = time.process_time()
    results = anyio.run(executor.execute, tasks, backend=backend)
    spent = time.process_time() - start
    assert all(r.success for r in results.values()), next(
        r.error for r in results.values() if not r.success
    )
    if kind != "none":
        assert results["0"].value.parsed is not None
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=("asyncio", "trio"), action="append")
    parser.add_argument("--provider", choices=("scripted", "openai"), action="append")
    args = parser.parse_args()
    backends = args.backend or ["asyncio", "trio"]
    providers = args.provider or ["scripted", "openai"]
    print(f"{args.n} calls, {CONCURRENCY} in flight, {len(ANSWER)}-byte answers, ", end="")
    print(f"median of {args.rounds} alternated rounds")
    print(
        f"{'backend':<8} {'provider':<9} {'schema':<11} {'CPU s':>7} {'us/call':>8} {'vs none':>8}"
    )
    for backend in backends:
        for name in providers:
            provider = Scripted() if name == "scripted" else _openai()
            for kind in KINDS[1:]:  # warm up imports and caches
                _measure(provider, min(args.n, 200), kind, backend)
            spent: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for round_ in range(args.rounds):
                turn = round_ % len(KINDS)
                for kind in (*KINDS[turn:], *KINDS[:turn]):
                    spent[kind].append(_measure(provider, args.n, kind, backend))
            for kind in KINDS:
                median = statistics.median(spent[kind])
                per_call = median / args.n * 1e6
                # The ratio within each round (its contenders ran back to back), then the
                # median of those: a load that drifts across rounds cancels out.
                ratios = [
                    mine / none for mine, none in zip(spent[kind], spent["none"], strict=True)
                ]
                ratio = statistics.median(ratios)
                row = f"{backend:<8} {name:<9} {kind:<11} {median:>7.3f} {per_call:>8.1f}"
                print(f"{row} {ratio:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
