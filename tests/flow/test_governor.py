"""The executor's defaults against real HTTP: pacing by advertised limits, adaptive
concurrency, patience with 429s, stopping at a refused key. Both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from llmfanout import (
    OpenAIProvider,
    ParallelLLMExecutor,
    RateLimitInfo,
    RetryConfig,
    summarize,
)
from llmfanout.errors import ProviderError, RateLimitError, TaskAborted
from llmfanout.testing import set_testing

from support.fake_llm_server import (
    FakeLLMServer,
    Fault,
    RecordedRequest,
    ServerLimit,
    serve_fake_llm,
)
from support.helpers import ask

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def tasks(count: int, prefix: str = "q") -> dict[str, object]:
    return {f"{prefix}{i}": ask(f"{prefix}{i}") for i in range(count)}


async def test_answers_and_errors_carry_the_advertised_limits(server: FakeLLMServer) -> None:
    server.limit = ServerLimit(requests_per_minute=60, burst=1.0)  # one request, then 429
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        answer = await provider.complete([{"role": "user", "content": "a"}])
        with pytest.raises(RateLimitError) as refused:
            await provider.complete([{"role": "user", "content": "b"}])
    assert isinstance(answer.rate_limits, RateLimitInfo)
    assert answer.rate_limits.requests is not None
    assert answer.rate_limits.requests.limit == 60
    assert answer.rate_limits.requests.remaining == 0
    limits = refused.value.rate_limits
    assert limits is not None and limits.requests is not None
    assert limits.requests.remaining == 0 and limits.requests.reset is not None


async def test_budgets_are_kept_per_provider_and_model() -> None:
    from llmfanout import LLMResponse, RateLimitBudget
    from llmfanout._flow._governor import Governor

    class Provider:
        async def complete(self, messages: object, config_overrides: object = None) -> None:
            raise NotImplementedError

    provider, other = Provider(), Provider()
    info = RateLimitInfo(requests=RateLimitBudget(60, 0, 60.0))
    governor = Governor(provider, 4, pacing=True, adaptive=True)
    assert governor.idle()
    governor.learn({"model": "a"}, LLMResponse("x", rate_limits=info))
    assert not governor.idle()
    assert governor.pacer({"model": "a"}) is not None
    assert governor.pacer({"model": "b"}) is None  # another model: its own budget
    assert governor.pacer(None) is None
    # Another executor on the same provider (the same key) shares the budget...
    assert Governor(provider, 4, pacing=True, adaptive=True).pacer({"model": "a"}) is not None
    # ...one on another provider does not.
    assert Governor(other, 4, pacing=True, adaptive=True).pacer({"model": "a"}) is None


async def test_no_limit_headers_no_rate_limits(server: FakeLLMServer) -> None:
    server.add_faults(Fault.ok(), Fault.status(500))
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        answer = await provider.complete([{"role": "user", "content": "a"}])
        with pytest.raises(ProviderError) as failed:
            await provider.complete([{"role": "user", "content": "b"}])
    assert answer.rate_limits is None
    assert failed.value.rate_limits is None


async def test_a_server_that_reports_no_limits_leaves_calls_unpaced(
    server: FakeLLMServer,
) -> None:
    # OpenAIProvider may report limits: its first call goes alone, as a probe. Its answer
    # carries none, so the executor goes back to the plain path (nothing around a call)
    # until an answer reports limits; then it paces again.
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=4)
        governor = executor._governor
        assert governor is not None and not governor.idle()  # the probe is due
        first = await executor.execute(tasks(3))
        assert all(r.success for r in first.values())
        assert governor.idle() and governor.unpaced == 0
        server.limit = ServerLimit(requests_per_minute=6000)
        second = await executor.execute(tasks(3, "r"))
        assert all(r.success for r in second.values())
        assert not governor.idle()
        assert governor.pacer(None) is not None


@pytest.mark.parametrize("pacing", [True, False])
async def test_pacing_by_default_spares_the_server_429s(
    server: FakeLLMServer, pacing: bool
) -> None:
    # 1,200 a minute enforced over a second: 20 at once, then 20 a second.
    server.limit = ServerLimit(requests_per_minute=1200, burst=1.0)
    retry = RetryConfig(max_attempts=1)  # 429s are waited out with patience
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=16, default_retry=retry, pacing=pacing, adaptive=False
        )
        results = await executor.execute(tasks(60))
    assert all(r.success for r in results.values())
    requests = len(server.requests)
    if pacing:
        assert len(server.limited) <= 0.05 * requests  # the bar: at most 5%
    else:
        assert len(server.limited) > 0.05 * requests  # what the pacing spares


async def test_an_overloaded_server_makes_the_executor_keep_fewer_calls(
    server: FakeLLMServer,
) -> None:
    server.overload_after = 6  # 429, no headers, no Retry-After, past 6 in flight
    server.latency = 0.02
    seen: list[int] = []
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=24, default_retry=RetryConfig(max_attempts=1)
        )
        assert executor.concurrency == 24
        with set_testing(True):  # the waits between 429s take no time
            results = await executor.execute(
                tasks(120), on_result=lambda r: seen.append(executor.concurrency)
            )
    assert all(r.success for r in results.values())
    assert min(seen) <= 12  # halved at least once...
    assert seen[-1] > min(seen)  # ...and grown again as calls succeeded
    summary = summarize(results, concurrency=executor.concurrency)
    assert summary.concurrency == executor.concurrency
    assert f"calls in flight at the end: {executor.concurrency}" in str(summary)


async def test_a_refused_key_stops_the_run(server: FakeLLMServer) -> None:
    server.fault_for = lambda r: Fault.status(401)
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="bad") as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=4)
        results = await executor.execute(tasks(50))
    assert len(server.requests) == 1  # the first call goes alone; its answer stops the run
    assert len(results) == 50  # every task still gets its result
    aborted = [r for r in results.values() if isinstance(r.error, TaskAborted)]
    assert len(aborted) == 49
    assert all("refused the credentials" in str(r.error) for r in aborted)
    assert any("never started" in str(r.error) for r in aborted)
    # It names the credential the call sent, as the provider's error does.
    stop = "check the API key (OPENAI_API_KEY or api_key=) and what it may access, then run"
    assert any(stop in str(r.error) for r in aborted)


class Refusing:
    """A provider of one's own whose 401 names no credential."""

    async def complete(self, messages: object, config_overrides: object = None) -> object:
        raise ProviderError("my gateway: HTTP 401", status_code=401)


async def test_a_refusal_naming_no_credential_asks_to_check_the_credentials() -> None:
    executor = ParallelLLMExecutor(Refusing(), max_concurrency=1)  # type: ignore[arg-type]
    results = await executor.execute(tasks(5))
    aborted = [str(r.error) for r in results.values() if isinstance(r.error, TaskAborted)]
    assert len(aborted) == 4
    assert all(
        "the server refused the credentials (HTTP 401); check the credentials and what it "
        "may access, then run again" in text
        for text in aborted
    )


async def test_stop_on_auth_error_can_be_turned_off(server: FakeLLMServer) -> None:
    server.fault_for = lambda r: Fault.status(403)
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=4, stop_on_auth_error=False)
        results = await executor.execute(tasks(10))
    assert len(server.requests) == 10
    assert not any(isinstance(r.error, TaskAborted) for r in results.values())


@pytest.mark.parametrize("status", [429, 529])
async def test_overload_answers_do_not_spend_attempts(server: FakeLLMServer, status: int) -> None:
    server.add_faults(*[Fault.status(status)] * 5)
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=1))
        with set_testing(True):
            result = (await executor.execute({"t": ask("t")}))["t"]
    assert result.success
    assert result.attempts == 6  # every call made is counted; none spent max_attempts


async def test_a_503_without_retry_after_is_an_attempt(server: FakeLLMServer) -> None:
    server.add_faults(Fault.status(503), Fault.status(503, retry_after="1"))
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=1))
        with set_testing(True):
            result = (await executor.execute({"t": ask("t")}))["t"]
    assert not result.success and result.attempts == 1


async def test_patience_runs_out(server: FakeLLMServer) -> None:
    server.fault_for = lambda r: Fault.status(429, retry_after="20")
    retry = RetryConfig(max_attempts=3, patience=50)
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, default_retry=retry)
        with set_testing(True):  # 20 s waits, counted but not slept
            result = (await executor.execute({"t": ask("t")}))["t"]
    assert isinstance(result.error, RateLimitError)
    assert result.attempts == 3  # waited 20 s twice; a third wait would pass 50 s


async def test_after_a_cooldown_one_call_goes_first_then_the_rest(
    server: FakeLLMServer,
) -> None:
    """Eight calls refused together with Retry-After: after the pause one goes alone and,
    once it is answered, the others follow (in the order they came back to the limiter)."""
    server.latency = 0.05

    def first_refused(request: RecordedRequest) -> Fault | None:
        if len(server.requests_for(request.prompt)) == 1:
            return Fault.status(429, retry_after_ms="200")
        return None

    server.fault_for = first_refused
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=8, default_retry=RetryConfig(max_attempts=1)
        )
        results = await executor.execute(tasks(8))
    assert all(r.success for r in results.values())
    for name in results:
        refused, retried = server.requests_for(name)
        assert retried.time - refused.time >= 0.2 * 0.95  # Retry-After honoured
    retries = sorted(server.requests_for(name)[1].time for name in results)
    # The probe is answered (after the server's latency) before the next one starts.
    assert retries[1] - retries[0] >= 0.05 * 0.95


async def test_a_run_waiting_out_a_cooldown_is_cancelled_promptly(
    server: FakeLLMServer,
) -> None:
    server.add_faults(Fault.status(429, retry_after="60"))
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=2, default_retry=RetryConfig(max_attempts=1)
        )
        with anyio.move_on_after(0.5) as scope:
            await executor.execute(tasks(10))
    assert scope.cancelled_caught
    # Two in flight when the 429 came (one may have started just after): the rest waited
    # for the pause, and were cancelled.
    assert len(server.requests) <= 3
