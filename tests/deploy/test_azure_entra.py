"""Microsoft Entra ID on Azure: a bearer token from a callable, renewed per request.

The fake accepts only ``Authorization: Bearer <the token it currently honours>`` and
answers anything else 401, echoing what it was sent (as a careless proxy might), so a
token that leaks into an error shows.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import urllib.parse
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor
from llmfanout._deploy._build import build_pool, deployment_keys
from llmfanout._deploy._spec import parse_deployments
from llmfanout.errors import AuthenticationError, TaskAborted
from llmfanout.providers import AzureOpenAIProvider
from llmfanout.providers._secrets import TokenRedactor

from support.fake_llm_server import FakeLLMServer, Fault, RecordedRequest, serve_fake_llm

pytestmark = pytest.mark.anyio

VERSION = "2024-10-21"
PATH = f"/openai/deployments/gpt-4o-east/chat/completions?api-version={VERSION}"
QUESTION = [LLMMessage("user", "hello")]
# Long, as Entra's JWTs are, and each unlike the others.
TOKENS = [f"eyJ0eXAiOiJKV1Qi.token-{n}-" + "abcdefghij" * 40 for n in range(4)]


def bearer_only(honoured: list[str]) -> Callable[[RecordedRequest], Fault | None]:
    """A check refusing any request without ``Bearer honoured[0]``, echoing what came."""

    def check(request: RecordedRequest) -> Fault | None:
        sent = request.headers.get("authorization", "")
        if request.path != PATH:
            return Fault.status(400, message=f"wrong shape: {request.path}")
        if sent != f"Bearer {honoured[0]}":
            return Fault.status(401, message=f"invalid token in {sent!r}")
        return None

    return check


def bearers(server: FakeLLMServer) -> list[str]:
    return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in server.requests]


class Rotating:
    """A token callable whose token the test renews (as azure.identity's cache does)."""

    def __init__(self) -> None:
        self.index = 0
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return TOKENS[self.index]


def no_token_in(*texts: str) -> None:
    for text in texts:
        for token in TOKENS:
            assert token not in text
            assert token[-40:] not in text


# httpcore leaves its body generators to the garbage collector on trio, which warns
# (as in tests/providers/test_hostile_servers.py); the warning is not about our code.
HTTPX = pytest.param(
    "httpx", marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
)


@pytest.mark.parametrize("transport", ["ours", HTTPX])
async def test_the_callable_is_asked_before_each_request_and_its_new_token_sent(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN", raising=False)
    honoured = [TOKENS[0]]
    source = Rotating()
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve_fake_llm())
        client = None
        if transport == "httpx":  # the other transport sends the same headers
            client = await stack.enter_async_context(httpx.AsyncClient())
        server.fault_for = bearer_only(honoured)
        provider = AzureOpenAIProvider(
            "gpt-4o-east",
            azure_endpoint=server.base_url,
            api_version=VERSION,
            azure_ad_token_provider=source,
            http_client=client,
        )
        async with provider:
            await provider.complete(QUESTION)
            await provider.complete(QUESTION, {"stream": True})
            honoured[0] = TOKENS[1]  # the old token expires at the server...
            with pytest.raises(AuthenticationError) as refused:
                await provider.complete(QUESTION)
            source.index = 1  # ...and the callable renews it
            answer = await provider.complete(QUESTION)
            streamed = await provider.complete(QUESTION, {"stream": True})
    assert answer.content == streamed.content == "echo: hello"
    assert bearers(server) == [TOKENS[0], TOKENS[0], TOKENS[0], TOKENS[1], TOKENS[1]]
    assert source.calls == 5  # once per request, as the openai SDK asks it
    error = refused.value
    no_token_in(str(error), repr(error), error.error_message or "", repr(vars(provider)))
    assert "invalid token in" in str(error)


async def test_an_async_callable_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN", raising=False)
    given: list[str] = []

    async def token() -> str:
        given.append(TOKENS[2])
        return TOKENS[2]

    async with serve_fake_llm() as server:
        server.fault_for = bearer_only([TOKENS[2]])
        async with AzureOpenAIProvider(
            "gpt-4o-east", azure_endpoint=server.base_url, azure_ad_token_provider=token
        ) as provider:
            await provider.complete(QUESTION)
            await provider.complete(QUESTION)
    assert bearers(server) == [TOKENS[2], TOKENS[2]] and len(given) == 2


async def test_a_missing_or_wrong_bearer_is_refused_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG, logger="llmfanout")
    async with serve_fake_llm() as server:
        server.fault_for = bearer_only([TOKENS[0]])
        wrong = AzureOpenAIProvider(
            "gpt-4o-east", azure_endpoint=server.base_url, azure_ad_token_provider=lambda: TOKENS[3]
        )
        keyed = AzureOpenAIProvider("gpt-4o-east", azure_endpoint=server.base_url, api_key="k" * 20)
        async with wrong, keyed:
            with pytest.raises(AuthenticationError) as bad:
                await wrong.complete(QUESTION, {"stream": True})
            with pytest.raises(AuthenticationError) as missing:
                await keyed.complete(QUESTION)
    assert bearers(server) == [TOKENS[3], ""]
    assert missing.value.status_code == bad.value.status_code == 401
    no_token_in(str(bad.value), repr(bad.value), caplog.text, repr(wrong), repr(vars(wrong)))


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (
            {"azure_ad_token_provider": lambda: TOKENS[3]},
            "the Entra ID token azure_ad_token_provider returns",
        ),
        ({"azure_ad_token": TOKENS[3]}, "the Entra ID token given as azure_ad_token="),
        ({}, "the Entra ID token in AZURE_OPENAI_AD_TOKEN"),
        ({"api_key": "k" * 20}, "the API key (AZURE_OPENAI_API_KEY or api_key=)"),
    ],
)
async def test_a_refusal_asks_to_check_the_credential_in_use(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], hint: str
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", TOKENS[3])
    async with serve_fake_llm() as server:
        server.fault_for = bearer_only([TOKENS[0]])
        provider = AzureOpenAIProvider("gpt-4o-east", azure_endpoint=server.base_url, **given)
        async with provider:
            with pytest.raises(AuthenticationError) as refused:
                await provider.complete(QUESTION)
    assert f"; check {hint} and what it may access" in str(refused.value)
    no_token_in(str(refused.value), repr(refused.value))


async def test_what_wins_when_several_credentials_are_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token beats a key (the openai SDK sends the bearer alone), a fixed token beats
    the callable, and one given beats the environment's."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "env-key-0123456789")
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", TOKENS[3])
    async with serve_fake_llm() as server:
        made = [
            AzureOpenAIProvider(
                "gpt-4o-east",
                azure_endpoint=server.base_url,
                api_key="given-key-0123456789",
                azure_ad_token_provider=lambda: TOKENS[0],
            ),
            AzureOpenAIProvider(
                "gpt-4o-east",
                azure_endpoint=server.base_url,
                azure_ad_token=TOKENS[1],
                azure_ad_token_provider=lambda: TOKENS[0],
            ),
            AzureOpenAIProvider("gpt-4o-east", azure_endpoint=server.base_url),
        ]
        for provider in made:
            async with provider:
                await provider.complete(QUESTION)
    assert bearers(server) == [TOKENS[0], TOKENS[1], TOKENS[3]]
    assert all("api-key" not in r.headers for r in server.requests)


def test_no_credential_and_bad_callables_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"AZURE_OPENAI_API_KEY.*AZURE_OPENAI_AD_TOKEN"):
        AzureOpenAIProvider("d", azure_endpoint="http://127.0.0.1:9")
    with pytest.raises(TypeError, match="azure_ad_token_provider is a str"):
        AzureOpenAIProvider(
            "d",
            azure_endpoint="http://127.0.0.1:9",
            azure_ad_token_provider=TOKENS[0],  # type: ignore[arg-type]
        )


async def test_a_callable_returning_no_token_fails_the_call_without_sending() -> None:
    async with serve_fake_llm() as server:
        for returned, problem in ((None, TypeError), ("", TypeError), ("a b", ValueError)):
            provider = AzureOpenAIProvider(
                "gpt-4o-east",
                azure_endpoint=server.base_url,
                azure_ad_token_provider=lambda returned=returned: returned,
            )
            async with provider:
                with pytest.raises(problem, match="azure_ad_token_provider returned") as caught:
                    await provider.complete(QUESTION)
            assert "a b" not in str(caught.value)
    assert server.requests == []


def token_entry(server: FakeLLMServer) -> dict[str, str]:
    """A deployments file's entry for the fake, its token in ``EAST_ENTRA_TOKEN``."""
    return {
        "name": "east",
        "provider": "azure",
        "model": "gpt-4o-east",
        "base_url": server.base_url,
        "api_version": VERSION,
        "azure_ad_token_env": "EAST_ENTRA_TOKEN",
    }


async def test_a_deployments_file_names_the_tokens_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EAST_ENTRA_TOKEN", TOKENS[1])
    async with serve_fake_llm() as server:
        server.fault_for = bearer_only([TOKENS[1]])
        specs = parse_deployments(json.loads(json.dumps([token_entry(server)])))
        keys = deployment_keys(specs)
        async with build_pool(specs, keys=keys) as pool:
            answer = await pool.complete(QUESTION)
    assert answer.metadata["deployment"] == "east" and bearers(server) == [TOKENS[1]]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"provider": "openai", "azure_ad_token_env": "T"}, 'for provider "azure" only'),
        ({"provider": "azure", "azure_ad_token_env": "T", "api_key_env": "K"}, "not both"),
        ({"provider": "azure", "azure_ad_token_env": ""}, "azure_ad_token_env is ''"),
    ],
)
def test_a_bad_token_variable_in_a_file_is_refused(entry: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match="deployment 'east'") as caught:
        parse_deployments([{"name": "east", "model": "m", **entry}])
    assert problem in str(caught.value)


def spellings(token: str) -> list[str]:
    """The token as a server might echo it: raw, JSON-escaped, percent-encoded (twice)."""
    once = urllib.parse.quote(token, safe="")
    return [
        token,
        token.upper(),
        token.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in token),
        f"\\u{ord(token[0]):04x}{token[1:]}",
        once,
        urllib.parse.quote(once, safe=""),
        json.dumps(token)[1:-1],
    ]


@given(
    tokens=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_./+=~", min_size=1, max_size=40),
        min_size=1,
        max_size=3,
    ),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    data=st.data(),
)
def test_token_redactor_removes_every_spelling_of_every_token(
    tokens: list[str], before: str, after: str, data: Any
) -> None:
    token = data.draw(st.sampled_from(tokens))
    spelling = data.draw(st.sampled_from(spellings(token)))
    redactor = TokenRedactor(*tokens)
    text = f"{before} {spelling} {after}"
    cleaned = redactor.text(text)
    assert spelling not in cleaned or spelling in before + after
    raw = text.encode("utf-8", "surrogateescape")
    assert redactor.data(raw) == cleaned.encode("utf-8", "surrogateescape")


@given(text=st.text(alphabet=st.characters(blacklist_characters="%\\"), max_size=60))
def test_token_redactor_leaves_a_text_without_a_token_alone(text: str) -> None:
    token = "eyJ" + "Q" * 30
    if token.lower() not in text.lower():
        assert TokenRedactor(token).text(text) == text
        assert TokenRedactor(token).data(text.encode()) == text.encode()


async def test_a_call_cancelled_while_the_callable_fetches_a_token_sends_nothing() -> None:
    asked = anyio.Event()

    async def slow_token() -> str:
        asked.set()
        await anyio.Event().wait()  # a token service that never answers
        return TOKENS[0]

    async with serve_fake_llm() as server:
        provider = AzureOpenAIProvider(
            "gpt-4o-east", azure_endpoint=server.base_url, azure_ad_token_provider=slow_token
        )
        async with provider, anyio.create_task_group() as tg:
            tg.start_soon(provider.complete, QUESTION)
            await asked.wait()
            tg.cancel_scope.cancel()
    assert server.requests == []


# -- a refusal names where the credential came from, in the error and the stop reason ----


def fresh_secret(prefix: str) -> str:
    """A credential no test shares, long and distinctive, to look for in every output."""
    return f"{prefix}{secrets.token_urlsafe(40)}"


def no_secret_in(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text
        assert secret[-24:] not in text


@pytest.mark.parametrize("source", ["azure_ad_token", "azure_ad_token_provider", "env", "file"])
async def test_a_refused_token_stops_the_run_naming_the_tokens_source(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, source: str
) -> None:
    caplog.set_level(logging.DEBUG)
    token = fresh_secret("eyJ0eXAiOiJKV1Qi.")
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", token)
    monkeypatch.setenv("EAST_ENTRA_TOKEN", token)
    hint = {
        "azure_ad_token": "the Entra ID token given as azure_ad_token=",
        "azure_ad_token_provider": "the Entra ID token azure_ad_token_provider returns",
        "env": "the Entra ID token in AZURE_OPENAI_AD_TOKEN",
        "file": "the Entra ID token in EAST_ENTRA_TOKEN",
    }[source]
    async with serve_fake_llm() as server:
        server.fault_for = bearer_only([TOKENS[0]])  # refuses ours, echoing it
        provider: Any
        if source == "file":
            specs = parse_deployments([token_entry(server)])
            provider = build_pool(specs, keys=deployment_keys(specs))
        else:
            given: dict[str, Any] = {
                "azure_ad_token": {"azure_ad_token": token},
                "azure_ad_token_provider": {"azure_ad_token_provider": lambda: token},
                "env": {},
            }[source]
            provider = AzureOpenAIProvider(
                "gpt-4o-east", azure_endpoint=server.base_url, api_version=VERSION, **given
            )
        async with provider:
            executor = ParallelLLMExecutor(provider, max_concurrency=4)
            results = await executor.execute({f"q{i}": LLMTask(QUESTION) for i in range(8)})
    # Only the calls in flight at the first refusal were sent (one alone, when the
    # provider is paced from its first answer; a pool sends up to max_concurrency).
    sent = bearers(server)
    assert set(sent) == {token} and len(sent) <= 4
    errors = [r.error for r in results.values()]
    assert all(isinstance(e, AuthenticationError | TaskAborted) for e in errors)
    refused = [e for e in errors if isinstance(e, AuthenticationError)]
    assert len(refused) == len(sent) and {e.credential for e in refused} == {hint}
    stop = (
        "the server refused the credentials (HTTP 401); "
        f"check {hint} and what it may access, then run again"
    )
    assert any(stop in str(e) for e in errors)
    for error in errors:
        assert hint in str(error) and "API key" not in str(error)
        no_secret_in(token, str(error), repr(error), repr(vars(error)))
    no_secret_in(token, repr(results), repr(provider), caplog.text)


def sent_key(request: RecordedRequest) -> str:
    """The key a request carried: Azure's ``api-key`` header, else OpenAI's bearer."""
    return request.headers.get("api-key") or request.api_key


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_a_key_from_a_files_own_variable_is_named_in_the_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    key = fresh_secret("sk-proj-")
    monkeypatch.setenv("EAST_OWN_KEY", key)
    monkeypatch.setenv("OPENAI_API_KEY", "unused-default-key")  # not the one read
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "unused-default-key")
    async with serve_fake_llm() as server:
        # A server that echoes the key it refuses.
        server.fault_for = lambda r: Fault.status(401, message=f"Incorrect API key: {sent_key(r)}")
        entry = {
            "name": "east",
            "provider": kind,
            "model": "gpt-4o-east",
            "base_url": server.base_url if kind == "azure" else server.openai_base_url,
            "api_key_env": "EAST_OWN_KEY",
        }
        specs = parse_deployments([entry])
        async with build_pool(specs, keys=deployment_keys(specs)) as pool:
            executor = ParallelLLMExecutor(pool, max_concurrency=4)
            results = await executor.execute({f"q{i}": LLMTask(QUESTION) for i in range(8)})
    sent = [sent_key(r) for r in server.requests]
    assert set(sent) == {key} and len(sent) <= 4  # those in flight at the first refusal
    errors = [r.error for r in results.values()]
    refused = [e for e in errors if isinstance(e, AuthenticationError)]
    assert len(refused) == len(sent)
    for error in refused:
        assert "; check the API key (EAST_OWN_KEY) and what it may access" in str(error)
        assert error.credential == "the API key (EAST_OWN_KEY)"
    stop = (
        "the server refused the credentials (HTTP 401); "
        "check the API key (EAST_OWN_KEY) and what it may access, then run again"
    )
    assert any(isinstance(e, TaskAborted) and stop in str(e) for e in errors)
    for error in errors:
        assert "EAST_OWN_KEY" in str(error) and "OPENAI_API_KEY" not in str(error)
        no_secret_in(key, str(error), repr(error), repr(vars(error)))
    no_secret_in(key, repr(results), repr(pool), caplog.text)


@pytest.mark.parametrize("name", ["api_key_env", "azure_ad_token_env"])
@pytest.mark.parametrize("value", ["sk-proj-abc123", "has space", "", "X=1"])
def test_a_variable_name_that_is_not_one_is_refused_without_echoing_it(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=f"{name} is not an environment variable name") as bad:
        AzureOpenAIProvider(
            "d", azure_endpoint="http://127.0.0.1:9", api_key="k" * 20, **{name: value}
        )
    assert value not in str(bad.value) or not value
