"""EchoProvider: a provider with no network, for tests, demos and benchmarks."""

from __future__ import annotations

import hashlib
import inspect
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .._base._embeddings import EmbeddingCaps, EmbeddingResponse
from .._base._types import LLMMessage, LLMResponse, to_messages


@attrs.frozen
class ErrorResponse:
    """A queued failure: the :class:`EchoProvider` raises ``exception`` when it reaches it."""

    exception: Exception = attrs.field(validator=attrs.validators.instance_of(Exception))


class ResponseQueueExhausted(RuntimeError):
    """A strict :class:`EchoProvider` was called after its scripted responses ran out."""

    retryable = False


@attrs.frozen
class EchoCall:
    """One call an :class:`EchoProvider` received."""

    messages: tuple[LLMMessage, ...]
    config_overrides: Mapping[str, Any] | None


Scripted = LLMResponse | str | ErrorResponse
ResponseFunction = Callable[[Sequence[LLMMessage]], Any]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class EchoProvider:
    """Answers from a script, or echoes the last user message (``"Echo: ..."``).

    Scripted items (``set_responses``, ``add_response``) are served in call order: an
    ``LLMResponse`` as is, a string as a response with that content, an
    :class:`ErrorResponse` by raising its exception. With nothing queued, a function set
    by ``set_response_function(fn)`` answers (``fn(messages)`` returns a string or an
    ``LLMResponse``, or raises); else the provider echoes. ``strict=True`` raises
    :class:`ResponseQueueExhausted` instead of echoing once the queue is empty.
    ``latency`` (seconds) is waited out on every call, for demos and benchmarks.
    Every call is recorded in ``calls``, unless ``record_calls=False`` (for long runs,
    where the record would grow with every call; ``call_count`` still counts). An
    ``on_text`` callback in ``config_overrides`` gets the answer word by word, as from a
    streaming provider.
    """

    def __init__(
        self,
        responses: Iterable[Scripted] | None = None,
        *,
        strict: bool = False,
        latency: float = 0.0,
        model: str = "echo",
        record_calls: bool = True,
    ) -> None:
        if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
            raise ValueError(f"EchoProvider: latency is {latency!r}; give seconds >= 0")
        self.strict = strict
        self.latency = float(latency)
        self.model = model
        self._queue: deque[Scripted] = deque()
        self._cycle: list[Scripted] | None = None
        self._served = 0
        self._response_fn: ResponseFunction | None = None
        self._calls: list[EchoCall] = []
        self._record_calls = record_calls
        self._call_count = 0
        if responses is not None:
            self.set_responses(list(responses))

    def __repr__(self) -> str:
        return f"EchoProvider(model={self.model!r}, latency={self.latency!r})"

    def set_responses(self, responses: Sequence[Scripted], cycle: bool = False) -> EchoProvider:
        """Replace the script. With ``cycle=True`` it repeats for ever."""
        items = list(responses)
        for item in items:
            _check_scripted(item)
        self._queue = deque(items)
        self._cycle = items if cycle and items else None
        self._served = 0
        return self

    def add_response(self, response: Scripted) -> EchoProvider:
        """Append one item to the script."""
        _check_scripted(response)
        if self._cycle is not None:
            self._cycle.append(response)
        else:
            self._queue.append(response)
        return self

    def set_response_function(self, fn: ResponseFunction | None) -> EchoProvider:
        """Answer with ``fn(messages)`` (sync or async) when the script is empty."""
        self._response_fn = fn
        return self

    @property
    def calls(self) -> list[EchoCall]:
        """Every call received so far, oldest first (a copy)."""
        return list(self._calls)

    @property
    def call_count(self) -> int:
        """How many calls were received."""
        return self._call_count

    def _next_scripted(self) -> Scripted | None:
        if self._cycle is not None:
            item = self._cycle[self._served % len(self._cycle)]
            self._served += 1
            return item
        return self._queue.popleft() if self._queue else None

    embedding_caps = EmbeddingCaps(max_inputs=2048, max_tokens=300_000)
    """Per-request caps for ``embed``, OpenAI's by default (set it to try others)."""

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingResponse:
        """Deterministic vectors (:func:`echo_vector`, 8 dimensions unless asked), no network.

        Counts as a call (``call_count``); waits ``latency``; a scripted
        :class:`ErrorResponse` next in the queue is raised, as for ``complete``.
        """
        self._call_count += 1
        if self._queue and isinstance(first := self._queue[0], ErrorResponse):
            self._queue.popleft()
            raise first.exception
        if self.latency:
            await anyio.sleep(self.latency)
        else:
            await anyio.lowlevel.checkpoint()
        size = dimensions or ECHO_DIMENSIONS
        tokens = sum(len(text) // 4 + 1 for text in texts)
        return EmbeddingResponse(
            [echo_vector(text, size) for text in texts],
            model=model or self.model,
            usage={"prompt_tokens": tokens, "total_tokens": tokens},
        )

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        """Answer one call (see the class docstring for the order of sources)."""
        messages = to_messages(messages, "EchoProvider")
        self._call_count += 1
        if self._record_calls:
            self._calls.append(EchoCall(messages, config_overrides))
        scripted = self._next_scripted()
        if self.latency:
            await anyio.sleep(self.latency)
        else:
            await anyio.lowlevel.checkpoint()  # a real provider always yields once at least
        model = str((config_overrides or {}).get("model", self.model))
        if scripted is None:
            if self._response_fn is not None:
                scripted = self._response_fn(messages)
                if inspect.isawaitable(scripted):
                    scripted = await scripted
            elif self.strict:
                raise ResponseQueueExhausted(
                    f"EchoProvider(strict=True) got call #{self._call_count} with no scripted "
                    "response left; add one with add_response() or set_responses()"
                )
            else:
                scripted = "Echo: " + _last_user_text(messages)
        if isinstance(scripted, ErrorResponse):
            raise scripted.exception
        if isinstance(scripted, LLMResponse):
            response = scripted
        else:
            content = str(scripted)
            prompt = sum(_tokens(m.text) for m in messages)
            completion = _tokens(content)
            response = LLMResponse(
                content,
                model=model,
                finish_reason="stop",
                usage={
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            )
        on_text = config_overrides.get("on_text") if config_overrides else None
        if on_text is not None:  # as a streaming provider would: the answer word by word
            for piece in re.findall(r"\S*\s*", response.content):
                if piece:
                    outcome = on_text(piece)
                    if inspect.isawaitable(outcome):
                        await outcome
        return response


ECHO_DIMENSIONS = 8


_ECHO_FLOATS = tuple((b - 128) / 128 for b in range(256))  # exact in float32 too


def echo_vector(text: str, dimensions: int = ECHO_DIMENSIONS) -> list[float]:
    """The echo provider's vector for ``text``: the same text, the same vector, anywhere.

    Floats in [-1, 1) from the text's BLAKE2b digest (repeated for long vectors), each
    ``(byte - 128) / 128``: exact as a float32 too.
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=64).digest()
    raw = digest if dimensions <= 64 else digest * (dimensions // 64 + 1)
    return list(map(_ECHO_FLOATS.__getitem__, raw[:dimensions]))


def _check_scripted(item: object) -> None:
    if not isinstance(item, LLMResponse | str | ErrorResponse):
        raise TypeError(
            f"EchoProvider script items are LLMResponse, str or ErrorResponse, "
            f"not {type(item).__name__}"
        )


def _last_user_text(messages: Sequence[LLMMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return messages[-1].text if messages else ""
