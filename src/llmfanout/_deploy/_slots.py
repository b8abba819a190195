"""A pool's bookkeeping: each deployment's slot and stats, and an answer stamped with the
deployment that gave it (``_pool`` routes with these)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._base._types import LLMMessage, LLMResponse
from .._flow._governor import Governor
from .._flow._limiter import Limiter
from .._flow._ratelimit import RateLimit
from ._spec import Deployment

_DEFAULT_COOL = 1.0  # seconds a 429 without Retry-After keeps a deployment last in line


@attrs.frozen
class DeploymentStats:
    """What one deployment of a :class:`Pool` did so far (see :meth:`Pool.stats`).

    ``calls``: requests sent; ``succeeded``, ``failed``; ``rate_limited``: answers 429
    (or 529, or 503 with Retry-After); ``fallbacks``: calls it refused that went on to a
    fallback; ``hedges``: second copies sent to it; ``prompt_tokens``,
    ``completion_tokens``: from its answers' usage; ``state``: ``"ok"``, ``"out"`` (taken
    out after failing, probed back later) or ``"refused"`` (it refused its key).
    """

    name: str
    model: str | None
    calls: int
    succeeded: int
    failed: int
    rate_limited: int
    fallbacks: int
    hedges: int
    prompt_tokens: int
    completion_tokens: int
    state: str


class _Slot:
    """A deployment and its state in the pool."""

    __slots__ = (
        "calls",
        "calm",
        "completion_tokens",
        "cool_until",
        "deployment",
        "disabled",
        "failed",
        "failures",
        "fallbacks",
        "fresh",
        "governor",
        "hedges",
        "in_flight",
        "index",
        "limit",
        "open_for",
        "open_until",
        "probing",
        "prompt_tokens",
        "rate_limited",
        "refusal",
        "succeeded",
        "weight",
    )

    def __init__(
        self,
        index: int,
        deployment: Deployment,
        max_concurrency: int,
        *,
        pacing: bool = True,
        adaptive: bool = True,
    ) -> None:
        self.index = index
        self.deployment = deployment
        self.weight = deployment.weight
        # Its provider's answers are each the caller's alone: stamped in place, not copied.
        self.fresh = getattr(deployment.provider, "fresh_answers", False) is True
        # Its own pacer (by the headers its answers carry), AIMD window and cooldowns.
        self.governor = Governor(
            deployment.provider,
            max_concurrency,
            pacing=pacing,
            adaptive=adaptive,
            stop_on_auth=False,
        )
        limit = deployment.limit
        if limit is None and (deployment.rpm or deployment.tpm):
            limit = RateLimit(deployment.rpm, deployment.tpm)
        self.limit: Limiter | None = limit
        self.in_flight = 0
        self.cool_until = -math.inf
        self.failures = 0  # transient failures in a row
        self.open_until: float | None = None  # taken out until then (None: in)
        self.open_for = 0.0
        self.probing = False
        self.disabled = False  # refused its key: out for good
        self.refusal: Exception | None = None  # the answer that refused it
        self.calm = self.quiet()  # quiet() as of its last answer: what routing reads
        self.calls = self.succeeded = self.failed = self.rate_limited = 0
        self.fallbacks = self.hedges = self.prompt_tokens = self.completion_tokens = 0

    def quiet(self) -> bool:
        """Nothing to wait for: no cooldown, not out, no budget of its own, nothing
        reported by its server yet (it can start a call now, and cheaply)."""
        return (
            self.cool_until == -math.inf
            and self.open_until is None
            and self.limit is None
            and self.governor.idle()
        )

    def rate(self, model: Any) -> float | None:
        """Requests per second it may start: its ``rpm``, else its server's advertised
        limit (None while neither is known)."""
        rpm = getattr(self.limit, "requests_per_minute", None)
        if not rpm:
            model = self.deployment.model or model
            pacer = self.governor.pacer({"model": model} if model is not None else None)
            rpm = pacer.limits[0] if pacer is not None else None
        return rpm / 60 if rpm else None

    def ready_at(self, now: float, tokens: int, model: Any) -> float:
        """When this deployment could start a call of ``tokens`` (``now`` if at once)."""
        when = max(now, self.cool_until)
        if self.open_until is not None:
            when = max(when, self.open_until)
        limit = self.limit
        if limit is not None:
            ready = getattr(limit, "ready_at", None)
            if ready is not None:
                when = max(when, ready(now, tokens))
        model = self.deployment.model or model
        pacer = self.governor.pacer({"model": model} if model is not None else None)
        if pacer is not None:
            when = max(when, pacer.ready_at(now, tokens))
        return when


STAMPED_FIELDS = ("content", "model", "finish_reason", "usage", "tool_calls", "rate_limits",
                  "parsed", "metadata")  # fmt: skip
"""The fields ``_stamped`` copies: every one of LLMResponse's, or it is not used (a field
added to LLMResponse and not here sends answers through ``attrs.evolve``; a test says so)."""
_STAMPABLE = set(STAMPED_FIELDS) == {f.name for f in attrs.fields(LLMResponse)}
_put = {name: getattr(LLMResponse, name).__set__ for name in STAMPED_FIELDS}
_put_content, _put_model, _put_finish, _put_usage, _put_tools, _put_limits = (
    _put[n] for n in STAMPED_FIELDS[:6]
)
_put_parsed, _put_metadata = _put["parsed"], _put["metadata"]
_new_response = object.__new__


def _stamped(response: LLMResponse, metadata: Mapping[str, Any]) -> LLMResponse:
    """``attrs.evolve(response, metadata=metadata)``, without re-checking the fields an
    LLMResponse already holds checked: its slots are copied one by one (the converters
    and validators of ``__init__`` were most of the pool's cost per call otherwise)."""
    stamped: LLMResponse = _new_response(LLMResponse)
    _put_content(stamped, response.content)
    _put_model(stamped, response.model)
    _put_finish(stamped, response.finish_reason)
    _put_usage(stamped, response.usage)
    _put_tools(stamped, response.tool_calls)
    _put_limits(stamped, response.rate_limits)
    _put_parsed(stamped, response.parsed)
    _put_metadata(stamped, metadata)
    return stamped


class _Prompt:
    __slots__ = ("estimated_tokens", "messages")

    def __init__(self, messages: Sequence[LLMMessage]) -> None:
        self.messages = messages
        self.estimated_tokens: int | None = None


def _load(slot: _Slot) -> float:
    return slot.in_flight / slot.weight


def _fits(slot: _Slot, need: int) -> bool:
    window = slot.deployment.context_window
    return window is None or need <= window


def _with_retry_after(exc: Exception, seconds: float) -> Exception:
    """A copy of ``exc`` that asks for ``seconds`` of wait (the original is left as is)."""
    changed = copy.copy(exc)
    try:
        changed.retry_after = seconds  # type: ignore[attr-defined]
    except AttributeError:
        return exc
    return changed
