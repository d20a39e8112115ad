"""Checkers for unit 04 (direct logit attribution): the logit-difference direction and each head's direct share.

Each runs the learner's function and a reference on small random cases (the final norm's scale differs from
position to position and from prompt to prompt, so a missing scale or a wrong position cannot agree by luck) and
raises :class:`mechlab.checks.core.CheckFailed` naming every failing case and the mistake it recognises::

    from mechlab.checks import unit04
    unit04.check_logit_diff_direction(fn)   # fn(W_U, correct, incorrect) -> [batch, d_model]
    unit04.check_head_dla(fn)               # fn(z, W_O, direction, ln_weight, scale, pos) -> [batch, head]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.checks.core import Case, negated, run_cases


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# 1. the direction a logit difference reads


def logit_diff_direction(
    W_U: Float[Tensor, "d_model d_vocab"], correct: Int[Tensor, " batch"], incorrect: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_model"]:
    """Reference: ``W_U[:, correct] - W_U[:, incorrect]`` per prompt, as rows."""
    return (W_U[:, correct] - W_U[:, incorrect]).T


def check_logit_diff_direction(fn: Callable) -> None:
    """``fn(W_U, correct, incorrect)`` must return, per prompt, the residual-space direction whose dot product
    with the (normalised) final residual is ``logit[correct] - logit[incorrect]``: shape [batch, d_model]."""
    cases = [
        Case("d_model 8, vocab 20, 3 prompts",
             (_randn(8, 20, seed=1), torch.tensor([1, 5, 7]), torch.tensor([2, 3, 19]))),
        Case("one prompt", (_randn(16, 50, seed=2), torch.tensor([42]), torch.tensor([0]))),
        Case("same wrong token for every prompt", (_randn(4, 10, seed=3), torch.tensor([1, 2]), torch.tensor([9, 9]))),
    ]
    mistakes = {"the sign is flipped: W_U[:, incorrect] - W_U[:, correct]": negated(logit_diff_direction),
                "transposed: [d_model, batch] instead of one row per prompt":
                    lambda W_U, c, i: W_U[:, c] - W_U[:, i]}
    run_cases(fn, logit_diff_direction, cases, name="check_logit_diff_direction", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# 2. each head's direct contribution


def head_dla(
    z: Float[Tensor, "batch pos head d_head"],
    W_O: Float[Tensor, "head d_head d_model"],
    direction: Float[Tensor, "batch d_model"],
    ln_weight: Float[Tensor, " d_model"],
    scale: Float[Tensor, "batch pos 1"],
    pos: int,
) -> Float[Tensor, "batch head"]:
    """Reference: each head's output at ``pos``, centred (LayerNorm), divided by the frozen scale at ``pos``,
    times the norm weight, dotted with the direction."""
    out = torch.einsum("bhd,hdm->bhm", z[:, pos], W_O)
    out = out - out.mean(-1, keepdim=True)
    out = out / scale[:, pos, None]  # [batch, 1, 1]: one scale per prompt at this position
    return torch.einsum("bhm,bm->bh", out * ln_weight, direction)


def _head_cases() -> list[Case]:
    cases = []
    for name, (b, p, h, dh, dm, pos, seed) in {
        "batch 3, 5 positions, 4 heads, read at the last position": (3, 5, 4, 8, 16, -1, 1),
        "read in the middle (position 2)": (2, 6, 3, 4, 12, 2, 2),
        "read at position 0": (2, 4, 2, 4, 8, 0, 3),
    }.items():
        z, w_o = _randn(b, p, h, dh, seed=seed), _randn(h, dh, dm, seed=seed + 10) / dh ** 0.5
        direction, weight = _randn(b, dm, seed=seed + 20), 1 + 0.5 * _randn(dm, seed=seed + 30)
        scale = 0.5 + torch.rand(b, p, 1, generator=torch.Generator().manual_seed(seed + 40)) * 3
        cases.append(Case(name, (z, w_o, direction, weight, scale, pos)))
    # a head output with a large mean: without the LayerNorm's centring the answer moves a lot
    z, w_o = _randn(2, 3, 2, 4, seed=7), _randn(2, 4, 8, seed=8) + 2.0
    cases.append(Case("head outputs with a large mean (centring matters)",
                       (z, w_o, _randn(2, 8, seed=9), torch.ones(8), 1 + torch.rand(2, 3, 1), 1)))
    return cases


def check_head_dla(fn: Callable) -> None:
    """``fn(z, W_O, direction, ln_weight, scale, pos)`` must return each head's direct contribution to the logit
    difference at position ``pos``: [batch, head]. ``z`` is one layer's ``hook_z`` [batch, pos, head, d_head],
    ``W_O`` that layer's [head, d_head, d_model], ``direction`` from exercise 1, ``ln_weight`` the final
    LayerNorm's weight and ``scale`` its ``hook_scale`` [batch, pos, 1] (frozen: read from the cache)."""
    mistakes = {
        "the sign is flipped": negated(head_dla),
        "the final norm's scale is missing (divide by scale[:, pos])":
            lambda z, W_O, d, w, scale, pos: head_dla(z, W_O, d, w, torch.ones_like(scale), pos),
        "no centring: a LayerNorm subtracts the mean over d_model first":
            lambda z, W_O, d, w, scale, pos: torch.einsum("bhm,bm->bh", torch.einsum(
                "bhd,hdm->bhm", z[:, pos], W_O) / scale[:, pos, None] * w, d),
        "the norm's weight is missing":
            lambda z, W_O, d, w, scale, pos: head_dla(z, W_O, d, torch.ones_like(w), scale, pos),
        "read at the position before `pos`":
            lambda z, W_O, d, w, scale, pos: head_dla(z, W_O, d, w, scale, (pos - 1) % z.shape[1]),
    }
    run_cases(fn, head_dla, _head_cases(), name="check_head_dla", mistakes=mistakes)


__all__ = ["check_head_dla", "check_logit_diff_direction", "head_dla", "logit_diff_direction"]


# ---------------------------------------------------------------------------------------------------------
# 3. the logit lens by hand (appended with unit 04's logit-lens section)


def logit_lens_by_hand(resid: Float[Tensor, "layer batch d_model"], ln_weight: Float[Tensor, " d_model"],
                       ln_bias: Float[Tensor, " d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                       b_U: Float[Tensor, " d_vocab"], eps: float) -> Float[Tensor, "layer batch d_vocab"]:
    """Reference: each partial stream through the final LayerNorm *with its own scale*, then ``W_U`` and ``b_U``."""
    centred = resid - resid.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (normed * ln_weight + ln_bias) @ W_U + b_U


def _lens_cases() -> list[Case]:
    cases = []
    for name, (layers, b, dm, vocab, seed, offset) in {
        "3 layers, 2 prompts, d_model 8, vocab 12": (3, 2, 8, 12, 1, 0.0),
        "streams with a large mean and growing size (centring and scale matter)": (4, 3, 6, 10, 2, 5.0),
    }.items():
        resid = _randn(layers, b, dm, seed=seed) * torch.arange(1, layers + 1).view(-1, 1, 1) + offset
        cases.append(Case(name, (resid, 1 + 0.3 * _randn(dm, seed=seed + 1), 0.1 * _randn(dm, seed=seed + 2),
                                 _randn(dm, vocab, seed=seed + 3), 0.1 * _randn(vocab, seed=seed + 4), 1e-5)))
    return cases


def _lens_normed(resid: Tensor, eps: float, *, centre: bool = True, own_scale: bool = True) -> Tensor:
    centred = resid - resid.mean(-1, keepdim=True) if centre else resid
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return centred / (scale if own_scale else scale[-1:])


_LENS_MISTAKES = {
    "no norm at all (the raw stream unembedded)": lambda resid, w, b, W_U, b_U, eps: resid @ W_U + b_U,
    "no centring (LayerNorm subtracts the mean first)":
        lambda resid, w, b, W_U, b_U, eps: (_lens_normed(resid, eps, centre=False) * w + b) @ W_U + b_U,
    "the last stream's scale used for every layer (that is the frozen-scale DLA, not the lens)":
        lambda resid, w, b, W_U, b_U, eps: (_lens_normed(resid, eps, own_scale=False) * w + b) @ W_U + b_U,
    "the norm's weight and bias left out": lambda resid, w, b, W_U, b_U, eps: _lens_normed(resid, eps) @ W_U + b_U,
}


def check_logit_lens(fn: Callable) -> None:
    """``fn(resid, ln_weight, ln_bias, W_U, b_U, eps)``: ``resid`` [layer, batch, d_model] holds the stream at one
    position after each layer; return the logits [layer, batch, d_vocab] each would give through the final
    LayerNorm (its own scale) and the unembedding."""
    run_cases(fn, logit_lens_by_hand, _lens_cases(), name="check_logit_lens", mistakes=_LENS_MISTAKES)


# ---------------------------------------------------------------------------------------------------------
# 4. what each layer adds to the logit difference


def layer_contributions(outputs: Float[Tensor, "component batch d_model"], direction: Float[Tensor, "batch d_model"],
                        ln_weight: Float[Tensor, " d_model"], scale: Float[Tensor, "batch 1"]
                        ) -> Float[Tensor, "component batch"]:
    """Reference: each output centred, divided by the frozen final scale, times the norm weight, along the
    logit-difference direction."""
    centred = outputs - outputs.mean(-1, keepdim=True)
    return torch.einsum("cbm,bm->cb", centred / scale * ln_weight, direction)


def check_layer_contributions(fn: Callable) -> None:
    """``fn(outputs, direction, ln_weight, scale)``: ``outputs`` [component, batch, d_model] are what the
    embeddings and each layer's attention and MLP wrote at the answer position, ``direction`` the logit-difference
    direction [batch, d_model], ``scale`` the cached final scale [batch, 1]; return [component, batch]."""
    cases = []
    for name, (c, b, dm, seed) in {"5 components, 3 prompts, d_model 8": (5, 3, 8, 1),
                                   "7 components, 1 prompt": (7, 1, 6, 2)}.items():
        outputs = _randn(c, b, dm, seed=seed) + 2.0  # a mean for the centring to remove
        cases.append(Case(name, (outputs, _randn(b, dm, seed=seed + 1), 1 + 0.3 * _randn(dm, seed=seed + 2),
                                 0.5 + torch.rand(b, 1, generator=torch.Generator().manual_seed(seed + 3)) * 3)))
    run_cases(fn, layer_contributions, cases, name="check_layer_contributions", mistakes={
        "the frozen scale left out": lambda o, d, w, scale: layer_contributions(o, d, w, torch.ones_like(scale)),
        "no centring": lambda o, d, w, scale: torch.einsum("cbm,bm->cb", o / scale * w, d),
        "the norm weight not folded into the direction":
            lambda o, d, w, scale: layer_contributions(o, d, torch.ones_like(w), scale),
    })


__all__ += ["check_layer_contributions", "check_logit_lens", "layer_contributions", "logit_lens_by_hand"]
