"""Embeddings, the vocabulary: what an embedding provider returns, and its per-request caps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs


def _whole(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} is {value!r}; give a whole number >= 1")


def _whole_or_none(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} is {value!r}; give a whole number >= 1, or None")


@attrs.frozen
class EmbeddingCaps:
    """The most one embedding request may carry: ``max_inputs`` texts and ``max_tokens``
    estimated tokens summed over them (None: no cap on tokens)."""

    max_inputs: int = attrs.field(validator=_whole)
    max_tokens: int | None = attrs.field(default=None, validator=_whole_or_none)


def _vectors(value: Iterable[Sequence[float]]) -> tuple[Sequence[float], ...]:
    return tuple(value)


@attrs.frozen
class EmbeddingResponse:
    """What a provider returns for one embedding request: one vector per input, in order.

    Each vector is a sequence of floats: a ``list`` when the server sent JSON numbers, an
    ``array.array('f')`` when it sent base64 (decoded without a float-by-float parse).
    ``usage`` holds ``prompt_tokens`` and ``total_tokens`` where the provider reports them.
    """

    vectors: tuple[Sequence[float], ...] = attrs.field(converter=_vectors)
    model: str = ""
    usage: Mapping[str, int] | None = None


@runtime_checkable
class AsyncEmbeddingProvider(Protocol):
    """Anything with an async ``embed`` method and ``embedding_caps`` embeds texts.

    ``await provider.embed(texts, model=None, dimensions=None)`` returns an
    :class:`EmbeddingResponse` with one vector per text, in order, or raises (a
    :class:`~llmfanout.errors.ProviderError` says whether a retry may help).
    """

    @property
    def embedding_caps(self) -> EmbeddingCaps: ...

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingResponse: ...
