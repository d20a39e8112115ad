"""Checkers for unit 05 (activation patching and attribution patching), each against mechlab's reference.

The learner writes, for the head outputs ``z`` of one layer:

    atp_heads(model, clean, corrupted, metric, layer, direction)  -> Float[Tensor, "head"]
        AtP estimate per head (summed over positions, mean over prompts) of patching the target run's ``z``
        into the baseline run: noising = corrupted into clean (gradient on the clean run), denoising = clean
        into corrupted (gradient on the corrupted run).
    ig_heads(model, clean, corrupted, metric, layer, steps)       -> Float[Tensor, "head"]
        The same estimate (noising) with integrated gradients: the layer's ``z`` moves from the clean to the
        corrupted value, gradients averaged with the trapezoidal rule (``mechlab.methods.attribution.ig_alphas``).

Each check runs every case on tiny random-init GPT-2-like and Gemma-like models, under ``torch.enable_grad()``, on
the checker's own cached models (hooks cleared before each case, weights watched for in-place edits), and names
the mistake it recognises: a flipped sign, noising and denoising swapped, the gradient on the wrong run and, for
IG, the integration rule (uniform weights, midpoint, steps + 1 points, Riemann sums, plain AtP), told apart by a
strongly curved metric (:func:`curved_metric`), or an interpolation that never reaches the model.

Example::

    from mechlab.checks import unit05
    unit05.check_atp_heads(atp_heads)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

from mechlab.checks.core import Case, compare_tensors, negated, run_cases
from mechlab.core.activations import hook_name
from mechlab.core.loading import load_model
from mechlab.core.runs import Metric, cache_acts, logit_diff_metric
from mechlab.methods.attribution import attribution_patching, ig_alphas, integrated_gradients


@lru_cache(maxsize=2)
def _model(name: str):
    return load_model(name, seed=3, verbose=False)


def _prompts(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(5, 250, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(5, 250, (2,), generator=g)
    corrupted[:, 3] = torch.randint(5, 250, (2,), generator=g)
    metric = logit_diff_metric(torch.randint(5, 250, (2,), generator=g), torch.randint(5, 250, (2,), generator=g))
    return clean, corrupted, metric


def _cases(with_direction: bool) -> list[Case]:
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        for layer in range(model.cfg.n_layers):
            for direction in (("noising", "denoising") if with_direction else ("noising",)):
                args = (model, clean, corrupted, metric, layer)
                label = f"{name}, layer {layer}" + (f", {direction}" if with_direction else "")
                cases.append(Case(label, args + ((direction,) if with_direction else (4,))))
    return cases


def _z_of(model, tokens, layer: int) -> Tensor:
    cache, _ = cache_acts(model, tokens, {hook_name("z", layer)})
    return cache[hook_name("z", layer)]


@torch.no_grad()
def curved_metric(model, clean, corrupted, metric: Metric, layer: int, sharpness: float = 4.0) -> Metric:
    """``exp(sharpness * u)`` with ``u`` the metric rescaled per prompt to 0 on the clean run and 1 with layer
    ``layer``'s ``z`` patched to the corrupted value: along the IG path the gradient then grows like
    ``exp(sharpness * alpha)``, so integration rules that agree on a straight line (trapezoid, uniform weights,
    midpoint, one more point) give clearly different answers."""
    name = hook_name("z", layer)
    z_corr = _z_of(model, corrupted, layer)
    low = metric(model(clean)).float()
    high = metric(model.run_with_hooks(clean, fwd_hooks=[(name, lambda z, hook: z_corr)])).float()
    if bool(((high - low).abs() < 1e-3).any()):
        raise ValueError(f"curved_metric: patching layer {layer} moves the metric by {(high - low).tolist()}, too "
                         "little to rescale; choose other prompts.")

    def curved(logits):
        return torch.exp(sharpness * (metric(logits).float() - low) / (high - low))

    return curved


def _curved_cases() -> list[Case]:
    cases = []
    for name, seed in (("tiny-gpt2", 0), ("tiny-gemma", 1)):
        model = _model(name)
        clean, corrupted, metric = _prompts(model, seed)
        for layer in range(model.cfg.n_layers):
            cases.append(Case(f"{name}, layer {layer}, strongly curved metric exp(4 u)",
                              (model, clean, corrupted, curved_metric(model, clean, corrupted, metric, layer),
                               layer, 4),
                              hint="the integration rule: ig_alphas(steps) gives the trapezoid's alphas and weights"))
    return cases


def _compare(got, want) -> str:
    # tight enough that a gradient taken on the wrong run (a few % off on these models) fails
    return compare_tensors(got, want, atol=1e-6, rtol=2e-3, what="per-head estimate")


def path_attribution(model, tokens, z_from, z_to, metric: Metric, layer: int,
                     points: list[tuple[float, float]]) -> Tensor:
    """``(z_to - z_from) . sum_k w_k grad metric(z_from + a_k (z_to - z_from))`` per head, with layer ``layer``'s
    ``z`` set to the path point on the run of ``tokens``; summed over positions, mean over prompts: [head].

    An independent IG/AtP for any rule: ``points`` = [(alpha, weight), ...]. It builds the named mistakes."""
    name = hook_name("z", layer)
    batch = tokens.shape[0]
    alphas = torch.tensor([a for a, _ in points], device=z_from.device)
    weights = torch.tensor([w for _, w in points], device=z_from.device)
    diff = (z_to - z_from).float()
    with torch.enable_grad():
        path = (z_from.float()[None] + alphas[:, None, None, None, None] * diff[None]).flatten(0, 1)
        path = path.detach().requires_grad_(True)
        logits = model.run_with_hooks(tokens.repeat(len(points), 1),
                                      fwd_hooks=[(name, lambda z, hook: path.to(z.dtype))])
        values = torch.cat([metric(part) for part in logits.split(batch)])
        (grad,) = torch.autograd.grad(values.sum(), path)
    avg = torch.einsum("s,sb...->b...", weights, grad.view(len(points), batch, *grad.shape[1:]))
    return (diff * avg).sum(-1).sum(1).mean(0).detach()


def reference_atp_heads(model, clean, corrupted, metric, layer: int, direction: str) -> torch.Tensor:
    """mechlab's AtP on ``z`` at ``layer``, summed over positions: shape [head]."""

    res = attribution_patching(model, clean, corrupted, metric, kinds=["z"], direction=direction, layers=[layer])
    return res["z"].values.sum(-1)


def reference_ig_heads(model, clean, corrupted, metric, layer: int, steps: int) -> torch.Tensor:
    """mechlab's layer-wise IG on ``z`` at ``layer`` (noising), summed over positions: shape [head]."""

    res = integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps, layers=[layer],
                               progress=False)
    return res.values.sum(-1)


def _other(direction: str) -> str:
    return "denoising" if direction == "noising" else "noising"


def _atp_on_target(model, clean, corrupted, metric, layer, direction):
    base, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    z_base, z_target = _z_of(model, base, layer), _z_of(model, target, layer)
    return path_attribution(model, target, z_base, z_target, metric, layer, [(1.0, 1.0)])


ATP_MISTAKES = {
    "the sign is flipped (target minus baseline, times the gradient: noising effects of important heads come out "
    "negative)": negated(reference_atp_heads),
    "noising and denoising are swapped: you computed the other direction (noising patches corrupted into the clean "
    "run, gradient on the clean run; denoising the reverse)":
        lambda m, c, r, f, layer, d: reference_atp_heads(m, c, r, f, layer, _other(d)),
    "the gradient was taken on the target run instead of the baseline run (the run being patched)": _atp_on_target,
}


def _ig_rule(points_of: Callable[[int], list[tuple[float, float]]]) -> Callable:
    def ig(model, clean, corrupted, metric, layer, steps):
        z_clean, z_corr = _z_of(model, clean, layer), _z_of(model, corrupted, layer)
        return path_attribution(model, clean, z_clean, z_corr, metric, layer, points_of(steps))

    return ig


def _zeros(model, clean, corrupted, metric, layer, steps):
    return torch.zeros(model.cfg.n_heads)


IG_MISTAKES = {
    # integrating the same straight path backwards (from the corrupted z to the clean z) gives exactly this too
    "the sign is flipped (or the path runs from the corrupted z to the clean z, which is the same)":
        negated(reference_ig_heads),
    "noising and denoising are swapped: the path runs on the corrupted run (denoising); this exercise is noising, "
    "the path on the clean run":
        lambda m, c, r, f, layer, steps: integrated_gradients(m, c, r, f, kind="z", steps=steps, layers=[layer],
                                                              direction="denoising", progress=False).values.sum(-1),
    "uniform weights 1/steps on the trapezoid's alphas: the trapezoidal rule gives the two end points half weight":
        _ig_rule(lambda n: [(a, 1.0 / n) for a, _ in ig_alphas(n)]),
    "the midpoint rule (alphas (k + 0.5) / steps): use the trapezoid's alphas k / (steps - 1), ig_alphas(steps)":
        _ig_rule(lambda n: [((k + 0.5) / n, 1.0 / n) for k in range(n)]),
    "steps + 1 points: ig_alphas(steps) already includes both end points":
        _ig_rule(lambda n: ig_alphas(n + 1)),
    "a left Riemann sum (alphas k / steps for k < steps): alpha = 1 is never reached":
        _ig_rule(lambda n: [(k / n, 1.0 / n) for k in range(n)]),
    "a right Riemann sum (alphas k / steps for k = 1..steps): alpha = 0 is skipped":
        _ig_rule(lambda n: [(k / n, 1.0 / n) for k in range(1, n + 1)]),
    "plain AtP: only the gradient at alpha = 0, no integration": _ig_rule(lambda n: [(0.0, 1.0)]),
    "all zeros: the interpolated z never reaches the model (a hook must *return* the new activation)": _zeros,
}


def check_atp_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, direction) -> [head]`` against mechlab's AtP."""
    run_cases(fn, reference_atp_heads, _cases(with_direction=True), name="atp_heads", compare=_compare,
              mistakes=ATP_MISTAKES, grad=True)


def check_ig_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, steps) -> [head]`` against mechlab's IG (noising, steps=4), on
    the logit difference and on a strongly curved metric that separates the integration rules."""
    run_cases(fn, reference_ig_heads, _cases(with_direction=False) + _curved_cases(), name="ig_heads",
              compare=_compare, mistakes=IG_MISTAKES, grad=True)


__all__ = ["ATP_MISTAKES", "IG_MISTAKES", "check_atp_heads", "check_ig_heads", "curved_metric", "path_attribution",
           "reference_atp_heads", "reference_ig_heads"]
