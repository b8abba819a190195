"""Servers whose rate-limit answers would hold a run for ever (issue 23, items 1 and 2).

Odd advertised figures are not believed, a wait past a call's patience fails the call at
once naming the header, and a Retry-After no caller will wait out does not hold the
others. Real HTTP against the fake server; both backends; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from llmfanout import OpenAIProvider, ParallelLLMExecutor, RetryConfig
from llmfanout.errors import PacingError, RateLimitError

from support.fake_llm_server import FakeLLMServer, Fault, RecordedRequest, serve_fake_llm
from support.helpers import ask

pytestmark = pytest.mark.anyio

ODD = {
    "remaining 0, no limit": {"x-ratelimit-remaining-requests": "0"},
    "remaining 0, limit 0": {
        "x-ratelimit-limit-requests": "0",
        "x-ratelimit-remaining-requests": "0",
    },
    "a 400-digit reset": {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "9" * 400,
    },
    "a reset of 87600h": {
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "87600h",
    },
    "an Anthropic reset in 2999": {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z",
    },
}


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


async def run(server: FakeLLMServer, count: int, retry: RetryConfig) -> dict[str, object]:
    async with OpenAIProvider("m", base_url=server.openai_base_url, api_key="k") as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=1, default_retry=retry)
        return dict(await executor.execute({f"q{i}": ask(f"q{i}") for i in range(count)}))


@pytest.mark.parametrize("headers", list(ODD.values()), ids=list(ODD))
async def test_odd_advertised_limits_are_not_believed(
    server: FakeLLMServer, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    server.fault_for = lambda request: Fault("ok", headers=tuple(headers.items()))
    with anyio.fail_after(20):  # once: the second call waited for ever
        results = await run(server, 4, RetryConfig(patience=5))
    assert all(r.success for r in results.values())  # type: ignore[attr-defined]
    warnings = [r for r in caplog.records if "ignoring the" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per answer
    assert "ratelimit" in warnings[0].getMessage()


async def test_a_believed_wait_past_patience_fails_at_once_naming_the_header(
    server: FakeLLMServer,
) -> None:
    # One request a minute, none left: the next call would wait a minute.
    headers = {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s",
    }
    server.fault_for = lambda request: Fault("ok", headers=tuple(headers.items()))
    with anyio.fail_after(20):
        results = await run(server, 3, RetryConfig(patience=5))
    outcomes = sorted(results.items())
    assert outcomes[0][1].success  # type: ignore[attr-defined]
    for _, result in outcomes[1:]:
        error = result.error  # type: ignore[attr-defined]
        assert isinstance(error, PacingError)
        assert "x-ratelimit-*-requests" in str(error) and "patience of 5 s" in str(error)
    assert len(server.requests) == 1  # not sent


async def test_a_retry_after_nobody_will_wait_out_does_not_hold_later_tasks(
    server: FakeLLMServer,
) -> None:
    def refuse(request: RecordedRequest) -> Fault:
        return Fault.status(429, retry_after="99999999")

    server.fault_for = refuse
    with anyio.fail_after(20):  # once: 60 s per task, the shared cooldown's cap
        results = await run(server, 4, RetryConfig(patience=5))
    for result in results.values():
        assert isinstance(result.error, RateLimitError)  # type: ignore[attr-defined]
    assert len(server.requests) == 4  # each tried once, and failed at once
