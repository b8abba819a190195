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

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from .._base._embeddings import EmbeddingCaps

K = TypeVar("K")

TokenEstimator = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """A quick estimate of a text's tokens: about four characters each, at least one."""
    return len(text) // 4 + 1


class Item(Generic[K]):
    """One input: the caller's ``key`` for it, its ``text`` and estimated ``tokens``."""

    __slots__ = ("key", "text", "tokens")

    def __init__(self, key: K, text: str, tokens: int) -> None:
        self.key = key
        self.text = text
        self.tokens = tokens


class Packer(Generic[K]):
    """Iterates over requests (lists of :class:`Item`) packed from ``(key, text)`` pairs.

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
        self._next: Item[K] | None = None  # read, not packed yet (it did not fit)
        self.items = 0  # inputs read so far
        self.requests = 0  # requests packed so far

    def __iter__(self) -> Iterator[list[Item[K]]]:
        return self

    def __next__(self) -> list[Item[K]]:
        batch: list[Item[K]] = []
        tokens = 0
        max_inputs, max_tokens = self.max_inputs, self.max_tokens
        while len(batch) < max_inputs:
            item = self._next
            if item is None:
                pair = next(self._inputs, None)
                if pair is None:
                    break
                key, text = pair
                item = Item(key, text, self._estimate(text))
                self.items += 1
            if batch and max_tokens is not None and tokens + item.tokens > max_tokens:
                self._next = item
                break
            self._next = None
            batch.append(item)
            tokens += item.tokens
        if not batch:
            raise StopIteration
        self.requests += 1
        return batch

    def shrink(self, refused: Sequence[Item[K]]) -> None:
        """Keep later requests smaller than ``refused``, which the server refused as too large."""
        if len(refused) < 2:
            return
        tokens = sum(item.tokens for item in refused)
        # Which cap the server holds is unknown: halve both the count and the size, as the
        # refused request is split in halves, so a few refusals find the server's cap.
        self.max_inputs = max(1, min(self.max_inputs, len(refused) // 2))
        self.max_tokens = max(1, min(self.max_tokens or tokens, tokens // 2))
