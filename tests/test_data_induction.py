"""Induction data: the second half repeats the first; the halves' slices pick the right targets."""

from __future__ import annotations

import pytest
import torch

from mechlab.data.induction import repeated_tokens


def test_repeated_tokens():
    b = repeated_tokens(5, 7, range(10, 50), seed=1, bos_id=0)
    assert b.tokens.shape == (5, 15) and (b.tokens[:, 0] == 0).all()
    assert torch.equal(b.tokens[:, 1:8], b.tokens[:, 8:])
    assert ((b.tokens[:, 1:] >= 10) & (b.tokens[:, 1:] < 50)).all()
    assert torch.equal(b.tokens, repeated_tokens(5, 7, range(10, 50), seed=1, bos_id=0).tokens)
    # targets predicted at the second-half positions are exactly the repeat
    targets = b.tokens[:, 1:]
    assert torch.equal(targets[:, b.second_half], b.tokens[:, 8:])
    assert torch.equal(targets[:, b.first_half], b.tokens[:, 2:8])
    nob = repeated_tokens(2, 4, range(3), seed=0)
    assert nob.tokens.shape == (2, 8) and nob.second_half == slice(3, 7)
    with pytest.raises(ValueError, match="half_len"):
        repeated_tokens(1, 1, range(10))
