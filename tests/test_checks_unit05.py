"""The unit 05 checkers accept the notebook's solutions and reject the stub, a sign flip, the wrong direction, the
seed's no-op IG hook and swapped clean/corrupted runs."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit05
from mechlab.checks.core import CheckFailed
from mechlab.methods.attribution import ig_alphas


def _z(model, tokens, name):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name].detach()


def atp_heads(model, clean, corrupted, metric, layer, direction="noising", *, sign=1.0, grad_on=None):
    """The solution (sign=1, grad_on=None); ``sign=-1`` or ``grad_on='clean'`` make the wrong variants."""
    name = f"blocks.{layer}.attn.hook_z"
    base, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    grad_tokens = base if grad_on is None else clean
    target_z = _z(model, target, name)
    base_z = _z(model, base, name)
    store = {}

    def hook(z, hook):
        store["delta"] = torch.zeros_like(z, requires_grad=True)
        return z + store["delta"]

    logits = model.run_with_hooks(grad_tokens, fwd_hooks=[(name, hook)])
    (grad,) = torch.autograd.grad(metric(logits).sum(), store["delta"])  # sum: each prompt's own gradient
    return (sign * (target_z - base_z) * grad).sum(-1).sum(1).mean(0)


def ig_heads(model, clean, corrupted, metric, layer, steps, *, swap=False, no_op=False):
    """The solution; ``swap`` interpolates from corrupted to clean, ``no_op`` is the seed's hook that returns None."""
    name = f"blocks.{layer}.attn.hook_z"
    start, end = (corrupted, clean) if swap else (clean, corrupted)
    z0, z1 = _z(model, start, name), _z(model, end, name)
    batch = clean.shape[0]
    alphas = torch.tensor([a for a, _ in ig_alphas(steps)])
    weights = torch.tensor([w for _, w in ig_alphas(steps)])
    a = alphas.repeat_interleave(batch)[:, None, None, None]
    path = (z0.repeat(steps, 1, 1, 1) + a * (z1 - z0).repeat(steps, 1, 1, 1)).requires_grad_(True)

    def hook(z, hook):
        if no_op:
            z = path  # noqa: F841  (the seed's bug: rebinding the argument changes nothing)
            return None
        return z * 0 + path

    logits = model.run_with_hooks(clean.repeat(steps, 1), fwd_hooks=[(name, hook)])
    values = torch.cat([metric(part) for part in logits.split(batch)])
    (grad,) = torch.autograd.grad(values.sum(), path, allow_unused=True)
    grad = torch.zeros_like(path) if grad is None else grad
    avg = torch.einsum("s,sb...->b...", weights, grad.view(steps, batch, *grad.shape[1:]))
    return ((z1 - z0) * avg).sum(-1).sum(1).mean(0)


def test_atp_checker_accepts_solution():
    unit05.check_atp_heads(atp_heads)


@pytest.mark.parametrize("wrong", [
    lambda *a: (_ for _ in ()).throw(NotImplementedError("stub")),
    lambda *a: atp_heads(*a, sign=-1.0),
    lambda *a: atp_heads(*a, grad_on="clean"),
], ids=["stub", "sign flip", "gradient on the wrong run"])
def test_atp_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit05.check_atp_heads(wrong)


def test_ig_checker_accepts_solution():
    unit05.check_ig_heads(ig_heads)


@pytest.mark.parametrize("wrong", [
    lambda *a: (_ for _ in ()).throw(NotImplementedError("stub")),
    lambda *a: -ig_heads(*a),
    lambda *a: ig_heads(*a, swap=True),
    lambda *a: ig_heads(*a, no_op=True),
    lambda m, c, r, f, layer, steps: atp_heads(m, c, r, f, layer),
], ids=["stub", "sign flip", "clean and corrupted swapped", "no-op hook", "plain AtP"])
def test_ig_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit05.check_ig_heads(wrong)
