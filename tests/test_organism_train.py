"""The organism's training recipe: DropHead zeroes whole heads in training mode, only inside its scope."""

from __future__ import annotations

import pytest
import torch

from mechlab.models.organism.train import TrainConfig, build_model, head_dropout


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    cfg = TrainConfig(n_layer=2, n_embd=32, n_head=4, seq_len=16, attn_pdrop=0.0, resid_pdrop=0.0)
    return build_model(cfg, vocab_size=50, bos=0)


def _head_inputs(model, tokens):
    """What each block's output projection receives: [layer, batch, pos, head, d_head]."""
    seen = []
    hooks = [b.attn.c_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
             for b in model.transformer.h]
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    n = model.config.n_head
    return torch.stack([x.view(*x.shape[:2], n, -1) for x in seen])


def test_drophead_zeroes_whole_heads_and_rescales_the_rest(tiny):
    tokens = torch.randint(1, 50, (64, 16))
    tiny.eval()
    ref = _head_inputs(tiny, tokens)
    tiny.train()
    torch.manual_seed(1)
    with head_dropout(tiny, 0.25):
        dropped = _head_inputs(tiny, tokens)
    # layer 0's heads see the same input, so each (row, head) is either all zero or exactly ref / (1 - p)
    zero = (dropped[0] == 0).all(dim=(1, 3))  # [batch, head]
    kept = torch.isclose(dropped[0], ref[0] / 0.75, atol=1e-6).all(dim=(1, 3))
    assert (zero ^ kept).all()
    assert 0.15 < zero.float().mean() < 0.35
    assert not torch.equal(zero[0], zero[1]) or not torch.equal(zero[2], zero[3])  # drawn per row


def test_drophead_changes_training_forwards_only_and_leaves_no_hook(tiny):
    tokens = torch.randint(1, 50, (8, 16))
    tiny.train()
    base = tiny(tokens).logits
    with head_dropout(tiny, 0.5):
        assert not torch.allclose(tiny(tokens).logits, base)  # the intervention intervenes
        tiny.eval()
        assert torch.allclose(tiny(tokens).logits, base, atol=1e-6)  # eval mode: no dropout
        tiny.train()
    assert all(not b.attn.c_proj._forward_pre_hooks for b in tiny.transformer.h)
    assert torch.allclose(tiny(tokens).logits, base, atol=1e-6)


def test_drophead_refuses_a_bad_probability(tiny):
    with pytest.raises(ValueError, match="head_pdrop"):
        with head_dropout(tiny, 1.0):
            pass
