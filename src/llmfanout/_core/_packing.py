"""Packing texts into embedding requests under per-request caps: pure code, no I/O.

Many inputs go into one request, up to the provider's caps: a count (OpenAI 2048, Gemini
100) and a sum of tokens (OpenAI 300,000). :class:`Packer` takes the inputs in order
and closes a request when the next input would pass either cap, which for inputs kept in
order is the fewest requests the caps allow (greedy is optimal in one dimension). An
input larger than the token cap alone goes in a request by itself: the server decides.
The caps may be lowered while packing (:meth:`Packer.shrink`), when a server refuses a
request as too large: later requests then stay under what it refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .._base._embeddings import EmbeddingCaps

K = TypeVar("K")

TokenEstimator = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """A quick estimate of a text's tokens: about four characters each, at least one."""
    return len(text) // 4 + 1


class Batch(Generic[K]):
    """One request's inputs, in order: the caller's ``keys`` and the ``texts``, with
    their estimated ``tokens`` in all. Two lists per request, no object per input."""

    __slots__ = ("keys", "texts", "tokens")

    def __init__(self, keys: list[K], texts: list[str], tokens: int) -> None:
        self.keys = keys
        self.texts = texts
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"Batch({len(self.keys)} inputs, {self.tokens} tokens)"


class Packer(Generic[K]):
    """Iterates over requests (:class:`Batch`) packed from ``(key, text)`` pairs.

    Lazy: it reads the next input only when it packs the next request, so memory holds
    one request's inputs at a time, whatever the input's length.
    """

    def __init__(
        self,
        inputs: Iterable[tuple[K, str]],
        caps: EmbeddingCaps,
        estimate: TokenEstimator = estimate_tokens,
    ) -> None:
        self._inputs = iter(inputs)
        self.max_inputs = caps.max_inputs
        self.max_tokens = caps.max_tokens
        self._estimate = estimate
        self._next: tuple[K, str, int] | None = None  # read, not packed yet (it did not fit)
        self.items = 0  # inputs read so far
        self.requests = 0  # requests packed so far

    def __iter__(self) -> Iterator[Batch[K]]:
        return self

    def __next__(self) -> Batch[K]:
        keys: list[K] = []
        texts: list[str] = []
        tokens = 0
        max_inputs, max_tokens = self.max_inputs, self.max_tokens
        inputs, estimate = self._inputs, self._estimate
        read = 0
        while len(keys) < max_inputs:
            if self._next is not None:
                key, text, size = self._next
                self._next = None
            else:
                pair = next(inputs, None)
                if pair is None:
                    break
                key, text = pair
                size = estimate(text)
                read += 1
            if keys and max_tokens is not None and tokens + size > max_tokens:
                self._next = (key, text, size)
                break
            keys.append(key)
            texts.append(text)
            tokens += size
        self.items += read
        if not keys:
            raise StopIteration
        self.requests += 1
        return Batch(keys, texts, tokens)

    def split(self, batch: Batch[K]) -> tuple[Batch[K], Batch[K]]:
        """``batch`` in halves, in order (a request refused as too large is sent so)."""
        half = len(batch) // 2
        parts = []
        for keys, texts in (
            (batch.keys[:half], batch.texts[:half]),
            (batch.keys[half:], batch.texts[half:]),
        ):
            parts.append(Batch(keys, texts, sum(map(self._estimate, texts))))
        return parts[0], parts[1]

    def shrink(self, refused: Batch[K]) -> None:
        """Keep later requests smaller than ``refused``, which the server refused as too large."""
        if len(refused) < 2:
            return
        tokens = refused.tokens
        # Which cap the server holds is unknown: halve both the count and the size, as the
        # refused request is split in halves, so a few refusals find the server's cap.
        self.max_inputs = max(1, min(self.max_inputs, len(refused) // 2))
        self.max_tokens = max(1, min(self.max_tokens or tokens, tokens // 2))
