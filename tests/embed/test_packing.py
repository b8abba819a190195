"""Packing inputs into requests: never over the caps, in order, in the fewest requests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import EmbeddingCaps
from llmfanout._core._packing import Packer, estimate_tokens

lengths = st.lists(st.integers(0, 400), max_size=60)
caps = st.builds(
    EmbeddingCaps,
    max_inputs=st.integers(1, 12),
    max_tokens=st.none() | st.integers(1, 300),
)


def fewest(tokens: list[int], cap: EmbeddingCaps) -> int:
    """The fewest in-order requests under the caps, by dynamic programming (the oracle)."""
    best = [0] + [math.inf] * len(tokens)
    for end in range(1, len(tokens) + 1):
        total = 0
        for start in range(end - 1, -1, -1):
            total += tokens[start]
            count = end - start
            alone = count == 1
            if count > cap.max_inputs or (
                cap.max_tokens is not None and total > cap.max_tokens and not alone
            ):
                break
            best[end] = min(best[end], best[start] + 1)
    return int(best[-1])


@given(lengths, caps)
def test_packing_never_exceeds_the_caps_and_keeps_order(
    sizes: list[int], cap: EmbeddingCaps
) -> None:
    texts = ["x" * n for n in sizes]
    batches = list(Packer(enumerate(texts), cap))
    assert [key for batch in batches for key in batch.keys] == list(range(len(texts)))
    for batch in batches:
        assert 1 <= len(batch) == len(batch.texts) <= cap.max_inputs
        assert batch.tokens == sum(estimate_tokens(text) for text in batch.texts)
        if cap.max_tokens is not None and len(batch) > 1:
            assert batch.tokens <= cap.max_tokens
        assert batch.texts == [texts[key] for key in batch.keys]


@given(lengths, caps)
def test_packing_sends_the_fewest_requests(sizes: list[int], cap: EmbeddingCaps) -> None:
    texts = ["x" * n for n in sizes]
    packed = sum(1 for _ in Packer(enumerate(texts), cap))
    assert packed == fewest([estimate_tokens(t) for t in texts], cap)


def test_shrinking_keeps_later_requests_under_the_refused_one() -> None:
    packer = Packer(((i, "abc") for i in range(100)), EmbeddingCaps(max_inputs=40))
    first = next(packer)
    packer.shrink(first)
    assert [len(b) for b in packer] == [20, 20, 20]
    assert packer.max_tokens == 20


@given(st.lists(st.integers(0, 50), min_size=2, max_size=30))
def test_a_split_batch_keeps_its_inputs_in_order(sizes: list[int]) -> None:
    texts = ["x" * n for n in sizes]
    (batch,) = Packer(enumerate(texts), EmbeddingCaps(max_inputs=len(texts)))
    first, second = Packer(iter(()), EmbeddingCaps(max_inputs=1)).split(batch)
    assert first.keys + second.keys == batch.keys and len(first) == len(texts) // 2
    assert first.texts + second.texts == batch.texts
    assert first.tokens + second.tokens == batch.tokens


def test_caps_are_checked() -> None:
    with pytest.raises(ValueError, match="max_inputs is 0"):
        EmbeddingCaps(max_inputs=0)
    with pytest.raises(ValueError, match="max_tokens is -1"):
        EmbeddingCaps(max_inputs=1, max_tokens=-1)
