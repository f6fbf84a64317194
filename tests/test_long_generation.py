"""Long generation on numpy: 10,000 tokens through a small context, and what happens when the
context is full (a typed error before any token, the model unharmed)."""

from __future__ import annotations

import numpy as np
import pytest
import shaderbay
from shaderbay.errors import ContextLengthExceeded
from shaderbay.models.synthetic import synthetic_checkpoint

PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def small(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        yield model


def _last_agrees(model, tokens: list[int]) -> None:
    """The last token is the argmax after the whole sequence run again from scratch (a prefill)."""
    ids = PROMPT + tokens[:-1]
    assert int(np.argmax(model.logits(ids))) == tokens[-1]


def test_the_context_fills_exactly(small):
    room = small.max_context - len(PROMPT) + 1  # the last token needs no position of its own
    tokens = list(small.tokens(PROMPT, room, ignore_eos=True))
    assert len(tokens) == room
    _last_agrees(small, tokens)
    over = small.tokens(PROMPT, room + 1, ignore_eos=True)
    with pytest.raises(ContextLengthExceeded, match="context holds 64"):
        next(over)
    with pytest.raises(ContextLengthExceeded):
        small.logits(list(range(small.max_context + 1)))
    assert list(small.tokens(PROMPT, room, ignore_eos=True)) == tokens  # unharmed


def test_ten_thousand_tokens_through_a_small_context(small):
    room = small.max_context - len(PROMPT) + 1
    first = list(small.tokens(PROMPT, room, ignore_eos=True))
    total = len(first)
    while total < 10_000:
        assert list(small.tokens(PROMPT, room, ignore_eos=True)) == first
        total += room


@pytest.mark.slow
def test_ten_thousand_tokens_in_one_generation(numpy_backend):
    long_tiny = synthetic_checkpoint("tiny", "f32", max_position_embeddings=10_016)  # tiny's own: 2048
    with shaderbay.load(long_tiny, backend=numpy_backend, max_context=10_016) as model:
        tokens = list(model.tokens(PROMPT, 10_000, ignore_eos=True))
        assert len(tokens) == 10_000
        _last_agrees(model, tokens)
