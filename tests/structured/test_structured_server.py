"""Structured outputs against the loopback fake server: OpenAI and Anthropic, both backends.

The server answers each task from a script keyed by the task's prompt, one answer per
turn, so a test says exactly what the model answers and counts what was sent.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pydantic
import pytest

from llmfanout import (
    AnthropicProvider,
    LLMTask,
    OpenAIProvider,
    ParallelLLMExecutor,
    TaskResult,
)
from llmfanout.errors import TaskAborted, ValidationFailed

from support.fake_llm_server import FakeLLMServer, Fault, RecordedRequest, serve_fake_llm
from support.fake_llm_server import _tokens as tokens

pytestmark = pytest.mark.anyio

KEY = "sk-test-structured-0123456789"
PRICES = {"m": {"input": 1000.0, "output": 1000.0}}  # $0.001 a token: easy sums


class Person(pydantic.BaseModel):
    name: str
    age: int


PERSON = {"name": "Ada", "age": 36}


def first_prompt(request: RecordedRequest) -> str:
    """The task's own prompt: its first user message (a fallback adds a system one)."""
    for message in request.json["messages"]:
        if message["role"] == "user" and isinstance(message["content"], str):
            return message["content"]
    raise AssertionError(f"no user message in {request.json}")


def script(server: FakeLLMServer, answers: dict[str, Iterable[Fault]]) -> None:
    """Answer each task's turns in order from ``answers[prompt]``."""
    queues = {prompt: deque(faults) for prompt, faults in answers.items()}
    server.fault_for = lambda request: queues[first_prompt(request)].popleft()


def text(value: object) -> Fault:
    return Fault.ok(value if isinstance(value, str) else json.dumps(value))


def tool(value: dict[str, Any], name: str = "Person") -> Fault:
    return Fault.tool_calls_answer((name, value))


@asynccontextmanager
async def openai(server: FakeLLMServer, **options: Any) -> AsyncIterator[ParallelLLMExecutor]:
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as provider:
        yield ParallelLLMExecutor(provider, max_concurrency=4, **options)


@asynccontextmanager
async def anthropic(server: FakeLLMServer, **options: Any) -> AsyncIterator[ParallelLLMExecutor]:
    base = server.anthropic_base_url
    async with AnthropicProvider("m", base_url=base, api_key=KEY) as provider:
        yield ParallelLLMExecutor(provider, max_concurrency=4, **options)


def task(prompt: str, **kwargs: Any) -> LLMTask:
    kwargs.setdefault("response_model", Person)
    return LLMTask([{"role": "user", "content": prompt}], **kwargs)


# -- OpenAI ----------------------------------------------------------------------------------


async def test_valid_first_answer_is_parsed_with_no_reask() -> None:
    async with serve_fake_llm() as server:
        script(server, {"a": [text(PERSON)]})
        async with openai(server) as executor:
            result = (await executor.execute({"a": task("a")}))["a"]
    assert result.success, result.error
    assert result.value.parsed == Person(**PERSON)
    assert json.loads(result.value.content) == PERSON
    assert (result.reasks, result.attempts, len(server.requests)) == (0, 1, 1)
    sent = server.requests[0].json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Person"
    assert sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["additionalProperties"] is False
    assert sent["json_schema"]["schema"]["required"] == ["name", "age"]


async def test_two_reasks_each_carry_the_previous_errors_and_usage_is_summed() -> None:
    async with serve_fake_llm() as server:
        answers = [text("not json {"), text({"name": "Ada", "age": "old"}), text(PERSON)]
        script(server, {"a": answers})
        async with openai(server) as executor:
            result = (await executor.execute({"a": task("a")}))["a"]
    assert result.success, result.error
    assert result.value.parsed == Person(**PERSON)
    assert result.reasks == 2
    requests = server.requests
    assert len(requests) == 3
    second, third = requests[1].json["messages"], requests[2].json["messages"]
    assert second[-2] == {"role": "assistant", "content": "not json {"}
    assert second[-1]["role"] == "user" and "Invalid JSON" in second[-1]["content"]
    assert third[:-2] == second  # the whole history goes along
    assert "age" in third[-1]["content"] and "integer" in third[-1]["content"]
    # usage over all three answers, counted as the server counts them
    prompts = sum(tokens(str(m["content"])) for r in requests for m in r.json["messages"])
    completions = sum(tokens(a.content or "") for a in answers)
    usage = result.value.usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompts, completions)
    assert usage["total_tokens"] == prompts + completions


async def test_exhausted_reasks_fail_the_task_only() -> None:
    bad = {"name": "Ada"}  # age missing
    async with serve_fake_llm() as server:
        script(server, {"bad": [text(bad)] * 5, "good": [text(PERSON)]})
        async with openai(server) as executor:
            results = await executor.execute(
                {"bad": task("bad", max_reasks=2), "good": task("good")}
            )
    assert results["good"].success and results["good"].value.parsed.age == 36
    failed = results["bad"]
    assert not failed.success and failed.reasks == 2
    error = failed.error
    assert isinstance(error, ValidationFailed)
    assert error.stopped_by == "max_reasks" and error.reasks == 2
    assert [raw for raw, _ in error.attempts] == [json.dumps(bad)] * 3
    assert all(errors == ("age: Field required",) for _, errors in error.attempts)
    assert error.usage is not None and error.usage["total_tokens"] > 0
    assert len(_for(server, "bad")) == 3


def _for(server: FakeLLMServer, prompt: str) -> list[RecordedRequest]:
    return [r for r in server.requests if first_prompt(r) == prompt]


async def test_a_server_refusing_json_schema_gets_json_object_once_and_for_good() -> None:
    refusal = Fault.status(400, message="response_format type json_schema is not supported")
    async with serve_fake_llm() as server:
        script(server, {"a": [refusal, text(PERSON)], "b": [text(PERSON)]})
        async with openai(server) as executor:
            first = (await executor.execute({"a": task("a")}))["a"]
            second = (await executor.execute({"b": task("b")}))["b"]
    assert first.success and second.success
    formats = [r.json["response_format"]["type"] for r in server.requests]
    assert formats == ["json_schema", "json_object", "json_object"]
    fallback = server.requests[1].json["messages"][0]
    assert fallback["role"] == "system" and '"age"' in fallback["content"]
    assert first.attempts == 1  # the fallback is part of the call, not a retry


async def test_other_bad_requests_are_not_taken_for_a_refusal() -> None:
    async with serve_fake_llm() as server:
        script(server, {"a": [Fault.status(400, message="model not found")]})
        async with openai(server) as executor:
            result = (await executor.execute({"a": task("a")}))["a"]
    assert not result.success and getattr(result.error, "status_code", None) == 400
    assert len(server.requests) == 1


async def test_token_budget_stops_reasking() -> None:
    async with serve_fake_llm() as server:
        script(server, {"a": [text({"name": 1, "age": 2})] * 5})
        async with openai(server) as executor:
            result = (await executor.execute({"a": task("a", token_budget=40)}))["a"]
    assert isinstance(result.error, ValidationFailed)
    assert result.error.stopped_by == "token_budget"
    assert len(server.requests) == 1 and result.reasks == 0


async def test_cost_budget_stops_reasking_at_the_price() -> None:
    async with serve_fake_llm() as server:
        script(server, {"a": [text({"name": 1, "age": 2})] * 5})
        async with openai(server, prices=PRICES) as executor:
            result = (await executor.execute({"a": task("a", cost_budget=0.02)}))["a"]
    assert isinstance(result.error, ValidationFailed)
    assert result.error.stopped_by == "cost_budget"
    assert len(server.requests) == 1  # a re-ask would have passed $0.02


async def test_json_schema_dict_and_callable_validators() -> None:
    schema = {
        "title": "Label",
        "type": "object",
        "properties": {"label": {"enum": ["spam", "ham"]}},
        "required": ["label"],
    }

    def positive(value: Any) -> int:
        if not isinstance(value, dict) or value.get("n", 0) <= 0:
            raise ValueError("n must be > 0")
        return int(value["n"])

    async with serve_fake_llm() as server:
        script(
            server,
            {
                "s": [text({"label": "eggs"}), text({"label": "ham"})],
                "c": [text({"n": -1}), text({"n": 3})],
            },
        )
        async with openai(server) as executor:
            results = await executor.execute(
                {
                    "s": task("s", response_model=None, response_schema=schema),
                    "c": task("c", response_model=positive),
                }
            )
    assert results["s"].value.parsed == {"label": "ham"} and results["s"].reasks == 1
    assert results["c"].value.parsed == 3 and results["c"].reasks == 1
    reask = _for(server, "c")[1].json["messages"][-1]["content"]
    assert "n must be > 0" in reask
    kinds = {first_prompt(r): r.json["response_format"]["type"] for r in server.requests}
    assert kinds == {"s": "json_schema", "c": "json_object"}


# -- Anthropic -------------------------------------------------------------------------------


async def test_anthropic_forced_tool_round_trip_with_a_reask() -> None:
    async with serve_fake_llm() as server:
        script(server, {"a": [tool({"name": "Ada", "age": "old"}), tool(PERSON)]})
        async with anthropic(server) as executor:
            result = (await executor.execute({"a": task("a")}))["a"]
    assert result.success, result.error
    assert result.value.parsed == Person(**PERSON) and result.reasks == 1
    first, second = (r.json for r in server.requests)
    assert "response_format" not in first
    assert first["tool_choice"] == {"type": "tool", "name": "Person"}
    [sent_tool] = first["tools"]
    assert sent_tool["name"] == "Person"
    assert sent_tool["input_schema"]["properties"]["age"]["type"] == "integer"
    # The re-ask answers the tool call with a tool_result holding the errors.
    assistant, user = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["content"][0]["type"] == "tool_use"
    result_block = user["content"][0]
    assert result_block["type"] == "tool_result"
    assert result_block["tool_use_id"] == assistant["content"][0]["id"]
    assert "age" in json.dumps(result_block)
    assert result.value.usage["output_tokens"] >= 2


# -- the spend cap ---------------------------------------------------------------------------


async def capped_run(
    count: int, concurrency: int, cap: float
) -> tuple[list[str], dict[str, TaskResult], ParallelLLMExecutor, int]:
    """``count`` one-word tasks under a spend cap: prompts, results, executor, requests."""
    prompts = [f"p{i}" for i in range(count)]
    async with serve_fake_llm() as server:
        script(server, {p: [text("ok")] for p in prompts})
        params = {"max_tokens": 10}
        async with OpenAIProvider(
            "m", base_url=server.openai_base_url, api_key=KEY, default_params=params
        ) as provider:
            executor = ParallelLLMExecutor(
                provider, max_concurrency=concurrency, prices=PRICES, max_cost_usd=cap
            )
            tasks = {p: LLMTask([{"role": "user", "content": p}]) for p in prompts}
            results = await executor.execute(tasks)
    return prompts, results, executor, len(server.requests)


async def test_max_cost_stops_admitting_at_the_cap() -> None:
    # Each call reserves $0.018 (8 prompt tokens guessed, max_tokens 10) and costs $0.002
    # (the fake bills "p0" and "ok" a token each): with one in flight, calls start while
    # the spend is at most 0.031 - 0.018, so exactly 7 go out.
    prompts, results, executor, requests = await capped_run(12, 1, 0.031)
    sent = [r for r in results.values() if not isinstance(r.error, TaskAborted)]
    held = [r for r in results.values() if isinstance(r.error, TaskAborted)]
    assert [r.tag for r in sent] == prompts[:7]
    assert [r.tag for r in held] == prompts[7:]
    assert requests == 7 and all(r.success for r in sent)
    assert all(r.attempts == 0 for r in held[1:])  # never started
    assert executor.cost_cap_reached
    assert all("max_cost_usd" in str(r.error) for r in held)
    billed = sum(r.value.usage["total_tokens"] for r in sent) * 0.001
    assert executor.spent_usd == pytest.approx(billed)


async def test_max_cost_with_calls_in_flight_never_overspends() -> None:
    _, results, executor, requests = await capped_run(40, 8, 0.1)
    sent = [r for r in results.values() if r.success]
    assert requests == len(sent) < 40
    billed = sum(r.value.usage["total_tokens"] for r in sent) * 0.001
    assert billed <= 0.1
    assert executor.spent_usd == pytest.approx(billed)


async def test_max_cost_needs_prices() -> None:
    async with (
        serve_fake_llm() as server,
        OpenAIProvider("m", base_url=server.openai_base_url, api_key=KEY) as provider,
    ):
        with pytest.raises(ValueError, match="max_cost_usd needs prices"):
            ParallelLLMExecutor(provider, max_cost_usd=1.0)


@pytest.mark.parametrize("make", [openai, anthropic])
async def test_usage_and_cost_include_every_reask(
    make: Callable[..., Any],
) -> None:
    answers = {
        openai: [text({"name": "Ada"}), text(PERSON)],
        anthropic: [tool({"name": "Ada"}), tool(PERSON)],
    }[make]
    async with serve_fake_llm() as server:
        script(server, {"a": answers})
        async with make(server, prices=PRICES, max_cost_usd=10.0) as executor:
            result = (await executor.execute({"a": task("a")}))["a"]
    assert result.success and result.reasks == 1
    assert executor.spent_usd == pytest.approx(result.value.usage["total_tokens"] * 0.001)


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_during_a_reask_stops_it_and_propagates() -> None:
    gate_reached = anyio.Event()
    never = anyio.Event()

    def answer(request: RecordedRequest) -> Fault:
        if len(request.json["messages"]) == 1:
            return text({"name": "Ada"})  # invalid: a re-ask follows
        gate_reached.set()
        return Fault.ok(json.dumps(PERSON), gate=never)  # the re-ask hangs

    async with serve_fake_llm() as server:
        server.fault_for = answer
        async with openai(server) as executor:
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:

                    async def run() -> None:
                        await executor.execute({"a": task("a")})

                    tg.start_soon(run)
                    await gate_reached.wait()
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught  # cancelled by us, promptly, not the deadline
    assert len(server.requests) == 2
