"""Tasks (what to run) and results (what came of it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .._base._calls import callable_is_async
from .._base._checks import positive, whole_number
from .._base._messages import only_messages
from .._base._types import LLMMessage, a_kind, to_message
from .._structured._spec import DEFAULT_MAX_REASKS, Structured, structured_for
from ._retry import RetryConfig


def _where(instance: Any) -> str:
    tag = getattr(instance, "tag", "")
    name = type(instance).__name__
    return f"{name} {tag!r}" if isinstance(tag, str) and tag else name


@attrs.frozen
class _Refused:
    """A message the converter could not read: the validator reports it with the tag."""

    error: Exception


def _check_messages(instance: Any, attribute: Any, value: tuple[Any, ...]) -> None:
    if not value:
        raise ValueError(f"{_where(instance)}: messages is empty; give at least one LLMMessage")
    for message in value:
        if type(message) is _Refused:
            raise type(message.error)(f"{_where(instance)}: {message.error}")


def _read_message(index: int, message: object) -> LLMMessage | _Refused:
    try:
        return to_message(message, f"messages[{index}]")
    except (TypeError, ValueError) as exc:
        return _Refused(exc)


def _to_tuple(value: object) -> tuple[LLMMessage, ...]:
    # Alike in shape with _base's to_messages, which raises at the first bad message; here
    # the message is kept (as _Refused) so the error can name the task, known only later.
    messages = only_messages(value)
    if messages is not None:
        return messages
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise TypeError(
            f"messages must be a sequence of LLMMessage or mappings, not {type(value).__name__}"
        )
    if all(type(m) is LLMMessage for m in value):
        return tuple(value)
    # A message that cannot be read is kept as _Refused so that the validator, which runs
    # once the tag is set, can name the task in the error.
    return tuple(_read_message(i, m) for i, m in enumerate(value))  # type: ignore[misc]


def _check_tag(instance: Any, attribute: Any, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{type(instance).__name__}.tag must be a str, not {type(value).__name__}")


def _check_overrides(instance: Any, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(
            f"{_where(instance)}: config_overrides must be a mapping or None, "
            f"not {type(value).__name__}"
        )


def _check_retry(instance: Any, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, RetryConfig):
        raise TypeError(
            f"{_where(instance)}: retry must be a RetryConfig or None, not {type(value).__name__}"
        )


def check_timeout(owner: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is None or a positive number of seconds."""
    if value is not None:
        positive(value, f"{owner}: timeout", hint=", or None for none")


def _check_timeout(instance: Any, attribute: Any, value: object) -> None:
    check_timeout(_where(instance), value)


def _check_tokens(instance: Any, attribute: Any, value: object) -> None:
    if value is not None:
        whole_number(value, f"{_where(instance)}: estimated_tokens", minimum=0, hint=" or None")


def _check_cache(instance: Any, attribute: Any, value: object) -> None:
    if value is not True and value is not False:
        raise TypeError(f"{_where(instance)}: cache is {value!r}; give True or False")


@attrs.frozen
class LLMTask:
    """One LLM call: the messages to send and how to send them.

    ``messages`` are :class:`LLMMessage` values or mappings with the same keys
    (``{"role": "user", "content": "..."}``), read into LLMMessages here.

    ``config_overrides`` are merged over the executor's defaults for this call; ``retry``
    replaces the executor's default policy; ``timeout`` bounds each attempt (seconds);
    ``estimated_tokens`` feeds a token rate limit (else it is estimated from the text);
    ``cache=False`` keeps the call out of the executor's cache (never read, never filled).
    ``tag`` is filled from the mapping key when the task is given in a mapping.

    Structured output (see ``docs/structured-outputs.md``): ``response_model`` (a pydantic
    model, a type pydantic validates, or a callable taking the decoded JSON) or
    ``response_schema`` (a JSON Schema dict, validated with jsonschema) asks the server
    for JSON of that shape and validates the answer into ``TaskResult.value.parsed``; an
    answer that fails is re-asked with its errors up to ``max_reasks`` times (default 2),
    while the task's tokens stay within ``token_budget`` and its cost (by the executor's
    ``prices``) within ``cost_budget``; then the task fails with
    :class:`~llmfanout.errors.ValidationFailed`.
    Raises ``ValueError``/``TypeError`` naming the field when a value is unusable.
    """

    messages: tuple[LLMMessage, ...] = attrs.field(converter=_to_tuple, validator=_check_messages)
    config_overrides: Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_overrides
    )
    retry: RetryConfig | None = attrs.field(default=None, validator=_check_retry)
    tag: str = attrs.field(default="", validator=_check_tag)
    timeout: float | None = attrs.field(default=None, validator=_check_timeout, kw_only=True)
    estimated_tokens: int | None = attrs.field(default=None, validator=_check_tokens, kw_only=True)
    cache: bool = attrs.field(default=True, validator=_check_cache, kw_only=True)
    """False: this call never reads nor fills the executor's cache."""
    response_model: Any = attrs.field(default=None, kw_only=True)
    response_schema: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)
    max_reasks: int = attrs.field(default=DEFAULT_MAX_REASKS, kw_only=True)
    token_budget: int | None = attrs.field(default=None, kw_only=True)
    cost_budget: float | None = attrs.field(default=None, kw_only=True)
    structured: Structured | None = attrs.field(init=False, repr=False, eq=False)
    """The schema and re-ask budget read from the fields above (None: plain text)."""

    @structured.default
    def _structured(self) -> Structured | None:
        if (
            self.response_model is None
            and self.response_schema is None
            and self.max_reasks == DEFAULT_MAX_REASKS
            and self.token_budget is None
            and self.cost_budget is None
        ):
            return None  # the common case, a few comparisons
        return structured_for(
            _where(self),
            self.response_model,
            self.response_schema,
            self.max_reasks,
            self.token_budget,
            self.cost_budget,
        )


def _check_fn(instance: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(
            f"{_where(instance)}: fn is {a_kind(value)}, which is not callable; "
            "give a function, or an object with __call__"
        )


def _check_args(instance: Any, attribute: Any, value: object) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{_where(instance)}: args must be a tuple, not {type(value).__name__}")


def _check_kwargs(instance: Any, attribute: Any, value: object) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{_where(instance)}: kwargs must be a mapping with str keys")


@attrs.frozen
class DeterministicTask:
    """A plain function call run beside LLM tasks: ``fn(*args, **kwargs)``.

    Async callables (coroutine functions, objects with an async ``__call__``, partials of
    either) are awaited; sync ones run in a worker thread. A thread cannot be killed: with
    a ``timeout`` the result times out on time while the thread runs on to its end.
    """

    fn: Callable[..., Any] = attrs.field(validator=_check_fn)
    args: tuple[Any, ...] = attrs.field(default=(), validator=_check_args)
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_kwargs)
    tag: str = attrs.field(default="", validator=_check_tag)
    timeout: float | None = attrs.field(default=None, validator=_check_timeout, kw_only=True)
    retry: RetryConfig | None = attrs.field(default=None, validator=_check_retry, kw_only=True)
    is_async: bool = attrs.field(init=False, repr=False, eq=False)

    @is_async.default
    def _is_async(self) -> bool:
        return callable_is_async(self.fn)


Task = LLMTask | DeterministicTask


# No __weakref__ slot: without it a plain slotted twin shares TaskResult's layout, and the
# hot path builds results through it (see answered()).
@attrs.frozen(weakref_slot=False)
class TaskResult:
    """The outcome of one task.

    ``value`` is the ``LLMResponse`` (or the function's return value) and ``error`` is
    None on success; on failure ``value`` is None and ``error`` the last exception.
    ``duration_ms`` runs from the first attempt's start to the last one's end, retry
    waits included; ``attempts`` counts the attempts made (0 for a task that never ran).
    ``reasks`` counts the follow-up turns sent because an answer failed its schema (each
    re-ask's transport retries are in ``attempts``).
    """

    tag: str
    success: bool
    value: Any
    error: Exception | None
    duration_ms: float
    attempts: int = 1
    reasks: int = attrs.field(default=0, kw_only=True)


_new = object.__new__


class _Building:
    """TaskResult's slots without its frozen ``__setattr__``: :func:`answered` fills one
    with plain slot stores, then makes it a ``TaskResult`` by ``__class__`` assignment,
    which CPython allows between classes of the same slots (hence no ``__weakref__`` slot
    on TaskResult: with one, CPython finds the layouts different)."""

    __slots__ = tuple(field.name for field in attrs.fields(TaskResult))


def answered(tag: str, value: Any, duration_ms: float, attempts: int) -> TaskResult:
    """``TaskResult(tag, True, value, None, duration_ms, attempts)``, built faster.

    For the scheduler's hot path: a frozen attrs class's ``__init__`` sets each field
    through ``object.__setattr__`` by name; this stores a twin's slots and swaps its class
    (about half the cost of setting each slot through its descriptor).
    """
    result: Any = _new(_Building)
    result.tag = tag
    result.success = True
    result.value = value
    result.error = None
    result.duration_ms = duration_ms
    result.attempts = attempts
    result.reasks = 0
    result.__class__ = TaskResult
    return result  # type: ignore[no-any-return]


def _by_setters(tag: str, value: Any, duration_ms: float, attempts: int) -> TaskResult:
    """:func:`answered` where the interpreter refuses the class swap."""
    result = _new(TaskResult)
    values = (tag, True, value, None, duration_ms, attempts, 0)
    for field, item in zip(_FIELDS, values, strict=True):
        object.__setattr__(result, field, item)
    return result


_FIELDS = _Building.__slots__
try:
    answered("", None, 0.0, 1)
except TypeError:  # not CPython's rule for __class__ assignment
    answered = _by_setters
