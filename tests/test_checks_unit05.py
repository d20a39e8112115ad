"""The unit 05 checkers accept the notebook's solutions and reject the stub, a sign flip, the wrong direction, the
seed's no-op IG hook, swapped clean/corrupted runs and the wrong integration rules (uniform weights, midpoint,
steps + 1 points), each with a message naming it; a leftover hook or an in-place edit of the model's weights fails
and is undone, so the next check still passes."""

from __future__ import annotations

import re

import pytest
import torch

from mechlab.checks import unit05
from mechlab.checks.core import CheckFailed
from mechlab.core.activations import hook_name
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


def ig_heads(model, clean, corrupted, metric, layer, steps, *, swap=False, no_op=False, rule=ig_alphas):
    """The solution; ``swap`` interpolates from corrupted to clean, ``no_op`` is the seed's hook that returns None,
    ``rule(steps)`` gives the (alpha, weight) pairs (the trapezoid's ``ig_alphas`` in the solution)."""
    name = f"blocks.{layer}.attn.hook_z"
    start, end = (corrupted, clean) if swap else (clean, corrupted)
    z0, z1 = _z(model, start, name), _z(model, end, name)
    batch = clean.shape[0]
    points = rule(steps)
    steps = len(points)
    alphas = torch.tensor([a for a, _ in points])
    weights = torch.tensor([w for _, w in points])
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


def uniform_weights(n):
    return [(a, 1 / n) for a, _ in ig_alphas(n)]


def midpoint(n):
    return [((k + 0.5) / n, 1 / n) for k in range(n)]


def one_more_point(n):
    return ig_alphas(n + 1)


@pytest.mark.parametrize("rule, named", [(uniform_weights, "uniform weights"), (midpoint, "the midpoint rule"),
                                         (one_more_point, "steps . 1 points")])
def test_ig_checker_names_the_integration_rule(rule, named):
    with pytest.raises(CheckFailed) as info:
        unit05.check_ig_heads(lambda *a: ig_heads(*a, rule=rule))
    text = str(info.value)
    assert "strongly curved metric" in text
    assert re.search(f"matches this mistake: {named}", text), text


def test_sign_flip_and_direction_swap_get_different_names():
    with pytest.raises(CheckFailed, match="matches this mistake: the sign is flipped"):
        unit05.check_atp_heads(lambda *a: atp_heads(*a, sign=-1.0))
    with pytest.raises(CheckFailed, match="matches this mistake: noising and denoising are swapped"):
        unit05.check_atp_heads(lambda m, c, r, f, layer, d: atp_heads(m, c, r, f, layer, OTHER[d]))
    with pytest.raises(CheckFailed, match="matches this mistake: the sign is flipped"):
        unit05.check_ig_heads(lambda *a: -ig_heads(*a))
    with pytest.raises(CheckFailed, match="matches this mistake: noising and denoising are swapped"):
        unit05.check_ig_heads(lambda m, c, r, f, layer, steps: ig_heads(m, r, c, f, layer, steps))  # denoising


OTHER = {"noising": "denoising", "denoising": "noising"}


def test_ig_checker_names_the_no_op_hook():
    with pytest.raises(CheckFailed, match="never reaches the model"):
        unit05.check_ig_heads(lambda *a: ig_heads(*a, no_op=True))


def test_leftover_hook_is_reported_and_does_not_poison_the_next_check():
    def leaves_a_hook(model, clean, corrupted, metric, layer, direction):
        out = atp_heads(model, clean, corrupted, metric, layer, direction)
        model.add_hook(hook_name("z", layer), lambda z, hook: torch.zeros_like(z))
        return out

    with pytest.raises(CheckFailed, match="you left a hook .*with model.hooks"):
        unit05.check_atp_heads(leaves_a_hook)
    unit05.check_atp_heads(atp_heads)


def test_centring_w_o_in_place_on_the_model_is_caught_and_undone():
    def centres_w_o(model, clean, corrupted, metric, layer, direction):
        with torch.no_grad():
            W_O = model.blocks[layer].attn.W_O
            W_O -= W_O.mean(-1, keepdim=True)
        return atp_heads(model, clean, corrupted, metric, layer, direction)

    with pytest.raises(CheckFailed, match="modified argument `model`'s weight .* in place; it must not modify"):
        unit05.check_atp_heads(centres_w_o)
    unit05.check_atp_heads(atp_heads)


def test_checks_run_with_gradients_even_when_the_notebook_turned_them_off():
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        unit05.check_atp_heads(atp_heads)
    finally:
        torch.set_grad_enabled(previous)
