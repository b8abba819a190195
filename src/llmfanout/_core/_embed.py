"""Embedding many texts: packed into few requests, sent concurrently, one vector per input.

:func:`embed_items` is the engine (the ``llmfanout embed`` command runs on it): it packs
``(key, text)`` pairs into requests under the provider's caps (:mod:`._packing`), keeps
``max_concurrency`` requests in flight, waits for the limiter with each request's
estimated tokens (so a ``RateLimit(tokens_per_minute=...)`` paces by tokens), retries
under a :class:`~llmfanout.RetryConfig`, and splits a request the server refuses as too
large (413, or a 400 that says so) in halves, lowering the caps for the requests after
it. Each request's vectors are handed to ``deliver`` with their keys, in input order
within the request. :func:`aembed` and :func:`embed` are the library's face: texts in,
an :class:`EmbeddingResult` with vectors in input order out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import attrs

from .._base._embeddings import AsyncEmbeddingProvider, EmbeddingCaps, EmbeddingResponse
from .._base._prices import CostTally, Price, check_prices
from .._flow._limiter import Limiter, check_limiter
from ..errors import ResponseFormatError
from ._attempt import TimeLimit, shared_cooldown
from ._outcome import Failed
from ._packing import Batch, Packer, TokenEstimator, estimate_tokens
from ._retry import BackoffStrategy, RetryConfig, retrying
from ._sync import run_sync

K = TypeVar("K")

DEFAULT_EMBED_RETRY = RetryConfig(max_attempts=5, backoff_strategy=BackoffStrategy.JITTER)

_TOO_LARGE = re.compile(
    r"too (many|large|long)|at most|tokens? per request|max(imum)?[^.;]*(tokens|inputs)|"
    r"payload|request entity",
    re.IGNORECASE,
)


def is_too_large(exc: Exception) -> bool:
    """Whether the server refused a request for its size (413, or a 400 saying so)."""
    status = getattr(exc, "status_code", None)
    if status == 413:
        return True
    if status != 400:
        return False
    said = f"{getattr(exc, 'error_message', None) or ''} {getattr(exc, 'error_type', None) or ''}"
    return bool(_TOO_LARGE.search(said))


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"EmbeddingTask: texts is a {type(value).__name__}; give a list of strings")
    texts = tuple(value)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"EmbeddingTask: texts[{index}] is a {type(text).__name__}, not a str")
        if not text:
            raise ValueError(
                f"EmbeddingTask: texts[{index}] is empty; providers refuse empty inputs"
            )
    return texts


def _dimensions(instance: object, attribute: object, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"EmbeddingTask: dimensions is {value!r}; give a whole number >= 1")


@attrs.frozen
class EmbeddingTask:
    """Texts to embed: ``EmbeddingTask(texts, model=None, dimensions=None)``.

    ``model`` overrides the provider's; ``dimensions`` asks for shorter vectors where the
    model allows it (OpenAI's ``dimensions``, Gemini's ``outputDimensionality``). Raises
    ``TypeError``/``ValueError`` naming the index of a text that is not a non-empty str.
    """

    texts: tuple[str, ...] = attrs.field(converter=_texts)
    model: str | None = attrs.field(default=None, kw_only=True)
    dimensions: int | None = attrs.field(default=None, kw_only=True, validator=_dimensions)


@attrs.frozen
class EmbeddingResult:
    """The vectors of an :class:`EmbeddingTask`, one per text, in the texts' order.

    ``vectors[i]`` is None where ``errors[i]`` says why that text has none. ``usage``
    sums what the provider reported; ``requests`` counts the requests that succeeded.
    With ``prices``, ``cost_usd`` is what they cost (input tokens at the model's
    ``input`` price) and ``unpriced`` counts, by model, the requests left out of it (no
    price for the model, or no usage reported); without, ``cost_usd`` is None.
    """

    vectors: tuple[Sequence[float] | None, ...]
    errors: tuple[Exception | None, ...]
    usage: Mapping[str, int]
    requests: int
    model: str = ""
    cost_usd: float | None = None
    unpriced: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def success(self) -> bool:
        """Whether every text has its vector."""
        return all(error is None for error in self.errors)


Deliver = Callable[[Batch[K], EmbeddingResponse | None, Exception | None], Any]
"""Called once per finished request: its batch (keys, texts) and the response, or the error."""


class _Run(Generic[K]):
    """One run of :func:`embed_items`: the packer, the attempts, the deliveries."""

    def __init__(
        self,
        provider: AsyncEmbeddingProvider,
        packer: Packer[K],
        deliver: Deliver[K],
        *,
        model: str | None,
        dimensions: int | None,
        retry: RetryConfig,
        limiter: Limiter | None,
        timeout: float | None,
    ) -> None:
        # Alike in shape only (errors.ProviderError): a constructor keeping its arguments.
        self.provider = provider
        self.packer = packer
        self.deliver = deliver
        self.model = model
        self.dimensions = dimensions
        self.retry = retry
        self.limiter = limiter
        self.timeout = timeout
        self.sent = 0  # requests that succeeded
        self.split = 0  # requests refused as too large, and split

    async def worker(self) -> None:
        for batch in self.packer:  # next() runs without a checkpoint: one worker at a time
            await self.send(batch)

    async def send(self, batch: Batch[K]) -> None:
        outcome = await retrying(self.retry, partial(self.attempt, batch))
        if isinstance(outcome, Failed):
            error = outcome.error
            if len(batch) > 1 and is_too_large(error):
                self.split += 1
                self.packer.shrink(batch)
                first, second = self.packer.split(batch)
                await self.send(first)
                await self.send(second)
                return
            await self._deliver(batch, None, error)
            return
        response: EmbeddingResponse = outcome.value
        if len(response.vectors) != len(batch):
            problem = ResponseFormatError(
                f"the provider sent {len(response.vectors)} vectors for {len(batch)} inputs; "
                "none is used, as which belongs to which cannot be told"
            )
            await self._deliver(batch, None, problem)
            return
        self.sent += 1
        await self._deliver(batch, response, None)

    async def _deliver(
        self, batch: Batch[K], response: EmbeddingResponse | None, error: Exception | None
    ) -> None:
        outcome = self.deliver(batch, response, error)
        if outcome is not None and hasattr(outcome, "__await__"):
            await outcome

    async def attempt(self, batch: Batch[K]) -> EmbeddingResponse:
        call = partial(
            self.provider.embed, batch.texts, model=self.model, dimensions=self.dimensions
        )
        limiter = self.limiter
        if limiter is None:
            return await self._call(call)
        tokens = batch.tokens
        await limiter.acquire(tokens)
        used: int | None = None
        try:
            response = await self._call(call)
            usage = response.usage or {}
            used = usage.get("total_tokens", usage.get("prompt_tokens"))
            return response
        except Exception as exc:
            cooldown = shared_cooldown(exc, self.retry)
            if cooldown is not None:
                limiter.cooldown(cooldown)
            raise
        finally:  # a cancelled call is settled too: the limiter keeps its estimate
            limiter.settle(tokens, used)

    async def _call(self, call: Callable[[], Any]) -> EmbeddingResponse:
        if self.timeout is None:
            response = await call()
        else:
            with TimeLimit(self.timeout, "embedding"):
                response = await call()
        if not isinstance(response, EmbeddingResponse):
            raise ResponseFormatError(
                f"embed() returned a {type(response).__name__}, not an EmbeddingResponse"
            )
        return response


def _caps(provider: object, max_inputs: int | None, max_tokens: int | None) -> EmbeddingCaps:
    given = getattr(provider, "embedding_caps", None)
    if given is not None and not isinstance(given, EmbeddingCaps):
        raise TypeError(
            f"{type(provider).__name__}.embedding_caps is a {type(given).__name__}, "
            "not an EmbeddingCaps"
        )
    base = given or EmbeddingCaps(max_inputs=100)
    return EmbeddingCaps(
        max_inputs=max_inputs or base.max_inputs,
        max_tokens=max_tokens if max_tokens is not None else base.max_tokens,
    )


def _check_provider(provider: object, owner: str) -> AsyncEmbeddingProvider:
    if not callable(getattr(provider, "embed", None)):
        raise TypeError(
            f"{owner}: {type(provider).__name__} has no embed() method; give OpenAIProvider, "
            "GeminiProvider, EchoProvider, or anything with an async embed(texts)"
        )
    return provider  # type: ignore[return-value]


async def embed_items(
    provider: AsyncEmbeddingProvider,
    inputs: Iterable[tuple[K, str]],
    deliver: Deliver[K],
    *,
    model: str | None = None,
    dimensions: int | None = None,
    max_concurrency: int = 8,
    max_inputs: int | None = None,
    max_tokens: int | None = None,
    limiter: Limiter | None = None,
    retry: RetryConfig | None = None,
    timeout: float | None = None,  # noqa: ASYNC109  (per request, not for the whole)
    estimate: TokenEstimator = estimate_tokens,
) -> tuple[int, int]:
    """Embed ``(key, text)`` pairs; call ``deliver(items, response, error)`` per request.

    Returns ``(requests that succeeded, requests split as too large)``. ``inputs`` is read
    lazily, so memory holds ``max_concurrency`` requests, whatever its length. Caps
    default to the provider's ``embedding_caps``. Cancellation stops every request in
    flight and propagates.
    """
    provider = _check_provider(provider, "embed")
    packer = Packer(inputs, _caps(provider, max_inputs, max_tokens), estimate)
    run = _Run(
        provider,
        packer,
        deliver,
        model=model,
        dimensions=dimensions,
        retry=retry or DEFAULT_EMBED_RETRY,
        limiter=check_limiter(limiter, "embed"),
        timeout=timeout,
    )
    async with anyio.create_task_group() as tg:
        for _ in range(max_concurrency):
            tg.start_soon(run.worker)
    return run.sent, run.split


# Alike in shape only (embed_items): aembed's public signature is written out whole for help().
async def aembed(
    provider: AsyncEmbeddingProvider,
    task: EmbeddingTask | Sequence[str],
    *,
    max_concurrency: int = 8,
    max_inputs: int | None = None,
    max_tokens: int | None = None,
    rate_limit: Limiter | None = None,
    retry: RetryConfig | None = None,
    timeout: float | None = None,  # noqa: ASYNC109  (per request, not for the whole)
    prices: Mapping[str, Price | Mapping[str, float]] | None = None,
) -> EmbeddingResult:
    """Embed every text of ``task`` (or a list of texts); the vectors in input order.

    Texts are packed into as few requests as the caps allow (``max_inputs`` texts and
    ``max_tokens`` estimated tokens per request; the provider's ``embedding_caps`` by
    default), ``max_concurrency`` requests in flight, each retried under ``retry``
    (default: 5 attempts with jittered backoff) and paced by ``rate_limit`` (a
    ``RateLimit(tokens_per_minute=...)`` paces by tokens). A request refused as too large
    is split. A text whose request failed for good has ``vectors[i]`` None and its error
    in ``errors[i]``; nothing raises for it. ``prices`` (a table as :func:`summarize`
    takes, checked before anything is sent) gives the result's ``cost_usd``.
    Cancellation propagates.
    """
    if not isinstance(task, EmbeddingTask):
        task = EmbeddingTask(task)
    cost = None if prices is None else CostTally(check_prices(prices, "aembed"))
    count = len(task.texts)
    vectors: list[Sequence[float] | None] = [None] * count
    errors: list[Exception | None] = [None] * count
    usage: dict[str, int] = {}
    models: list[str] = []

    def deliver(
        batch: Batch[int], response: EmbeddingResponse | None, error: Exception | None
    ) -> None:
        if response is None:
            for key in batch.keys:
                errors[key] = error
            return
        for key, vector in zip(batch.keys, response.vectors, strict=True):
            vectors[key] = vector
        for name, value in (response.usage or {}).items():
            usage[name] = usage.get(name, 0) + value
        if response.model and not models:
            models.append(response.model)
        if cost is not None:
            cost.add(response.model or task.model or "", response.usage)

    # Alike in shape only: arguments passed on by keyword.
    sent, _ = await embed_items(
        provider,
        enumerate(task.texts),
        deliver,
        model=task.model,
        dimensions=task.dimensions,
        max_concurrency=max_concurrency,
        max_inputs=max_inputs,
        max_tokens=max_tokens,
        limiter=rate_limit,
        retry=retry,
        timeout=timeout,
    )
    return EmbeddingResult(
        tuple(vectors),
        tuple(errors),
        usage,
        sent,
        models[0] if models else task.model or "",
        cost_usd=None if cost is None else cost.total,
        unpriced={} if cost is None else dict(cost.unpriced),
    )


def embed(
    provider: AsyncEmbeddingProvider,
    task: EmbeddingTask | Sequence[str],
    *,
    backend: str = "asyncio",
    **options: Any,
) -> EmbeddingResult:
    """:func:`aembed` from synchronous code (an event loop of ``backend`` of its own).

    A provider's connections (its per-loop pool) are closed as that loop ends. Called
    where a loop already runs (a notebook), it runs on a thread of its own. Raises
    ``ValueError`` for an unknown ``backend``, ``ImportError`` naming the extra when it
    is ``"trio"`` and trio is not installed.
    """
    return run_sync(
        partial(aembed, provider, task, **options), backend=backend, owner="embed", close=provider
    )
