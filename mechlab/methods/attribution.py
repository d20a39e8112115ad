"""Attribution patching (AtP) and its integrated-gradients refinements: cheap linear estimates of what exact
activation patching would measure.

Exact patching answers "how much does the metric move when activation ``a`` of the baseline run is replaced by
its value in the other run?" with one forward pass per patch. AtP answers it for every activation at once with
a first-order Taylor expansion around the baseline run::

    metric(patched) - metric(baseline)  ~=  (a_target - a_baseline) . d metric / d a  (at the baseline run)

Directions (the words of ``mechlab``):

    noising    (default) the baseline is the clean run, the target the corrupted one: the estimate of patching
               corrupted activations into the clean run. Gradients are taken on the clean run; this needs one
               corrupted forward plus one clean forward and backward.
    denoising  the baseline is the corrupted run, the target the clean one: the estimate of patching clean
               activations into the corrupted run (gradients on the corrupted run).

Metric normalisation: ``metric(logits)`` returns one number per prompt; results are the mean over prompts of the
per-prompt estimate, in the metric's unit. With ``normalise=True`` they are divided by the gap
``mean metric(clean) - mean metric(corrupted)``, so a denoising patch that restores the whole gap reads +1 and a
noising patch that destroys it reads -1. Every result's ``meta`` repeats the direction and normalisation.

Where AtP is exact: only where the metric is linear in the patched activation. With the final norm's scale frozen
(``freeze_final_scale=True`` replaces the scale of ``ln_final`` by the baseline run's value, without gradient, in
every pass) that is the **last layer's** ``mlp_out`` (and ``resid_post``): nothing non-linear follows it. The last
layer's ``attn_out`` and ``z`` are *not* exact: they still pass through the last MLP (and its norm). Measured on the
organism (3 layers), mean over 8 S3 pairs of unit 07, last layer, scale frozen, summed over positions: AtP = exact =
-10.81 on ``mlp_out``, but AtP -11.56 vs exact -14.76 on ``attn_out`` and -11.56 vs -13.14 (the sum of single-head
patches) on ``z``. Earlier layers' ``mlp_out`` pass through every later layer, and AtP mis-orders them: on 26 S3
pairs (scale live, as in the model) AtP gives -3.43 / -1.93 / -6.74 for L0 / L1 / L2 where exact whole-MLP patches
give -27.77 / -20.95 / -10.10. Where AtP fails badly: queries and keys, whose effect goes through a softmax that is
far from linear between the two runs (a head's pattern moves from one token to another, or saturates), so the
gradient at the baseline says little about the whole step; on unit 07's S3 pairs AtP's q/k/v totals often have the
wrong sign. :func:`integrated_gradients` fixes that by averaging gradients along the straight path from the baseline
to the target activation of one layer at a time (batched over the steps). On unit 07's q/k/v, its per-layer totals
match exact whole-layer patches, but a layer's heads interact, so per-head scores need not add up to single-head
patches. :func:`input_integrated_gradients` interpolates the input embeddings (the residual stream entering
layer 0) and reads every layer's gradient from the same passes; it scores activations, not edges (EAP-IG scores
edges). Both average the gradient with the trapezoidal rule on ``steps`` evenly spaced alphas from 0 (baseline) to 1
(target), whose error falls like ``1 / steps**2``; ``steps=1`` keeps only alpha = 0, the gradient at the baseline,
so it is exactly AtP.

Activation kinds: ``resid_pre``, ``attn_out``, ``mlp_out`` (one row per layer), ``z`` and ``q`` (one row per
query head, ``L{l}H{h}``), ``k`` and ``v`` (one row per K/V head: ``L{l}H{h}`` when every query head has its
own, ``L{l}KV{g}`` in multi-query / grouped-query models such as Gemma, where K/V head ``g`` serves several
query heads and so is patched, and attributed, as one unit). Results have axes ``(component, pos)``.

Precision: activations and gradients stay in the model's dtype (bf16 works); every product and sum is
accumulated in fp32 and results are fp32.

Example::

    from mechlab.core.loading import load_model
    from mechlab.core.runs import logit_diff_metric
    from mechlab.methods.attribution import attribution_patching
    model = load_model("tiny-gpt2", verbose=False)
    clean, corrupted = model.to_tokens(["ab ab"]), model.to_tokens(["ab cd"])
    metric = logit_diff_metric(torch.tensor([98]), torch.tensor([99]))
    atp = attribution_patching(model, clean, corrupted, metric, kinds=["z", "mlp_out"])
    atp["z"].top(3)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import (
    FINAL_NORM_SCALE,
    PATCH_KINDS,
    hook_name,
    layer_list,
    row_labels,
)
from mechlab.core.results import Labelled
from mechlab.core.runs import (
    Metric,
    cache_acts,
    cache_resume,
    check_tokens,
    metric_from_normed,
    metric_per_copy,
    run_from,
)
from mechlab.core.tokens import check_same_shape
from mechlab.methods.patching import DIRECTIONS

# ---------------------------------------------------------------------------------------------------------
# validation and the passes every method shares


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in PATCH_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown activation kinds {bad or kinds}; expected a non-empty list from "
                         f"{list(PATCH_KINDS)}.")
    return list(dict.fromkeys(kinds))


def _prepare(model, clean, corrupted, direction, layers, freeze_final_scale):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected 'noising' (corrupted activations into the clean run) "
                         "or 'denoising' (clean activations into the corrupted run).")
    clean, corrupted = check_tokens(model, clean, "clean"), check_tokens(model, corrupted, "corrupted")
    check_same_shape(clean, corrupted)
    if freeze_final_scale and FINAL_NORM_SCALE not in model.hook_dict:
        raise ValueError(f"freeze_final_scale=True needs the hook {FINAL_NORM_SCALE!r}, which this model lacks.")
    layers = layer_list(model, layers)
    baseline, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    return baseline, target, layers


def _metric_values(metric: Metric, logits: Tensor, batch: int) -> Float[Tensor, " n"]:
    """Apply ``metric`` to each copy of the batch (the methods expand the batch), checked, as one flat vector."""
    return _with_grad(metric_per_copy(metric, logits, batch).flatten(), logits)


def _with_grad(values: Tensor, source: Tensor) -> Tensor:
    """``values`` if they carry the gradient of ``source`` (logits or the final norm's output), else the error."""
    if source.requires_grad and not values.requires_grad:
        raise ValueError("the metric returned values without a gradient (it uses argmax, comparisons, .item(), "
                         ".detach() or torch.no_grad()), but attribution differentiates the metric with respect to "
                         "the activations. Pass a differentiable metric of the logits, e.g. "
                         "mechlab.core.runs.logit_diff_metric(correct, incorrect); use exact activation patching "
                         "(mechlab.methods.patching) for a metric that is not differentiable.")
    return values


def _scale_hook(frozen: Tensor | None):
    """Replace ln_final's scale by ``frozen`` (or by its own value, detached): no gradient through the scale."""
    def hook(act, hook):
        return (act if frozen is None else frozen).detach()
    return hook


def _reduce(diff_times_grad: Float[Tensor, "batch pos ..."]) -> Tensor:
    """Sum over the feature axis: [batch, pos, d] -> [batch, pos]; [batch, pos, head, d] -> [batch, pos, head]."""
    return diff_times_grad.sum(-1)


def _assemble(model, kind, layers, per_layer: dict[int, Tensor], scale: float, meta: dict, unit: str) -> Labelled:
    """Per-layer [pos] or [pos, head] tensors -> one Labelled with axes (component, pos)."""
    rows = []
    for layer in layers:
        x = per_layer[layer]
        rows.append(x[None] if x.ndim == 1 else x.transpose(0, 1))  # [1, pos] or [head, pos]
    values = (torch.cat(rows) / scale).cpu()
    return Labelled(values, row_labels(model, kind, layers), unit=unit, axes=("component", "pos"),
                    meta={**meta, "kind": kind, "layers": list(layers)})


def _normaliser(metric_clean: Tensor, metric_corrupted: Tensor, normalise: bool) -> tuple[float, str, str]:
    if not normalise:
        return 1.0, "none: mean over prompts, in the metric's unit", "metric"
    gap = float(metric_clean.mean() - metric_corrupted.mean())
    if abs(gap) < 1e-6:
        raise ValueError(f"normalise=True divides by the clean - corrupted metric gap, which is {gap:.3g} here; "
                         "choose prompts where the metric differs between the runs, or pass normalise=False.")
    return gap, "divided by mean metric(clean) - mean metric(corrupted)", "fraction of clean-corrupted gap"


def _meta(method, direction, norm_text, metric_clean, metric_corrupted, freeze, **extra) -> dict:
    return {"method": method, "direction": direction,
            "estimates": "metric(baseline run with target activation) - metric(baseline run); baseline = "
                         + ("clean, target = corrupted" if direction == "noising" else "corrupted, target = clean"),
            "normalisation": norm_text, "metric_clean": float(metric_clean.mean()),
            "metric_corrupted": float(metric_corrupted.mean()),
            "final_scale": "frozen at the baseline run" if freeze else "live (gradient flows through the norm)",
            "accumulation": "fp32", **extra}


# ---------------------------------------------------------------------------------------------------------
# AtP


def attribution_patching(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kinds: Sequence[str] = PATCH_KINDS,
    direction: str = "noising",
    normalise: bool = False,
    freeze_final_scale: bool = False,
    layers: Sequence[int] | None = None,
) -> dict[str, Labelled]:
    """AtP for each of ``kinds``: ``{kind: Labelled[component, pos]}`` from one target forward plus one baseline
    forward and backward (see the module docstring for direction, normalisation and labels).

    Example::

        atp = attribution_patching(model, clean, corrupted, metric, kinds=["z"], direction="denoising")
        atp["z"]["L1H2"]          # estimated effect per position of patching head L1H2's clean output
    """
    kinds = _check_kinds(kinds)
    baseline, target, layers = _prepare(model, clean, corrupted, direction, layers, freeze_final_scale)
    names = {hook_name(k, layer): (k, layer) for k in kinds for layer in layers}
    target_cache, metric_target = cache_acts(model, target, set(names), metric)

    base_acts: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}

    def injector(name):  # a zero leaf added on the graph: d metric / d delta = d metric / d act
        def inject(act, hook):
            base_acts[name] = act.detach()
            deltas[name] = torch.zeros_like(act, requires_grad=True)
            return act + deltas[name]
        return inject

    hooks = [(name, injector(name)) for name in names]
    if freeze_final_scale:
        hooks.append((FINAL_NORM_SCALE, _scale_hook(None)))
    with torch.enable_grad():
        logits = model.run_with_hooks(baseline, fwd_hooks=hooks)
        metric_base = _metric_values(metric, logits, baseline.shape[0])
        order = list(names)
        grads = torch.autograd.grad(metric_base.sum(), [deltas[n] for n in order], allow_unused=True)
    del logits
    metric_base = metric_base.detach()

    metric_clean, metric_corr = ((metric_base, metric_target) if direction == "noising"
                                 else (metric_target, metric_base))
    scale, norm_text, unit = _normaliser(metric_clean, metric_corr, normalise)
    meta = _meta("attribution patching (AtP)", direction, norm_text, metric_clean, metric_corr, freeze_final_scale)
    per_kind: dict[str, dict[int, Tensor]] = {k: {} for k in kinds}
    for name, grad in zip(order, grads, strict=True):
        kind, layer = names[name]
        diff = target_cache[name].float() - base_acts[name].float()
        grad = torch.zeros_like(diff) if grad is None else grad.float()
        per_kind[kind][layer] = _reduce(diff * grad).mean(0)
    return {k: _assemble(model, k, layers, per_kind[k], scale, meta, unit) for k in kinds}


# ---------------------------------------------------------------------------------------------------------
# integrated gradients, one layer at a time


def _check_steps(steps: int, max_batch: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected an integer >= 1 (1 is plain AtP; 16-32 is typical).")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected a positive integer (sequences per forward pass).")


def ig_alphas(steps: int) -> list[tuple[float, float]]:
    """(alpha, weight) pairs of the trapezoidal rule on [0, 1] with ``steps`` points; ``steps=1``: [(0, 1)]."""
    if steps == 1:
        return [(0.0, 1.0)]
    n = steps - 1
    return [(k / n, (0.5 if k in (0, n) else 1.0) / n) for k in range(steps)]


def integrated_gradients(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kind: str,
    steps: int = 16,
    direction: str = "noising",
    normalise: bool = False,
    freeze_final_scale: bool = False,
    layers: Sequence[int] | None = None,
    max_batch: int = 64,
    progress: bool = True,
) -> Labelled:
    """AtP with integrated gradients for one activation ``kind``, one layer at a time.

    For layer ``l`` the whole activation of ``kind`` at ``l`` (all positions and heads) follows the straight path
    ``a_baseline + alpha (a_target - a_baseline)`` for ``steps`` alphas from 0 to 1 (:func:`ig_alphas`), on the
    baseline tokens; every other layer runs normally. The attribution is ``(a_target - a_baseline) . avg grad``
    (the gradient averaged over the path by the trapezoidal rule).
    Summed over one layer it approaches the exact effect of patching that whole layer (completeness) as
    ``steps`` grows. A layer's alphas are stacked along the batch, ``max_batch`` sequences per forward pass, and each
    pass starts at its layer from the baseline run's cached residual stream (``mechlab.core.runs.run_from``): the
    layers before it are not recomputed, and only the positions the metric reads are unembedded when it says which.

    Returns ``Labelled[component, pos]`` like :func:`attribution_patching`.
    """
    kind = _check_kinds([kind])[0]
    _check_steps(steps, max_batch)
    baseline, target, layers = _prepare(model, clean, corrupted, direction, layers, freeze_final_scale)
    batch = baseline.shape[0]
    names = {layer: hook_name(kind, layer) for layer in layers}
    extra = {FINAL_NORM_SCALE} if freeze_final_scale else set()
    resume, base_cache, metric_base = cache_resume(model, baseline, layers, set(names.values()) | extra, metric)
    target_cache, metric_target = cache_acts(model, target, set(names.values()), metric)

    # one layer per pass: the pass starts at that layer from the baseline's residual stream, and its backward
    # stops there too (a pass mixing layers would run every copy forward and backward from the earliest one)
    per_pass = max(1, max_batch // batch)
    alphas = ig_alphas(steps)
    chunks = [[(layer, alpha, weight) for alpha, weight in alphas[i:i + per_pass]]
              for layer in layers for i in range(0, steps, per_pass)]
    grad_sum = {layer: torch.zeros_like(base_cache[names[layer]], dtype=torch.float32) for layer in layers}
    for chunk in tqdm(chunks, desc=f"IG on {kind} ({steps} steps x {len(layers)} layers)", disable=not progress):
        _ig_pass(model, baseline, metric, chunk, names, base_cache, target_cache, grad_sum, freeze_final_scale,
                 resume)

    metric_clean, metric_corr = ((metric_base, metric_target) if direction == "noising"
                                 else (metric_target, metric_base))
    scale, norm_text, unit = _normaliser(metric_clean, metric_corr, normalise)
    meta = _meta("AtP with integrated gradients (one layer at a time)", direction, norm_text, metric_clean,
                 metric_corr, freeze_final_scale, steps=steps, alphas="trapezoidal rule on [0, 1]")
    per_layer = {}
    for layer in layers:
        diff = target_cache[names[layer]].float() - base_cache[names[layer]].float()
        per_layer[layer] = _reduce(diff * grad_sum[layer]).mean(0)
    return _assemble(model, kind, layers, per_layer, scale, meta, unit)


def _ig_pass(model, baseline, metric, chunk, names, base_cache, target_cache, grad_sum, freeze, resume=None) -> None:
    """One forward + backward over ``chunk`` = [(layer, alpha, weight), ...], each item one copy of the batch; with
    ``resume`` the pass starts at the chunk's earliest layer (``mechlab.core.runs.run_from``)."""
    batch, n = baseline.shape[0], len(chunk)
    chunk_layers = sorted({item[0] for item in chunk})
    deltas: dict[int, Tensor] = {}

    def make_hook(layer):
        base, target = base_cache[names[layer]], target_cache[names[layer]]

        def hook(act, hook):
            # items of this layer get the interpolated activation; the others keep whatever their run computed
            delta = torch.zeros_like(act)
            for i, (item_layer, alpha, _) in enumerate(chunk):
                if item_layer == layer:
                    rows = slice(i * batch, (i + 1) * batch)
                    delta[rows] = base + alpha * (target - base) - act[rows].detach()
            delta.requires_grad_(True)
            deltas[layer] = delta
            return act + delta
        return hook

    hooks = [(names[layer], make_hook(layer)) for layer in chunk_layers]
    if freeze:
        hooks.append((FINAL_NORM_SCALE, _scale_hook(base_cache[FINAL_NORM_SCALE].repeat(n, 1, 1))))
    start = None if resume is None else resume.start(chunk_layers[0])
    with torch.enable_grad():
        if start is None:
            logits = model.run_with_hooks(baseline.repeat(n, 1), fwd_hooks=hooks)
            total = _metric_values(metric, logits, batch).sum()
        else:
            normed = run_from(model, resume, start, copies=n, fwd_hooks=hooks, logits=False)
            total = _with_grad(metric_from_normed(model, metric, normed, batch), normed).sum()
        grads = torch.autograd.grad(total, [deltas[layer] for layer in chunk_layers], allow_unused=True)
    by_layer = dict(zip(chunk_layers, grads, strict=True))
    for i, (layer, _, weight) in enumerate(chunk):
        grad = by_layer[layer]
        if grad is not None:
            grad_sum[layer] += weight * grad[i * batch:(i + 1) * batch].float()


# ---------------------------------------------------------------------------------------------------------
# input-embedding IG: interpolate the input embeddings, read every layer (the interpolation EAP-IG uses; it
# attributes activations here, not edges)


def input_integrated_gradients(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kinds: Sequence[str] = PATCH_KINDS,
    steps: int = 16,
    direction: str = "noising",
    normalise: bool = False,
    freeze_final_scale: bool = False,
    layers: Sequence[int] | None = None,
    max_batch: int = 64,
    progress: bool = True,
) -> dict[str, Labelled]:
    """Input-embedding IG: gradients averaged over runs whose input embeddings (the residual stream entering layer 0)
    move from the baseline run's to the target run's, times each activation's target - baseline difference.

    All layers and kinds come from the same ``steps`` passes (stacked along the batch, ``max_batch`` sequences
    per pass). Summed over ``L0 resid_pre`` it approaches ``metric(target) - metric(baseline)``; ``steps=1`` is
    AtP. Returns ``{kind: Labelled[component, pos]}`` like :func:`attribution_patching`.
    """
    kinds = _check_kinds(kinds)
    _check_steps(steps, max_batch)
    baseline, target, layers = _prepare(model, clean, corrupted, direction, layers, freeze_final_scale)
    batch = baseline.shape[0]
    embed = hook_name("resid_pre", 0)
    names = {hook_name(k, layer): (k, layer) for k in kinds for layer in layers}
    extra = {FINAL_NORM_SCALE} if freeze_final_scale else set()
    base_cache, metric_base = cache_acts(model, baseline, set(names) | {embed} | extra, metric)
    target_cache, metric_target = cache_acts(model, target, set(names) | {embed}, metric)
    grad_sum = {name: torch.zeros_like(base_cache[name], dtype=torch.float32) for name in names}

    pairs = ig_alphas(steps)
    per_pass = max(1, max_batch // batch)
    chunks = [pairs[i:i + per_pass] for i in range(0, steps, per_pass)]
    for chunk in tqdm(chunks, desc=f"input-embedding IG ({steps} steps)", disable=not progress):
        n = len(chunk)
        a = torch.tensor([p[0] for p in chunk], device=baseline.device).repeat_interleave(batch).view(-1, 1, 1)
        w = torch.tensor([p[1] for p in chunk], device=baseline.device)
        e0, e1 = base_cache[embed].repeat(n, 1, 1), target_cache[embed].repeat(n, 1, 1)
        interp = (e0.float() + a * (e1.float() - e0.float())).to(e0.dtype)
        deltas: dict[str, Tensor] = {}

        def make_hook(name, interp=interp, deltas=deltas):
            def hook(act, hook):
                if name == embed:
                    act = act + (interp - act.detach())  # the interpolated input, still on the graph
                if name in names:
                    deltas[name] = torch.zeros_like(act, requires_grad=True)
                    act = act + deltas[name]
                return act
            return hook

        hooks = [(name, make_hook(name)) for name in {embed, *names}]
        if freeze_final_scale:
            hooks.append((FINAL_NORM_SCALE, _scale_hook(base_cache[FINAL_NORM_SCALE].repeat(n, 1, 1))))
        with torch.enable_grad():
            logits = model.run_with_hooks(baseline.repeat(n, 1), fwd_hooks=hooks)
            total = _metric_values(metric, logits, batch).sum()
            order = list(names)
            grads = torch.autograd.grad(total, [deltas[x] for x in order], allow_unused=True)
        for name, grad in zip(order, grads, strict=True):
            if grad is not None:
                g = grad.float().view(n, batch, *grad.shape[1:])
                grad_sum[name] += torch.einsum("n,nb...->b...", w, g)

    metric_clean, metric_corr = ((metric_base, metric_target) if direction == "noising"
                                 else (metric_target, metric_base))
    scale, norm_text, unit = _normaliser(metric_clean, metric_corr, normalise)
    meta = _meta("input-embedding IG (input embeddings interpolated)", direction, norm_text, metric_clean, metric_corr,
                 freeze_final_scale, steps=steps, alphas="trapezoidal rule on [0, 1]")
    per_kind: dict[str, dict[int, Tensor]] = {k: {} for k in kinds}
    for name, (kind, layer) in names.items():
        diff = target_cache[name].float() - base_cache[name].float()
        per_kind[kind][layer] = _reduce(diff * grad_sum[name]).mean(0)
    return {k: _assemble(model, k, layers, per_kind[k], scale, meta, unit) for k in kinds}


__all__ = ["attribution_patching", "ig_alphas", "input_integrated_gradients", "integrated_gradients"]
