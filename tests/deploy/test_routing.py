"""Routing invariants, by property: a call never goes where it cannot fit, and goes to
the least loaded deployment (for its weight) among those that can start it now."""

from __future__ import annotations

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    Deployment,
    EchoProvider,
    ErrorResponse,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    Pool,
)
from llmfanout._deploy._build import build_pool
from llmfanout._deploy._pool import _Call
from llmfanout._deploy._slots import STAMPED_FIELDS, _stamped
from llmfanout._deploy._spec import parse_deployments
from llmfanout.errors import BadRequestError, ServerError
from llmfanout.retry import RetryConfig
from llmfanout.testing import set_testing

shapes = st.lists(
    st.tuples(
        st.none() | st.integers(1, 1000),  # context window
        st.integers(0, 20),  # calls in flight
        st.sampled_from([0.5, 1.0, 3.0]),  # weight
    ),
    min_size=1,
    max_size=5,
)


@given(shapes, st.integers(1, 1200))
def test_the_choice_fits_and_is_the_least_loaded(
    shape: list[tuple[int | None, int, float]], need: int
) -> None:
    pool = Pool(
        [
            Deployment(name=f"d{i}", provider=EchoProvider(), context_window=w, weight=weight)
            for i, (w, _, weight) in enumerate(shape)
        ]
    )
    for slot, (_, in_flight, _) in zip(pool._slots, shape, strict=True):
        slot.in_flight = in_flight
    call = _Call(pool, [], None)
    call.need = need

    async def choose() -> None:
        fitting = [
            s
            for s in pool._slots
            if s.deployment.context_window is None or need <= s.deployment.context_window
        ]
        if not fitting:
            with pytest.raises(BadRequestError, match="context_window"):
                pool._choose(call, None, None)
            return
        chosen = pool._choose(call, None, None)
        assert chosen in fitting
        assert chosen.in_flight / chosen.weight == min(s.in_flight / s.weight for s in fitting)

    anyio.run(choose)


def test_a_transient_failure_sends_the_next_attempt_elsewhere() -> None:
    pool = Pool([EchoProvider(), EchoProvider()])
    call = _Call(pool, [], None)

    async def choose() -> None:
        first = pool._choose(call, None, None)
        call.failed = frozenset({first.index})
        first.in_flight = 0
        assert pool._choose(call, None, None) is not first

    anyio.run(choose)


@pytest.mark.anyio
async def test_a_provider_that_reports_nothing_fails_over_too() -> None:
    """The quick path (no limits reported yet) accounts for failures as the paced one."""
    broken = EchoProvider([ErrorResponse(ServerError("down", status_code=503))], strict=True)
    pool = Pool([broken, EchoProvider()], trip_after=1)
    with pytest.raises(ServerError):
        await pool.complete([{"role": "user", "content": "x"}])  # type: ignore[list-item]
    answer = await pool.complete([{"role": "user", "content": "x"}])  # type: ignore[list-item]
    assert answer.metadata["deployment"] == "deployment-2"
    assert pool.stats()["deployment-1"].state == "out"


@pytest.mark.anyio
async def test_a_first_attempt_that_fails_is_remembered_by_the_next() -> None:
    """A call's state is made only when its first attempt fails: the retry still goes
    elsewhere, and the answer counts the requests each deployment got."""
    broken = EchoProvider([ErrorResponse(ServerError("down", status_code=503))], strict=True)
    pool = Pool(
        [Deployment(name="a", provider=broken), Deployment(name="b", provider=EchoProvider())]
    )
    executor = ParallelLLMExecutor(pool, default_retry=RetryConfig(max_attempts=2))
    with set_testing(True):
        results = await executor.execute({"x": LLMTask([LLMMessage("user", "hi")])})
    result = results["x"]
    assert result.success and result.attempts == 2
    assert result.value.metadata["deployment"] == "b"
    assert result.value.metadata["deployment_attempts"] == {"a": 1, "b": 1}
    # A call answered at the first attempt says only where it went.
    answer = await Pool([EchoProvider(), EchoProvider()]).complete([LLMMessage("user", "hi")])
    assert answer.metadata["deployment"] == "deployment-1"
    assert "deployment_attempts" not in answer.metadata


def test_the_stamped_copy_copies_every_field() -> None:
    assert set(STAMPED_FIELDS) == {f.name for f in attrs.fields(LLMResponse)}


@given(
    content=st.text(max_size=20),
    model=st.text(max_size=10),
    finish=st.none() | st.sampled_from(["stop", "length", "content_filter"]),
    usage=st.none()
    | st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens"]), st.integers(0, 99)),
    metadata=st.dictionaries(st.text(max_size=5), st.integers()),
)
def test_the_stamped_copy_is_evolve(
    content: str,
    model: str,
    finish: str | None,
    usage: dict[str, int] | None,
    metadata: dict[str, int],
) -> None:
    response = LLMResponse(content, model=model, finish_reason=finish, usage=usage)
    stamped = _stamped(response, {**metadata, "deployment": "d"})
    assert stamped == attrs.evolve(response, metadata={**metadata, "deployment": "d"})
    assert stamped.rate_limits is response.rate_limits and response.metadata == {}


@pytest.mark.anyio
async def test_an_answer_is_stamped_in_place_only_when_it_is_the_callers_alone() -> None:
    shared = LLMResponse("shared", metadata={"k": 1})

    class Fresh:
        fresh_answers = True

        def __init__(self) -> None:
            self.made: list[LLMResponse] = []

        async def complete(self, messages: object, config_overrides: object = None) -> LLMResponse:
            self.made.append(LLMResponse("fresh", metadata={"k": 2}))
            return self.made[-1]

    scripted = EchoProvider([shared, shared], strict=True)
    pool = Pool([Deployment(name="s", provider=scripted)])
    first = await pool.complete([LLMMessage("user", "a")])
    assert first.metadata == {"k": 1, "deployment": "s"} and first is not shared
    assert shared.metadata == {"k": 1}  # a shared answer is copied, never changed
    fresh = Fresh()
    answer = await Pool([Deployment(name="f", provider=fresh)]).complete([LLMMessage("user", "b")])
    assert answer is fresh.made[0] and answer.metadata == {"k": 2, "deployment": "f"}


@pytest.mark.anyio
async def test_an_answer_on_the_quick_path_counts_for_the_deployments_pause() -> None:
    """As the executor's quick path does: after an answer, a bare 429's Retry-After is
    that call's own wait, not a pause of the whole deployment."""
    pool = Pool([EchoProvider()])
    governor = pool._slots[0].governor  # its pause is told of answers when next read
    assert governor.pause.share(False)  # nothing answered yet: a refusal pauses everyone
    await pool.complete([LLMMessage("user", "hi")])
    assert not governor.pause.share(False)


@given(st.floats(min_value=0.0, max_value=5.0, allow_nan=False))
def test_echo_deployments_take_the_jobs_echo_latency(latency: float) -> None:
    """``--echo-latency`` reaches every echo deployment of a ``--deployments`` file."""
    specs = parse_deployments([{"name": name, "provider": "echo"} for name in "ab"])
    pool = build_pool(specs, keys={}, echo_latency=latency)
    assert [slot.deployment.provider.latency for slot in pool._slots] == [latency, latency]
