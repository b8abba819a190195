"""Provider errors against a real loopback server: classes, retryability, Retry-After, secrets.

Every fault the fake server can inject is checked on both providers and both backends:
the error class, ``retryable``, ``retry_after``, how many attempts the executor made, and
(on the server's clock) how long it waited between them.
"""

from __future__ import annotations

import email.utils
import logging
import pickle
import random
import traceback
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage, LLMTask, ParallelLLMExecutor, RateLimit, RetryConfig
from llmfanout.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)
from llmfanout.providers import AnthropicProvider, OpenAIProvider
from llmfanout.providers._errors import (
    parse_retry_after,
    should_retry,
    status_error,
    status_error_class,
)
from llmfanout.providers._secrets import Redactor, redact
from llmfanout.providers._transports._base import Response

from support.fake_llm_server import FakeLLMServer, Fault, serve_fake_llm

pytestmark = pytest.mark.anyio

KEY = "sk-llmfanout-SECRET-7f3a9c"
KINDS = ["openai", "anthropic"]
Provider = OpenAIProvider | AnthropicProvider


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with serve_fake_llm() as running:
        yield running


def make_provider(kind: str, server: FakeLLMServer, **options: Any) -> Provider:
    options.setdefault("api_key", KEY)
    if kind == "openai":
        return OpenAIProvider("gpt-test", base_url=server.openai_base_url, **options)
    return AnthropicProvider("claude-test", base_url=server.anthropic_base_url, **options)


def task(prompt: str) -> LLMTask:
    return LLMTask([LLMMessage("user", prompt)])


NO_WAIT = RetryConfig(max_attempts=3, initial_delay=0.0, max_delay=5.0)


# -- each fault: class, retryable, retry_after, attempts ---------------------------------

RETRYABLE: list[tuple[str, Fault, type[ProviderError], float | None]] = [
    ("429", Fault.status(429), RateLimitError, None),
    ("429-retry-after", Fault.status(429, retry_after="0"), RateLimitError, 0.0),
    ("429-retry-after-ms", Fault.status(429, retry_after_ms="40"), RateLimitError, 0.04),
    ("408", Fault.status(408), APIStatusError, None),
    ("409", Fault.status(409), APIStatusError, None),
    ("500", Fault.status(500), ServerError, None),
    ("503-retry-after", Fault.status(503, retry_after="0"), ServerError, 0.0),
    ("529-overloaded", Fault.status(529), ServerError, None),
    ("drop-mid-body", Fault.drop(), APIConnectionError, None),
    ("disconnect", Fault.disconnect(), APIConnectionError, None),
    ("hang", Fault.hang(), APITimeoutError, None),
    ("stall-mid-body", Fault.stall(), APITimeoutError, None),
    (
        "400-should-retry",
        Fault.status(400, headers={"x-should-retry": "true"}),
        BadRequestError,
        None,
    ),
]

NOT_RETRYABLE: list[tuple[str, Fault, type[ProviderError], int | None]] = [
    ("400", Fault.status(400), BadRequestError, 400),
    ("404", Fault.status(404), BadRequestError, 404),
    ("422", Fault.status(422), BadRequestError, 422),
    ("401", Fault.status(401), AuthenticationError, 401),
    ("403", Fault.status(403), AuthenticationError, 403),
    ("401-with-retry-after", Fault.status(401, retry_after="5"), AuthenticationError, 401),
    ("malformed-json", Fault.malformed_json(), ResponseFormatError, 200),
    ("missing-fields", Fault.missing_fields(), ResponseFormatError, 200),
    (
        "500-should-not-retry",
        Fault.status(500, headers={"x-should-retry": "false"}),
        ServerError,
        500,
    ),
    (
        "429-should-not-retry",
        Fault.status(429, retry_after="0", headers={"x-should-retry": "false"}),
        RateLimitError,
        429,
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "error_class", "retry_after"),
    [case[1:] for case in RETRYABLE],
    ids=[case[0] for case in RETRYABLE],
)
async def test_retryable_fault_is_retried_once_then_succeeds(
    server: FakeLLMServer,
    kind: str,
    fault: Fault,
    error_class: type[ProviderError],
    retry_after: float | None,
) -> None:
    seen: list[Exception] = []
    retry = RetryConfig(max_attempts=3, initial_delay=0.0, on_retry=lambda n, exc: seen.append(exc))
    timeout = 0.2 if fault.kind in ("hang", "stall") else 10.0
    async with make_provider(kind, server, timeout=timeout) as provider:
        server.add_faults(fault)
        with pytest.raises(error_class) as caught:
            await provider.complete([LLMMessage("user", "raw")])
        server.add_faults(fault)
        executor = ParallelLLMExecutor(provider, default_retry=retry)
        result = (await executor.execute({"t": task("again")}))["t"]
    error = caught.value
    assert type(error) is error_class
    assert error.retryable is True
    if retry_after is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(retry_after)
    assert error.provider == kind
    assert result.success, result.error
    assert result.attempts == 2
    assert result.value.content == "echo: again"
    assert [type(e) for e in seen] == [error_class]
    assert len(server.requests_for("again")) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "error_class", "status_code"),
    [case[1:] for case in NOT_RETRYABLE],
    ids=[case[0] for case in NOT_RETRYABLE],
)
async def test_non_retryable_fault_is_tried_once(
    server: FakeLLMServer,
    kind: str,
    fault: Fault,
    error_class: type[ProviderError],
    status_code: int | None,
) -> None:
    server.add_faults(fault)
    async with make_provider(kind, server) as provider:
        executor = ParallelLLMExecutor(provider, default_retry=NO_WAIT)
        result = (await executor.execute({"t": task("once")}))["t"]
    assert not result.success
    assert result.attempts == 1
    assert len(server.requests_for("once")) == 1
    error = result.error
    assert type(error) is error_class
    assert isinstance(error, ProviderError)
    assert error.retryable is False
    assert error.status_code == status_code
    assert error.provider == kind
    assert error.request_id == f"req_{server.requests_for('once')[0].index}"


@pytest.mark.parametrize("kind", KINDS)
async def test_status_error_carries_the_providers_type_and_message(
    server: FakeLLMServer, kind: str
) -> None:
    server.add_faults(
        Fault.status(404, message="model 'nope' does not exist", error_type="not_found_error")
    )
    async with make_provider(kind, server) as provider:
        with pytest.raises(BadRequestError) as caught:
            await provider.complete([LLMMessage("user", "x")])
    error = caught.value
    assert error.error_type == "not_found_error"
    assert error.error_message == "model 'nope' does not exist"
    assert "model 'nope' does not exist" in str(error)
    assert "check base_url and the model name" in str(error)
    assert error.body is not None and "not_found_error" in error.body


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_is_a_retryable_connection_error(kind: str) -> None:
    async with serve_fake_llm() as gone:
        pass  # the port is closed again: nothing listens there now
    async with make_provider(kind, gone) as provider:
        with pytest.raises(APIConnectionError) as caught:
            await provider.complete([LLMMessage("user", "x")])
    assert type(caught.value) is APIConnectionError
    assert caught.value.retryable is True
    assert "could not connect" in str(caught.value)


# -- Retry-After is waited for, measured on the server's clock --------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry_after": "1"}, 1.0), ({"retry_after_ms": "120", "retry_after": "9"}, 0.12)],
    ids=["retry-after", "retry-after-ms"],
)
async def test_retry_after_is_waited_for(
    server: FakeLLMServer, kind: str, headers: dict[str, Any], wait: float
) -> None:
    server.add_faults(Fault.status(429, **headers))
    async with make_provider(kind, server) as provider:
        executor = ParallelLLMExecutor(provider, default_retry=NO_WAIT)
        result = (await executor.execute({"t": task("patience")}))["t"]
    assert result.success and result.attempts == 2
    [gap] = server.gaps("patience")
    assert gap >= wait * 0.95  # the backoff alone (initial_delay=0) would not wait at all
    assert gap < wait + 2.0


async def test_retry_after_is_capped_by_max_delay(server: FakeLLMServer) -> None:
    server.add_faults(Fault.status(503, retry_after="30"))
    # Without patience an overload answer is an attempt like any other, its wait capped.
    retry = RetryConfig(max_attempts=2, initial_delay=0.0, max_delay=0.05, patience=0)
    async with make_provider("openai", server) as provider:
        result = (
            await ParallelLLMExecutor(provider, default_retry=retry).execute({"t": task("c")})
        )["t"]
    assert result.success and result.attempts == 2
    [gap] = server.gaps("c")
    assert 0.04 <= gap < 5


async def test_rate_limit_error_pauses_other_tasks_starts(server: FakeLLMServer) -> None:
    """A 429 with retry-after feeds the shared RateLimit's cooldown: nothing new starts."""
    cooled = anyio.Event()  # set by on_retry, which runs after the cooldown is booked
    retry = RetryConfig(max_attempts=2, initial_delay=0.0, on_retry=lambda n, exc: cooled.set())
    # The first request is refused; the second is held until the client has seen the 429,
    # so its worker's next start comes after the cooldown was set.
    server.add_faults(Fault.status(429, retry_after_ms="200"), Fault.ok(gate=cooled))
    limit = RateLimit(requests_per_minute=60_000)
    async with make_provider("openai", server) as provider:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=2, default_retry=retry, rate_limit=limit
        )
        results = await executor.execute({f"t{i}": task(f"p{i}") for i in range(6)})
    assert all(r.success for r in results.values())
    first, _, *later = server.requests
    assert len(later) == 5  # four more tasks and the retry
    assert min(r.time for r in later) - first.time >= 0.2 * 0.95


# -- hundreds of tasks, ~30% transient faults, every one succeeds -----------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_hundreds_of_tasks_with_transient_faults_all_succeed(
    server: FakeLLMServer, kind: str
) -> None:
    rng = random.Random(20240601)
    transient = [
        lambda: Fault.status(429, retry_after_ms="5"),
        lambda: Fault.status(500),
        lambda: Fault.status(503),
        lambda: Fault.status(529),
        Fault.drop,
        Fault.disconnect,
    ]
    # Per task, a run of faults before success: each attempt fails with p=0.3, at most 3.
    plan: dict[str, list[Fault]] = {}
    for i in range(300):
        faults: list[Fault] = []
        while len(faults) < 3 and rng.random() < 0.3:
            faults.append(rng.choice(transient)())
        plan[f"task {i}"] = faults
    attempts_seen: dict[str, int] = {}

    def fault_for(request: Any) -> Fault | None:
        n = attempts_seen.get(request.prompt, 0)
        attempts_seen[request.prompt] = n + 1
        faults = plan[request.prompt]
        return faults[n] if n < len(faults) else None

    server.fault_for = fault_for
    retry = RetryConfig(max_attempts=5, initial_delay=0.001, max_delay=0.01)
    async with make_provider(kind, server, max_connections=20) as provider:
        executor = ParallelLLMExecutor(provider, max_concurrency=20, default_retry=retry)
        results = await executor.execute({p: task(p) for p in plan})
    assert all(r.success for r in results.values())
    for prompt, result in results.items():
        assert result.attempts == len(plan[prompt]) + 1
        assert result.value.content == f"echo: {prompt}"
    injected = sum(len(f) for f in plan.values())
    assert len(server.requests) == 300 + injected
    assert 0.2 < injected / len(server.requests) < 0.4


# -- cancellation ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_a_call_on_a_hung_server_returns_promptly(
    server: FakeLLMServer, kind: str
) -> None:
    server.add_faults(Fault.hang())
    async with make_provider(kind, server, timeout=30.0) as provider:
        start = anyio.current_time()
        with anyio.move_on_after(0.15) as scope:
            await provider.complete([LLMMessage("user", "stuck")])
        assert scope.cancelled_caught
        assert anyio.current_time() - start < 1.5
        assert len(server.requests) == 1  # it was waiting on the server, not before it
        with anyio.fail_after(5):  # the abandoned connection is closed, not leaked
            await server.wait_for_no_connections()
        # The pool is still usable.
        response = await provider.complete([LLMMessage("user", "after")])
    assert response.content == "echo: after"


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_from_outside_once_the_server_has_the_request(
    server: FakeLLMServer, kind: str
) -> None:
    server.add_faults(Fault.hang())
    finished = False

    async def call(provider: Provider) -> None:
        nonlocal finished
        await provider.complete([LLMMessage("user", "stuck")])
        finished = True

    async with make_provider(kind, server, timeout=30.0) as provider:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, provider)
                await server.wait_for_requests(1)
                tg.cancel_scope.cancel()
    assert not finished


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_the_api_key_appears_nowhere(
    server: FakeLLMServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echoing = "Incorrect API key provided: {api_key}"
    faults = [
        Fault.status(401, message=echoing),
        Fault.status(429, retry_after="0", message=echoing),
        Fault.status(500, message=echoing),
        Fault.status(400, message=echoing),
        Fault.drop(),
        Fault.disconnect(),
        Fault.hang(),
        Fault.stall(),
        Fault.malformed_json(),
        Fault.missing_fields(),
    ]
    tasks = {f"f{i}": task(f"f{i}") for i in range(len(faults))}
    tasks["ok"] = task("fine")
    tasks["not-json"] = LLMTask([LLMMessage("user", "s")], config_overrides={"tools": object()})
    tasks["nan"] = LLMTask(
        [LLMMessage("user", "n")], config_overrides={"temperature": float("nan")}
    )
    server.add_faults(*faults)
    errors: list[BaseException] = []
    async with make_provider(kind, server, timeout=0.2) as provider:
        assert KEY not in repr(provider) and KEY not in str(provider)
        # Every fault in turn, the 401 too: do not stop the run at it.
        executor = ParallelLLMExecutor(provider, max_concurrency=1, stop_on_auth_error=False)
        results = await executor.execute(tasks)
        server.add_faults(Fault.status(401, message=echoing))
        try:
            await provider.complete([LLMMessage("user", "raw")])
        except ProviderError as exc:
            errors.append(exc)
    assert server.requests[0].api_key == KEY  # the key was sent...
    assert results["ok"].success
    errors += [r.error for r in results.values() if r.error is not None]
    assert len(errors) == len(faults) + 3
    for error in errors:  # ...and shows nowhere
        assert isinstance(error, ProviderError)
        assert error.__cause__ is None and error.__context__ is None
        for text in (
            str(error),
            repr(error),
            repr(vars(error)),
            *traceback.format_exception(error),
        ):
            assert KEY not in text
    for result in results.values():
        assert KEY not in repr(result)
    assert caplog.records  # httpx and httpcore did log at DEBUG
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text
    echoed = [e for e in errors if isinstance(e, AuthenticationError)]
    assert echoed and all("***" in e.message for e in echoed)


# -- pure functions: Retry-After, the retry rule, status -> class ------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "9"}) == 9.0
    assert parse_retry_after({"retry-after-ms": "250.5"}) == 0.2505
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({"retry-after-ms": "inf"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=lambda: now) == 42.0
    past = email.utils.formatdate(now - 42, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=lambda: now) == 0.0
    assert parse_retry_after({"retry-after": "Someday, soon"}, now=lambda: now) is None


header_text = st.one_of(st.none(), st.text(max_size=40), st.from_regex(r"-?[0-9.eE+]{1,12}"))


@given(ms=header_text, seconds=header_text)
def test_retry_after_is_none_or_finite_and_non_negative(
    ms: str | None, seconds: str | None
) -> None:
    headers = {k: v for k, v in (("retry-after-ms", ms), ("retry-after", seconds)) if v is not None}
    value = parse_retry_after(headers, now=lambda: 1_700_000_000.0)
    assert value is None or (0.0 <= value < float("inf"))


@given(st.from_regex(r"[0-9]{1,10}(\.[0-9]{1,4})?", fullmatch=True), header_text)
def test_retry_after_ms_is_read_as_milliseconds(ms: str, other: str | None) -> None:
    headers = {"retry-after-ms": ms}
    if other is not None:
        headers["retry-after"] = other
    assert parse_retry_after(headers) == pytest.approx(float(ms) / 1000)


@pytest.mark.parametrize(
    "value", ["1_0", "+5", "-3", "1e3", "0x10", "0.25", ".5", "5.", "١٠", "inf", "nan", "1 0"]
)
def test_retry_after_accepts_only_its_grammar(value: str) -> None:
    """Issue 9 item 12: float() reads '1_0' as 10; the header's grammar has no such thing."""
    assert parse_retry_after({"retry-after": value}) is None
    if value not in ("0.25",):
        assert parse_retry_after({"retry-after-ms": value}) is None
    assert parse_retry_after({"retry-after-ms": value, "retry-after": "3"}) == (
        0.00025 if value == "0.25" else 3.0
    )


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_seconds(seconds: int) -> None:
    assert parse_retry_after({"retry-after": str(seconds)}) == seconds


@given(st.integers(min_value=-(10**6), max_value=10**8))
def test_retry_after_date_is_the_time_until_it(offset: int) -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + offset, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=lambda: now) == max(offset, 0)


def expected_class(status: int) -> type[ProviderError]:
    return {
        400: BadRequestError,
        401: AuthenticationError,
        403: AuthenticationError,
        404: BadRequestError,
        413: BadRequestError,
        422: BadRequestError,
        429: RateLimitError,
    }.get(status, ServerError if status >= 500 else APIStatusError)


@given(
    status=st.integers(min_value=300, max_value=599),
    flag=st.sampled_from([None, "true", "false", "True", "maybe"]),
    retry_after=st.one_of(st.none(), st.integers(min_value=0, max_value=100).map(str)),
)
def test_status_mapping_matches_the_official_sdks(
    status: int, flag: str | None, retry_after: str | None
) -> None:
    headers = {}
    if flag is not None:
        headers["x-should-retry"] = flag
    if retry_after is not None:
        headers["retry-after"] = retry_after
    response = Response(status, "", headers, b"{}")
    error = status_error("openai", response, Redactor(KEY), "OPENAI_API_KEY")
    assert type(error) is expected_class(status) is status_error_class(status)
    if flag == "true":
        retryable = True
    elif flag == "false":
        retryable = False
    else:
        retryable = status in (408, 409, 429) or status >= 500
    assert error.retryable is retryable is should_retry(status, headers)
    assert error.status_code == status
    assert error.retry_after == (None if retry_after is None else float(retry_after))


@given(
    text=st.text(max_size=200),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
)
def test_redact_leaves_no_copy_of_the_secret(text: str, secret: str) -> None:
    assert secret not in redact(text + secret + text, secret)


def test_an_html_error_page_becomes_the_message() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>"
    response = Response(502, "Bad Gateway", {"content-type": "text/html"}, page)
    error = status_error("openai", response, Redactor(KEY), "OPENAI_API_KEY")
    assert isinstance(error, ServerError) and error.retryable
    assert "502 Bad Gateway" in str(error) and "\n" not in str(error)


def test_a_redirect_is_not_followed_and_says_where_to() -> None:
    response = Response(308, "Permanent Redirect", {"location": "https://new.example/v1/chat"}, b"")
    error = status_error("openai", response, Redactor(KEY), "OPENAI_API_KEY")
    assert type(error) is APIStatusError and not error.retryable
    assert "https://new.example/v1/chat" in str(error)
    assert "set base_url to the final address" in str(error)


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError("r", status_code=429, retry_after=1.5, request_id="req_1"),
        ServerError("s", status_code=529, retryable=False),
        APITimeoutError("t"),
        ProviderError("p"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error: ProviderError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)


def test_hierarchy_and_default_retryability() -> None:
    retryable: dict[type[ProviderError], bool] = {
        APIConnectionError: True,
        APITimeoutError: True,
        RateLimitError: True,
        ServerError: True,
        BadRequestError: False,
        AuthenticationError: False,
        ResponseFormatError: False,
        ProviderError: False,
    }
    for cls, expected in retryable.items():
        assert cls("x").retryable is expected
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in (BadRequestError, AuthenticationError, RateLimitError, ServerError):
        assert issubclass(cls, APIStatusError)
    assert all(issubclass(cls, ProviderError) for cls in retryable)
