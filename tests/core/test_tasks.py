"""Value classes: construction, validation at the boundary, immutability."""

from __future__ import annotations

import functools
import pickle

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import (
    DeterministicTask,
    LLMMessage,
    LLMResponse,
    LLMTask,
    RetryConfig,
    TaskResult,
)


def user(text: str) -> LLMMessage:
    return LLMMessage("user", text)


@pytest.mark.parametrize("role", ["system", "user", "assistant", "tool"])
def test_message_accepts_every_role(role: str) -> None:
    assert LLMMessage(role, "hi").role == role  # type: ignore[arg-type]


def test_message_refuses_unknown_role_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"role is 'robot'; use one of assistant, system"):
        LLMMessage("robot", "hi")  # type: ignore[arg-type]


def test_message_refuses_non_string_content() -> None:
    with pytest.raises(
        TypeError, match=r"LLMMessage.content must be a str or a list of content parts, not int"
    ):
        LLMMessage("user", 3)  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    message = user("hi")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]
    task = LLMTask([message])
    assert attrs.evolve(task, tag="t").tag == "t"
    assert task.tag == ""


def test_task_messages_become_a_tuple_copy() -> None:
    messages = [user("a")]
    task = LLMTask(messages)
    messages.append(user("b"))
    assert task.messages == (user("a"),)


def test_empty_messages_names_tag_and_fix() -> None:
    with pytest.raises(ValueError, match=r"LLMTask 'q3': messages is empty; give at least one"):
        LLMTask([], tag="q3")


def test_non_message_item_names_its_index() -> None:
    with pytest.raises(TypeError, match=r"LLMTask 'x': messages\[1\] is an int"):
        LLMTask([user("a"), 3], tag="x")  # type: ignore[list-item]


def test_messages_must_be_a_sequence_not_a_string() -> None:
    with pytest.raises(TypeError, match="sequence of LLMMessage or mappings, not str"):
        LLMTask("hello")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"config_overrides": [1]}, TypeError, "config_overrides must be a mapping"),
        ({"retry": {"max_attempts": 2}}, TypeError, "retry must be a RetryConfig"),
        ({"tag": 5}, TypeError, "tag must be a str"),
        ({"timeout": 0}, ValueError, "timeout is 0; give seconds > 0"),
        ({"timeout": -1.5}, ValueError, "timeout is -1.5"),
        ({"estimated_tokens": -1}, ValueError, "estimated_tokens is -1"),
    ],
)
def test_task_field_errors(kwargs: dict[str, object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        LLMTask([user("a")], **kwargs)  # type: ignore[arg-type]


def test_deterministic_task_refuses_non_callable() -> None:
    with pytest.raises(
        TypeError, match=r"DeterministicTask 'f': fn is an int, which is not callable"
    ):
        DeterministicTask(fn=3, tag="f")  # type: ignore[arg-type]


def test_deterministic_task_checks_args_and_kwargs() -> None:
    with pytest.raises(TypeError, match="args must be a tuple, not list"):
        DeterministicTask(print, args=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kwargs must be a mapping with str keys"):
        DeterministicTask(print, kwargs={1: 2})  # type: ignore[dict-item]


async def _coro_fn() -> int:
    return 1


class _AsyncCallable:
    async def __call__(self) -> int:
        return 2


class _SyncCallable:
    def __call__(self) -> int:
        return 3


@pytest.mark.parametrize(
    ("fn", "is_async"),
    [
        (_coro_fn, True),
        (functools.partial(_coro_fn), True),
        (_AsyncCallable(), True),
        (functools.partial(_AsyncCallable()), True),
        (_SyncCallable(), False),
        (len, False),
        (lambda: 1, False),
        (functools.partial(len, "ab"), False),
    ],
)
def test_deterministic_task_knows_whether_fn_is_async(fn: object, is_async: bool) -> None:
    assert DeterministicTask(fn=fn).is_async is is_async  # type: ignore[arg-type]


def test_response_total_tokens_from_usage() -> None:
    assert LLMResponse("x", usage={"total_tokens": 7}).total_tokens == 7
    assert LLMResponse("x", usage={"prompt_tokens": 2, "completion_tokens": 3}).total_tokens == 5
    assert LLMResponse("x", usage={"prompt_tokens": 2}).total_tokens == 2
    assert LLMResponse("x").total_tokens is None
    assert LLMResponse("x", usage={}).total_tokens is None


def test_response_metadata_is_not_shared_between_instances() -> None:
    first, second = LLMResponse("a"), LLMResponse("b")
    assert first.metadata is not second.metadata


@given(
    tag=st.text(max_size=10),
    success=st.booleans(),
    ms=st.floats(min_value=0, max_value=1e6),
    attempts=st.integers(0, 10),
)
def test_task_result_round_trips_its_fields(
    tag: str, success: bool, ms: float, attempts: int
) -> None:
    error = None if success else RuntimeError("x")
    result = TaskResult(tag, success, "v" if success else None, error, ms, attempts)
    assert attrs.astuple(result, recurse=False) == (
        tag,
        success,
        "v" if success else None,
        error,
        ms,
        attempts,
        0,  # reasks: none without a schema
    )


def test_retry_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"max_attempts is 0; give a whole number >= 1"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ValueError, match=r"initial_delay is -1; it must be a number >= 0"):
        RetryConfig(initial_delay=-1)
    with pytest.raises(ValueError, match=r"max_delay is -0.5"):
        RetryConfig(max_delay=-0.5)
    with pytest.raises(ValueError, match=r"jitter_range is 2"):
        RetryConfig(jitter_range=2)
    with pytest.raises(TypeError, match="retry_on_exceptions holds 'oops'"):
        RetryConfig(retry_on_exceptions=["oops"])  # type: ignore[list-item]
    assert RetryConfig(retry_on_exceptions=ValueError).retry_on_exceptions == (ValueError,)


@pytest.mark.parametrize(
    ("value", "words"),
    [(3, "an int"), ({}, "a dict"), (object(), "an object"), (LLMTask([user("a")]), "an LLMTask")],
)
def test_messages_name_types_with_the_right_article(value: object, words: str) -> None:
    from llmfanout._base._types import a_kind

    assert a_kind(value) == words


@given(
    tag=st.text(),
    value=st.one_of(st.none(), st.integers(), st.text()),
    duration=st.floats(allow_nan=False),
    attempts=st.integers(min_value=1, max_value=10),
)
def test_answered_builds_the_same_frozen_result(
    tag: str, value: object, duration: float, attempts: int
) -> None:
    from llmfanout._core._tasks import _by_setters, answered

    made = TaskResult(tag, True, value, None, duration, attempts)
    # The class swap on CPython, and the fallback where an interpreter refuses it.
    for fast in (
        answered(tag, value, duration, attempts),
        _by_setters(tag, value, duration, attempts),
    ):
        assert type(fast) is TaskResult
        assert fast == made
        assert hash(fast) == hash(made)
        assert pickle.loads(pickle.dumps(fast)) == made
        assert attrs.asdict(fast) == attrs.asdict(made)
        assert repr(fast) == repr(made)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            fast.tag = "other"  # type: ignore[misc]


@given(st.lists(st.builds(LLMMessage, st.sampled_from(["user", "system"]), st.text()), max_size=4))
def test_messages_already_read_are_taken_as_they_are(messages: list[LLMMessage]) -> None:
    from llmfanout._base._messages import only_messages, to_messages

    read = only_messages(messages)
    assert read == tuple(messages)
    assert only_messages(tuple(messages)) == tuple(messages)
    assert to_messages(messages, "here") == tuple(messages)
    assert only_messages([*messages, {"role": "user", "content": "x"}]) is None
