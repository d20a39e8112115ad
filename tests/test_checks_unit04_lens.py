"""Unit 04's logit-lens checkers (appended to mechlab.checks.unit04): the reference passes, the stub fails, each named
wrong version fails naming its mistake, and the references agree with mechlab.methods.logit_lens on a model."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit04
from mechlab.checks.core import CheckFailed
from mechlab.core.activations import FINAL_NORM_SCALE
from mechlab.methods.logit_lens import layer_decomposition, lens_cache_names, logit_lens


def stub(*args):
    raise NotImplementedError("write this function")


def lens_no_centring(resid, w, b, W_U, b_U, eps):
    return (resid / (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b) @ W_U + b_U


def lens_last_scale(resid, w, b, W_U, b_U, eps):
    centred = resid - resid.mean(-1, keepdim=True)
    return (centred / (centred[-1:].pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b) @ W_U + b_U


def lens_torch(resid, w, b, W_U, b_U, eps):
    return torch.nn.functional.layer_norm(resid, resid.shape[-1:], w, b, eps=eps) @ W_U + b_U


def test_lens_checker():
    unit04.check_logit_lens(unit04.logit_lens_by_hand)
    unit04.check_logit_lens(lens_torch)
    with pytest.raises(CheckFailed, match="not implemented"):
        unit04.check_logit_lens(stub)
    with pytest.raises(CheckFailed, match="no centring"):
        unit04.check_logit_lens(lens_no_centring)
    with pytest.raises(CheckFailed, match="last stream's scale"):
        unit04.check_logit_lens(lens_last_scale)
    with pytest.raises(CheckFailed, match="no norm at all"):
        unit04.check_logit_lens(lambda resid, w, b, W_U, b_U, eps: resid @ W_U + b_U)
    with pytest.raises(CheckFailed, match="weight and bias left out"):
        unit04.check_logit_lens(lambda resid, w, b, W_U, b_U, eps: lens_torch(resid, None, None, W_U, b_U, eps))


def contributions_no_scale(outputs, direction, w, scale):
    return unit04.layer_contributions(outputs, direction, w, torch.ones_like(scale))


def contributions_no_weight(outputs, direction, w, scale):
    return unit04.layer_contributions(outputs, direction, torch.ones_like(w), scale)


def test_layer_contributions_checker():
    unit04.check_layer_contributions(unit04.layer_contributions)
    with pytest.raises(CheckFailed, match="not implemented"):
        unit04.check_layer_contributions(stub)
    with pytest.raises(CheckFailed, match="frozen scale left out"):
        unit04.check_layer_contributions(contributions_no_scale)
    with pytest.raises(CheckFailed, match="norm weight not folded"):
        unit04.check_layer_contributions(contributions_no_weight)
    with pytest.raises(CheckFailed, match="no centring"):
        unit04.check_layer_contributions(lambda o, d, w, scale: torch.einsum("cbm,bm->cb", o / scale * w, d))


def test_references_agree_with_the_library(noisy_gpt2):
    """On random norm weights and biases and b_O, so that a norm or bias dropped on either side shows."""
    model = noisy_gpt2
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(0))
    names = lens_cache_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    resid = torch.stack([cache[f"blocks.{layer}.hook_resid_pre"][:, -1] for layer in range(model.cfg.n_layers)]
                        + [cache["ln_final.hook_in"][:, -1]])
    got = unit04.logit_lens_by_hand(resid, model.ln_final.weight.detach(), model.ln_final.bias.detach(),
                                    model.W_U.detach(), model.b_U.detach(), model.cfg.eps)
    torch.testing.assert_close(got, logit_lens(model, tokens, cache=cache).values, atol=1e-4, rtol=1e-4)
    good, bad = torch.tensor([3, 4]), torch.tensor([5, 6])
    outputs = torch.stack([cache["hook_embed"][:, -1], cache["hook_pos_embed"][:, -1]] + [
        cache[f"blocks.{layer}.hook_{k}_out"][:, -1] for layer in range(model.cfg.n_layers) for k in ("attn", "mlp")])
    direction = (model.W_U[:, good] - model.W_U[:, bad]).T.detach()
    mine = unit04.layer_contributions(outputs, direction, model.ln_final.weight.detach(),
                                      cache[FINAL_NORM_SCALE][:, -1])
    dec = layer_decomposition(model, tokens, good, bad, cache=cache)
    torch.testing.assert_close(mine, dec.values[:-1], atol=1e-4, rtol=1e-4)
