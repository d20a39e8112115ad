"""The self-repair sweep's two paths agree: resumed at the ablated layer with target logits read through
``W_U[:, target]`` (the default), and full forward passes with the full unembedding (the fallback for a model whose
blocks cannot be resumed), on both tiny families."""

from __future__ import annotations

import torch

import mechlab.methods.self_repair as self_repair
from mechlab.core.runs import Resume, cache_resume, unembed_logits
from mechlab.methods.self_repair import PARTS, self_repair_sweep


def test_resumed_sweep_equals_full_forward_fallback(tiny_model, monkeypatch):
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, tiny_model.cfg.d_vocab, (2, 9), generator=g)
    corrupted = torch.randint(0, tiny_model.cfg.d_vocab, (2, 9), generator=g)
    heads = ["L1H0", "L0H2", ["L0H1", "L1H3"]]  # out of layer order: results come back in the order asked
    fast = self_repair_sweep(tiny_model, clean, corrupted, heads=heads, keep_components=True, max_batch=4,
                             progress=False)

    def not_resumable(*args, **kwargs):
        resume, cache, values = cache_resume(*args, **kwargs)
        return Resume(resume.tokens, resume.resid, resume.block_kwargs, exact=False), cache, values

    monkeypatch.setattr(self_repair, "cache_resume", not_resumable)
    # and target logits that W_U[:, target] + b_U does not reproduce (as under a soft cap): the sweep must then read
    # every run through the full unembedding
    read_direct = self_repair._Readout.logits
    monkeypatch.setattr(self_repair._Readout, "logits", lambda self, normed, copies=1: read_direct(self, normed, copies)
                        + 1.0)
    unembeds = []

    def counted(model, normed):
        unembeds.append(normed.shape[0])
        return unembed_logits(model, normed)

    monkeypatch.setattr(self_repair, "unembed_logits", counted)
    slow = self_repair_sweep(tiny_model, clean, corrupted, heads=heads, keep_components=True, max_batch=4,
                             progress=False)
    assert unembeds == [2, 4, 2]  # the clean run, then both ablated passes (3 ablations, 2 copies of 2 per pass)
    assert fast.labels == slow.labels == ["L1H0", "L0H2", "L0H1+L1H3"]
    for part in PARTS:
        torch.testing.assert_close(getattr(fast, part).values, getattr(slow, part).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.components, slow.components, atol=1e-5, rtol=0)
    assert fast.delta_logit.values.abs().amax((1, 2)).min() > 1e-4  # every ablation moved the logits
    # a layer-1 head cannot move a layer-0 component: exactly 0, not merely small (the full pass reads layer 0)
    changes = slow.component_changes("L1H0")
    assert all(float(changes[f"L0H{h}"]) == 0.0 for h in range(tiny_model.cfg.n_heads))
    assert float(changes["L1 mlp"]) != 0.0
