"""The examples of the API we adopted ("Parallel LLM Execution"), run as tests.

Each test is one example of the reference document, translated to our imports and run
with ``EchoProvider`` as the provider, on asyncio and trio. Where our semantics are
narrower or different from a literal reading of the reference, the test says so.
"""

from __future__ import annotations

import hashlib
import random
import threading
from datetime import datetime
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs
import pytest

from llmfanout import (
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    TaskResult,
)
from llmfanout.retry import BackoffStrategy, RetryConfig, backoff_delay
from llmfanout.testing import ErrorResponse, text_response

pytestmark = pytest.mark.anyio


def _answers(results: dict[str, TaskResult]) -> dict[str, str]:
    return {tag: result.value.content for tag, result in results.items()}


# -- Overview ------------------------------------------------------------------------------


async def test_overview(capsys: pytest.CaptureFixture[str]) -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)

    results = await executor.execute(
        {
            "q1": LLMTask(messages=[LLMMessage(role="user", content="Generate a math question")]),
            "q2": LLMTask(
                messages=[LLMMessage(role="user", content="Generate a science question")]
            ),
            "q3": LLMTask(
                messages=[LLMMessage(role="user", content="Generate a history question")]
            ),
        }
    )

    for tag, result in results.items():
        if result.success:
            print(f"{tag}: {result.value.content}")
        else:
            print(f"{tag}: FAILED - {result.error}")

    assert capsys.readouterr().out.splitlines() == [
        "q1: Echo: Generate a math question",
        "q2: Echo: Generate a science question",
        "q3: Echo: Generate a history question",
    ]
    assert provider.call_count == 3


# -- Creating an Executor ------------------------------------------------------------------


async def test_creating_an_executor() -> None:
    llm_provider = EchoProvider()
    executor = ParallelLLMExecutor(
        provider=llm_provider,
        max_concurrency=5,
        default_retry=RetryConfig(
            max_attempts=3,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
        ),
    )

    assert executor.provider is llm_provider
    assert executor.max_concurrency == 5
    assert executor.default_retry == RetryConfig(
        max_attempts=3, backoff_strategy=BackoffStrategy.EXPONENTIAL
    )
    # The table's defaults.
    plain = ParallelLLMExecutor(EchoProvider())
    assert plain.max_concurrency == 5
    assert plain.default_retry is None
    assert plain.default_config_overrides is None


async def test_the_default_retry_applies_to_tasks_without_their_own() -> None:
    # The reference's policy waits 1 s, then 2 s: same policy, zero delay, for the test.
    policy = RetryConfig(max_attempts=3, backoff_strategy=BackoffStrategy.EXPONENTIAL)
    boom = RuntimeError("overloaded")
    provider = EchoProvider([ErrorResponse(boom), ErrorResponse(boom), "third time"])
    executor = ParallelLLMExecutor(
        provider, max_concurrency=5, default_retry=attrs.evolve(policy, initial_delay=0.0)
    )

    results = await executor.execute({"q": LLMTask(messages=[LLMMessage("user", "Hello")])})

    assert results["q"].success
    assert results["q"].value.content == "third time"
    assert results["q"].attempts == 3
    assert [backoff_delay(policy, n) for n in (1, 2)] == [1.0, 2.0]


async def test_default_config_overrides_yield_to_the_task_s_own() -> None:
    provider = EchoProvider()
    executor = ParallelLLMExecutor(
        provider, default_config_overrides={"model": "small", "temperature": 0.2}
    )

    await executor.execute(
        {
            "hot": LLMTask(
                messages=[LLMMessage("user", "Be creative")],
                config_overrides={"temperature": 0.9},
            )
        }
    )

    assert provider.calls[0].config_overrides == {"model": "small", "temperature": 0.9}


# -- execute() -----------------------------------------------------------------------------


async def test_execute() -> None:
    executor = ParallelLLMExecutor(EchoProvider())

    results = await executor.execute(
        {
            "stem": LLMTask(messages=[LLMMessage(role="user", content="Generate a question stem")]),
            "distractors": LLMTask(
                messages=[LLMMessage(role="user", content="Generate distractors")]
            ),
        }
    )

    assert list(results) == ["stem", "distractors"]
    assert all(isinstance(result, TaskResult) for result in results.values())
    assert [result.tag for result in results.values()] == ["stem", "distractors"]
    assert _answers(results) == {
        "stem": "Echo: Generate a question stem",
        "distractors": "Echo: Generate distractors",
    }


async def test_execute_never_runs_more_than_max_concurrency() -> None:
    in_flight = peak = 0
    full = anyio.Event()
    gate = anyio.Event()

    async def held_open(messages: Any) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        await gate.wait()
        in_flight -= 1
        return "done"

    executor = ParallelLLMExecutor(
        EchoProvider().set_response_function(held_open), max_concurrency=3
    )
    tasks = {f"q{i}": LLMTask(messages=[LLMMessage("user", "go")]) for i in range(10)}
    results: dict[str, TaskResult] = {}

    async def run() -> None:
        results.update(await executor.execute(tasks))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await full.wait()
            assert in_flight == 3
            gate.set()

    assert peak == 3
    assert len(results) == 10 and all(result.success for result in results.values())


# -- execute_mixed() -----------------------------------------------------------------------


async def test_execute_mixed() -> None:
    loop_thread = threading.get_ident()
    lookups: list[tuple[str, int]] = []

    def fetch_reference_data(subject: str) -> dict[str, str]:
        lookups.append((subject, threading.get_ident()))
        return {"subject": subject, "kingdom": "animalia"}

    executor = ParallelLLMExecutor(EchoProvider())
    before = datetime.now()

    results = await executor.execute_mixed(
        {
            "question": LLMTask(
                messages=[LLMMessage(role="user", content="Generate a question")],
            ),
            "timestamp": DeterministicTask(
                fn=lambda: datetime.now().isoformat(),
            ),
            "lookup": DeterministicTask(
                fn=fetch_reference_data,
                args=("biology",),
            ),
        }
    )

    assert all(result.success for result in results.values())
    assert results["question"].value.content == "Echo: Generate a question"
    assert before <= datetime.fromisoformat(results["timestamp"].value) <= datetime.now()
    assert results["lookup"].value == {"subject": "biology", "kingdom": "animalia"}
    # "Sync callables are run in a thread executor to avoid blocking the event loop."
    [(subject, thread)] = lookups
    assert subject == "biology" and thread != loop_thread


async def test_execute_mixed_awaits_async_callables_on_the_loop() -> None:
    loop_thread = threading.get_ident()

    async def fetch(record: str) -> tuple[str, int]:
        await anyio.lowlevel.checkpoint()
        return record, threading.get_ident()

    results = await ParallelLLMExecutor(EchoProvider()).execute_mixed(
        {"row": DeterministicTask(fn=fetch, args=("record_123",))}
    )

    assert results["row"].value == ("record_123", loop_thread)


async def test_execute_mixed_functions_share_the_cap_with_llm_tasks() -> None:
    lock = threading.Lock()
    in_flight = peak = 0
    a_function_ran = anyio.Event()

    def enter() -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)

    def leave() -> None:
        nonlocal in_flight
        with lock:
            in_flight -= 1

    async def llm_answer(messages: Any) -> str:
        enter()
        await a_function_ran.wait()  # an LLM task and a function are in flight together
        leave()
        return "llm"

    def function(index: int) -> int:
        enter()
        anyio.from_thread.run_sync(a_function_ran.set)
        leave()
        return index

    executor = ParallelLLMExecutor(
        EchoProvider().set_response_function(llm_answer), max_concurrency=2
    )
    tasks: dict[str, LLMTask | DeterministicTask] = {}
    for i in range(4):
        tasks[f"llm{i}"] = LLMTask(messages=[LLMMessage("user", "go")])
        tasks[f"fn{i}"] = DeterministicTask(fn=function, args=(i,))

    with anyio.fail_after(5):
        results = await executor.execute_mixed(tasks)

    assert all(result.success for result in results.values())
    assert [results[f"fn{i}"].value for i in range(4)] == [0, 1, 2, 3]
    assert peak == 2


# -- execute_sequential() ------------------------------------------------------------------


async def test_execute_sequential_with_pass_result() -> None:
    provider = EchoProvider(
        [text_response("What is 2 + 2?"), text_response("What is 2 + 2, and why?")]
    )
    executor = ParallelLLMExecutor(provider)

    results = await executor.execute_sequential(
        tasks=[
            LLMTask(
                messages=[LLMMessage(role="user", content="Generate a question")],
                tag="generate",
            ),
            LLMTask(
                messages=[LLMMessage(role="user", content="Now improve this question")],
                tag="improve",
            ),
        ],
        pass_result=True,  # Appends previous response as assistant message
    )

    assert isinstance(results, list)
    assert [(r.tag, r.value.content) for r in results] == [
        ("generate", "What is 2 + 2?"),
        ("improve", "What is 2 + 2, and why?"),
    ]
    first, second = provider.calls
    assert first.messages == (LLMMessage("user", "Generate a question"),)
    # The step's own messages first, then the previous answer as an assistant message.
    assert second.messages == (
        LLMMessage("user", "Now improve this question"),
        LLMMessage("assistant", "What is 2 + 2?"),
    )


async def test_execute_sequential_without_pass_result_sends_each_task_as_is() -> None:
    provider = EchoProvider()
    tasks = [
        LLMTask(messages=[LLMMessage("user", "one")]),
        LLMTask(messages=[LLMMessage("user", "two")]),
    ]

    results = await ParallelLLMExecutor(provider).execute_sequential(tasks)

    assert [r.tag for r in results] == ["step_0", "step_1"]  # untagged: by position
    assert [call.messages for call in provider.calls] == [task.messages for task in tasks]


async def test_execute_sequential_passes_nothing_on_after_a_failed_step() -> None:
    provider = EchoProvider(["first", ErrorResponse(RuntimeError("step 2 broke")), "third"])
    tasks = [LLMTask(messages=[LLMMessage("user", f"step {i}")]) for i in (1, 2, 3)]

    results = await ParallelLLMExecutor(provider).execute_sequential(tasks, pass_result=True)

    assert [r.success for r in results] == [True, False, True]
    assert provider.calls[1].messages[-1] == LLMMessage("assistant", "first")
    assert provider.calls[2].messages == (LLMMessage("user", "step 3"),)


# -- LLMTask, DeterministicTask, TaskResult --------------------------------------------


async def test_llm_task() -> None:
    task = LLMTask(
        messages=[
            LLMMessage(role="system", content="You are a quiz generator."),
            LLMMessage(role="user", content="Generate a biology question."),
        ],
        config_overrides={"temperature": 0.9},  # Per-task provider overrides
        retry=RetryConfig(max_attempts=2),  # Per-task retry policy
        tag="bio_q1",  # Auto-set from dict key in execute()
    )
    provider = EchoProvider()

    results = await ParallelLLMExecutor(provider).execute({"bio_q1": task})

    assert task.retry == RetryConfig(max_attempts=2)
    assert results["bio_q1"].tag == "bio_q1"
    assert results["bio_q1"].value.content == "Echo: Generate a biology question."
    [call] = provider.calls
    assert call.messages == task.messages
    assert call.config_overrides == {"temperature": 0.9}
    # Ours: messages are stored as a tuple (the task is frozen), not the list given.
    assert isinstance(task.messages, tuple)


async def test_the_mapping_key_is_the_tag_of_the_result() -> None:
    task = LLMTask(messages=[LLMMessage("user", "hi")], tag="bio_q1")

    results = await ParallelLLMExecutor(EchoProvider()).execute({"renamed": task})

    assert list(results) == ["renamed"]
    assert results["renamed"].tag == "renamed"
    assert task.tag == "bio_q1"  # the task itself is not changed
    assert LLMTask(messages=[LLMMessage("user", "hi")]).tag == ""  # the table's default


async def test_deterministic_task() -> None:
    def compute_hash(content: str, algorithm: str = "md5") -> str:
        return hashlib.new(algorithm, content.encode()).hexdigest()

    async def fetch_from_database(record_id: str) -> dict[str, str]:
        await anyio.lowlevel.checkpoint()
        return {"id": record_id, "name": "Ada"}

    # Sync function
    hashing = DeterministicTask(
        fn=compute_hash,
        args=("content",),
        kwargs={"algorithm": "sha256"},
    )
    # Async function
    fetching = DeterministicTask(
        fn=fetch_from_database,
        args=("record_123",),
    )

    results = await ParallelLLMExecutor(EchoProvider()).execute_mixed(
        {"hash": hashing, "record": fetching}
    )

    assert results["hash"].value == hashlib.sha256(b"content").hexdigest()
    assert results["record"].value == {"id": "record_123", "name": "Ada"}
    assert (hashing.is_async, fetching.is_async) == (False, True)
    bare = DeterministicTask(fn=compute_hash)
    assert (bare.args, dict(bare.kwargs), bare.tag) == ((), {}, "")  # the table's defaults


async def test_task_result() -> None:
    provider = EchoProvider(["fine", ErrorResponse(ValueError("bad"))])
    executor = ParallelLLMExecutor(provider, max_concurrency=1)

    results = await executor.execute(
        {
            "q1": LLMTask(messages=[LLMMessage("user", "one")]),
            "q2": LLMTask(messages=[LLMMessage("user", "two")]),
        }
    )

    result = results["q1"]
    assert result.success
    response = result.value  # LLMResponse for LLM tasks
    assert isinstance(response, LLMResponse) and response.content == "fine"
    assert result.error is None
    assert result.duration_ms >= 0.0
    failed = results["q2"]
    assert (failed.success, failed.value) == (False, None)
    assert isinstance(failed.error, ValueError) and str(failed.error) == "bad"


# -- Error Handling ------------------------------------------------------------------------


async def test_error_handling() -> None:
    def respond(messages: Any) -> str:
        if messages[-1].content == "trigger error":
            raise RuntimeError("provider failure")
        return "Hi!"

    provider = EchoProvider().set_response_function(respond)
    executor = ParallelLLMExecutor(provider)

    results = await executor.execute(
        {
            "good": LLMTask(messages=[LLMMessage(role="user", content="Hello")]),
            "bad": LLMTask(messages=[LLMMessage(role="user", content="trigger error")]),
        }
    )

    assert results["good"].success is True  # Unaffected by other failures
    assert results["bad"].success is False
    assert results["bad"].error is not None
    assert str(results["bad"].error) == "provider failure"
    assert results["good"].value.content == "Hi!"


# -- Retry ---------------------------------------------------------------------------------


async def test_retry() -> None:
    # As in the reference, but each policy with initial_delay=0 so the test is instant;
    # the waits the reference's policy would take are checked with backoff_delay below.
    critical_policy = RetryConfig(
        max_attempts=5,
        backoff_strategy=BackoffStrategy.EXPONENTIAL,
        initial_delay=1.0,
    )
    calls: dict[str, int] = {}

    def respond(messages: Any) -> str:
        text = messages[-1].content
        calls[text] = calls.get(text, 0) + 1
        if text == "Important task" and calls[text] < 5:
            raise ConnectionError(f"attempt {calls[text]} dropped")
        if text in ("Optional task", "Default task"):
            raise ConnectionError("always down")
        return "done"

    provider = EchoProvider().set_response_function(respond)
    # Executor-level default
    executor = ParallelLLMExecutor(
        provider=provider,
        default_retry=RetryConfig(max_attempts=3, initial_delay=0.0),
    )

    # Per-task override
    results = await executor.execute(
        {
            "critical": LLMTask(
                messages=[LLMMessage(role="user", content="Important task")],
                retry=attrs.evolve(critical_policy, initial_delay=0.0),
            ),
            "best_effort": LLMTask(
                messages=[LLMMessage(role="user", content="Optional task")],
                retry=RetryConfig(max_attempts=1),  # No retry
            ),
            "inherits": LLMTask(messages=[LLMMessage(role="user", content="Default task")]),
        }
    )

    assert (results["critical"].success, results["critical"].attempts) == (True, 5)
    assert (results["best_effort"].success, results["best_effort"].attempts) == (False, 1)
    assert (results["inherits"].success, results["inherits"].attempts) == (False, 3)
    assert calls == {"Important task": 5, "Optional task": 1, "Default task": 3}
    assert [backoff_delay(critical_policy, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


def test_the_five_backoff_strategies() -> None:
    assert {s.name for s in BackoffStrategy} == {
        "FIXED",
        "LINEAR",
        "EXPONENTIAL",
        "JITTER",
        "DECORRELATED",
    }
    rng = random.Random(3)
    waits = {
        strategy: [
            backoff_delay(RetryConfig(backoff_strategy=strategy), n, 1.0, rng=rng)
            for n in (1, 2, 3)
        ]
        for strategy in BackoffStrategy
    }
    assert waits[BackoffStrategy.FIXED] == [1.0, 1.0, 1.0]
    assert waits[BackoffStrategy.LINEAR] == [1.0, 2.0, 3.0]
    assert waits[BackoffStrategy.EXPONENTIAL] == [1.0, 2.0, 4.0]
    for n, wait in enumerate(waits[BackoffStrategy.JITTER], 1):
        assert 0.9 * 2 ** (n - 1) <= wait <= 1.1 * 2 ** (n - 1)
    assert all(1.0 <= wait <= 3.0 for wait in waits[BackoffStrategy.DECORRELATED])


# -- Testing -------------------------------------------------------------------------------


async def test_testing() -> None:
    provider = EchoProvider()
    provider.set_responses(
        [
            text_response("Math question"),
            text_response("Science question"),
        ]
    )

    executor = ParallelLLMExecutor(provider, max_concurrency=2)
    results = await executor.execute(
        {
            "math": LLMTask(messages=[LLMMessage(role="user", content="math")]),
            "science": LLMTask(messages=[LLMMessage(role="user", content="science")]),
        }
    )

    assert results["math"].success
    assert results["science"].success
    # Ours: the script is served in call order, and with two workers the order of the
    # calls is the scheduler's (trio varies it), so only the set of answers is certain.
    assert {r.value.content for r in results.values()} == {"Math question", "Science question"}
    assert provider.call_count == 2


async def test_testing_error_handling() -> None:
    failure = RuntimeError("simulated failure")
    provider = EchoProvider()
    provider.set_responses(
        [
            text_response("OK"),
            ErrorResponse(failure),
        ]
    )
    executor = ParallelLLMExecutor(provider, max_concurrency=1)  # calls in input order

    results = await executor.execute(
        {
            "first": LLMTask(messages=[LLMMessage("user", "one")]),
            "second": LLMTask(messages=[LLMMessage("user", "two")]),
        }
    )

    assert results["first"].success and results["first"].value.content == "OK"
    assert results["second"].success is False
    assert results["second"].error is failure


async def test_testing_error_handling_concurrently_fails_whichever_call_came_second() -> None:
    provider = EchoProvider([text_response("OK"), ErrorResponse(RuntimeError("simulated"))])
    executor = ParallelLLMExecutor(provider, max_concurrency=2)

    results = await executor.execute(
        {tag: LLMTask(messages=[LLMMessage("user", tag)]) for tag in ("first", "second")}
    )

    [failed] = [tag for tag, result in results.items() if not result.success]
    assert str(results[failed].error) == "simulated"
    assert provider.calls[1].messages[-1].content == failed


# -- Imports -------------------------------------------------------------------------------


def test_imports() -> None:
    import llmfanout
    import llmfanout.retry
    import llmfanout.testing
    from llmfanout import (  # noqa: F401  (the reference's import list must work)
        DeterministicTask,
        LLMMessage,
        LLMTask,
        ParallelLLMExecutor,
        TaskResult,
    )

    for name in ("ParallelLLMExecutor", "LLMTask", "DeterministicTask", "TaskResult"):
        assert name in llmfanout.__all__
    assert llmfanout.RetryConfig is llmfanout.retry.RetryConfig
    assert llmfanout.BackoffStrategy is llmfanout.retry.BackoffStrategy
    assert llmfanout.ErrorResponse is llmfanout.testing.ErrorResponse
    assert llmfanout.EchoProvider is llmfanout.testing.EchoProvider
