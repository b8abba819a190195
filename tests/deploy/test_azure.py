"""AzureOpenAIProvider against a fake that answers only Azure's exact shape."""

from __future__ import annotations

import anyio
import pytest

from llmfanout import Deployment, LLMMessage, Pool
from llmfanout._deploy._causes import CONTENT_FILTER, CONTEXT_WINDOW, MODEL_NOT_FOUND, cause_of
from llmfanout.errors import BadRequestError, RateLimitError
from llmfanout.providers import AzureOpenAIProvider

from support.fake_llm_server import Fault, RecordedRequest, serve_fake_llm

pytestmark = pytest.mark.anyio

KEY = "azure-key-0123456789abcdef"
VERSION = "2024-10-21"
PATH = f"/openai/deployments/gpt-4o-east/chat/completions?api-version={VERSION}"


def azure_only(request: RecordedRequest) -> Fault | None:
    """Anything but Azure's URL, ``api-key`` header and api-version is refused."""
    if request.path != PATH:
        return Fault.status(404, message=f"no such path {request.path}")
    if request.headers.get("api-key") != KEY or "authorization" in request.headers:
        return Fault.status(401, message="api-key header missing or wrong")
    return None


QUESTION = [LLMMessage("user", "hello")]


async def test_the_url_header_and_version_are_azures(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_fake_llm() as server:
        server.fault_for = azure_only
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.base_url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_API_VERSION", VERSION)
        async with AzureOpenAIProvider("gpt-4o-east") as provider:
            answer = await provider.complete(QUESTION)
            streamed = await provider.complete(QUESTION, {"stream": True})
        assert answer.content == streamed.content == "echo: hello"
        assert [r.path for r in server.requests] == [PATH, PATH]
        assert KEY not in repr(provider)


async def test_a_wrong_shape_is_refused_by_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_fake_llm() as server:
        server.fault_for = azure_only
        monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
        provider = AzureOpenAIProvider(
            "gpt-4o-east", azure_endpoint=server.base_url, api_key=KEY, api_version="2023-05-15"
        )
        async with provider:
            with pytest.raises(BadRequestError) as caught:
                await provider.complete(QUESTION)
        assert caught.value.status_code == 404 and KEY not in str(caught.value)


async def test_an_entra_token_goes_as_a_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_fake_llm() as server:
        monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "entra-token-0123456789")
        async with AzureOpenAIProvider("gpt-4o-east", azure_endpoint=server.base_url) as p:
            await p.complete(QUESTION)
        headers = server.requests[0].headers
        assert headers["authorization"] == "Bearer entra-token-0123456789"
        assert "api-key" not in headers


async def test_azures_429_and_refusals_are_mapped() -> None:
    async with serve_fake_llm() as server:
        server.add_faults(
            Fault.status(
                429,
                message="Requests to the ChatCompletions_Create Operation have exceeded "
                "token rate limit. Please retry after 6 seconds.",
                headers={"x-ratelimit-remaining-requests": "-1"},
            ),
            Fault.status(400, error_type="content_filter", message="filtered"),
            Fault.status(400, error_type="context_length_exceeded", message="too long"),
            Fault.status(404, error_type="DeploymentNotFound", message="no deployment"),
        )
        async with AzureOpenAIProvider(
            "gpt-4o-east", azure_endpoint=server.base_url, api_key=KEY
        ) as provider:
            with pytest.raises(RateLimitError) as limited:
                await provider.complete(QUESTION)
            assert limited.value.retry_after == 6.0
            assert limited.value.rate_limits is None  # -1: Azure has no figure
            causes = []
            for _ in range(3):
                with pytest.raises(BadRequestError) as refused:
                    await provider.complete(QUESTION)
                causes.append(cause_of(refused.value))
        assert causes == [CONTENT_FILTER, CONTEXT_WINDOW, MODEL_NOT_FOUND]


async def test_a_content_filter_refusal_goes_to_its_fallback() -> None:
    async with serve_fake_llm() as strict, serve_fake_llm() as lenient:
        strict.fault_for = lambda r: Fault.status(400, error_type="content_filter")
        pool = Pool(
            [
                Deployment(
                    name="strict",
                    provider=AzureOpenAIProvider(
                        "gpt-4o-east", azure_endpoint=strict.base_url, api_key=KEY
                    ),
                ),
                Deployment(
                    name="lenient",
                    provider=AzureOpenAIProvider(
                        "gpt-4o-east", azure_endpoint=lenient.base_url, api_key=KEY
                    ),
                    fallback_for=["content_filter"],
                ),
            ]
        )
        async with pool:
            answer = await pool.complete(QUESTION)
            with anyio.fail_after(5):
                second = await pool.complete([LLMMessage("user", "again")])
        assert answer.metadata["deployment"] == second.metadata["deployment"] == "lenient"
        assert len(strict.requests) == 2 and len(lenient.requests) == 2
