"""Exact activation patching: replace one activation of a run by its value in another run and measure a metric.

Directions (the words of ``mechlab``):

    noising    (default) run the clean prompts, patch in the corrupted run's activation: how much does the clean
               behaviour depend on this activation?
    denoising  run the corrupted prompts, patch in the clean run's activation: is this activation enough to
               bring the clean behaviour back?

What can be patched (``kind``) and the rows of the result:

    resid_pre, attn_out, mlp_out    one row per layer: ``L{l} resid_pre``, ``L{l} attn``, ``L{l} mlp``
    z, q                            one row per query head: ``L{l}H{h}``
    k, v                            one row per K/V head. In multi-query / grouped-query models (Gemma-2b has one
                                    K/V head per layer) a K/V head is shared by several query heads, so it is
                                    patched as one unit and labelled ``L{l}KV{g}``; with one K/V head per query
                                    head the labels are ``L{l}H{h}``.

``per_position=True`` patches one (row, position) at a time and returns values [component, pos];
``per_position=False`` patches the row at every position at once and returns values [component].

The metric is any callable ``metric(logits) -> [batch]`` (one number per prompt), e.g. :func:`logit_diff_metric`
or :func:`gap_fraction_metric`. A result entry is the mean over prompts of the metric on the patched run; with
``effect=True`` the unpatched baseline run's mean is subtracted (the convention of ``mechlab.methods.attribution``, so
the two compare directly), and ``normalise=True`` divides by the gap ``mean metric(clean) - mean metric(corrupted)``
(after subtracting the corrupted mean when ``effect=False``: 1 = clean behaviour, 0 = corrupted behaviour).

Speed: patches run many at a time, each on its own copy of the batch stacked along the batch axis. The number of
copies per forward pass (``max_batch`` sequences in all) is chosen from the free memory unless given; a tqdm bar
shows progress. Each pass starts at the patched layer from the baseline run's cached residual stream
(``mechlab.core.runs.run_from``): layers before it are not recomputed. The result equals a loop of one full forward
pass per patch (tested to 1e-5).

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.patching import activation_patching, logit_diff_metric
    model = load_model("tiny-gpt2", verbose=False)
    clean, corrupted = model.to_tokens(["ab ab"]), model.to_tokens(["ab cd"])
    metric = logit_diff_metric(torch.tensor([98]), torch.tensor([99]))
    heads = activation_patching(model, clean, corrupted, metric, kind="z", per_position=False)
    heads.top(3)
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Int
from torch import Tensor

from mechlab.core.activations import PATCH_KINDS, check_kind, hook_name, layer_list, row_labels
from mechlab.core.results import Labelled
from mechlab.core.runs import Metric, as_token_pair, cache_acts, cache_resume, patches_for, run_patches

DIRECTIONS = ("noising", "denoising")


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected 'noising' (corrupted activations into the clean run) "
                         "or 'denoising' (clean activations into the corrupted run).")
    return direction



# ---------------------------------------------------------------------------------------------------------
# activation patching


def activation_patching(
    model,
    clean: Int[Tensor, "batch pos"] | Sequence[str],
    corrupted: Int[Tensor, "batch pos"] | Sequence[str],
    metric: Metric,
    *,
    kind: str,
    direction: str = "noising",
    per_position: bool = True,
    layers: Sequence[int] | None = None,
    effect: bool = False,
    normalise: bool = False,
    max_batch: int | None = None,
    progress: bool = True,
) -> Labelled:
    """Patch every row of ``kind`` (per position, or at all positions at once) and measure ``metric``.

    See the module docstring for kinds, labels, direction and normalisation. Returns
    ``mechlab.core.results.Labelled`` with axes (component, pos) or (component,); ``meta`` records the direction,
    ``metric_clean``, ``metric_corrupted``, ``metric_baseline`` and the normalisation.
    """
    check_kind(kind, PATCH_KINDS)
    _check_direction(direction)
    clean, corrupted = as_token_pair(model, clean, corrupted)
    layers = layer_list(model, layers)
    names = {hook_name(kind, layer) for layer in layers}
    # only the source run's activations are kept; the baseline run gives its metric and the residual stream every
    # patched pass resumes from (layers before the patched one are not recomputed)
    if direction == "noising":
        resume, _, m_clean = cache_resume(model, clean, layers, set(), metric)
        corr_cache, m_corr = cache_acts(model, corrupted, names, metric)
        baseline, sources, m_base = clean, corr_cache, m_clean
    else:
        clean_cache, m_clean = cache_acts(model, clean, names, metric)
        resume, _, m_corr = cache_resume(model, corrupted, layers, set(), metric)
        baseline, sources, m_base = corrupted, clean_cache, m_corr
    patches = patches_for(model, kind, layers, clean.shape[1], per_position)
    values = run_patches(model, baseline, patches, sources, metric, max_batch=max_batch, progress=progress,
                         desc=f"{direction} {kind}", resume=resume).mean(1)
    values, unit, how = _normalise(values, m_clean.mean(), m_corr.mean(), m_base.mean(), effect, normalise)
    labels = row_labels(model, kind, layers)
    if per_position:
        values = values.view(len(labels), clean.shape[1])
    meta = {"method": "exact activation patching", "kind": kind, "direction": direction,
            "patched": "corrupted activations into the clean run" if direction == "noising"
            else "clean activations into the corrupted run",
            "metric_clean": float(m_clean.mean()), "metric_corrupted": float(m_corr.mean()),
            "metric_baseline": float(m_base.mean()), "normalisation": how, "layers": layers}
    return Labelled(values.cpu(), labels, unit=unit, axes=("component", "pos") if per_position else ("component",),
                    meta=meta)


def _normalise(values, m_clean, m_corr, m_base, effect: bool, normalise: bool):
    if effect:
        values = values - m_base
    if not normalise:
        how = "mean metric(patched) - mean metric(baseline)" if effect else "mean metric on the patched run"
        return values, "metric" if not effect else "metric change", how
    gap = float(m_clean - m_corr)
    if abs(gap) < 1e-6:
        raise ValueError(f"normalise=True divides by mean metric(clean) - mean metric(corrupted) = {gap:.3g}; the "
                         "metric does not tell the runs apart. Choose other prompts, or pass normalise=False.")
    if effect:
        return values / gap, "fraction of clean-corrupted gap (change)", "(patched - baseline) / (clean - corrupted)"
    return (values - m_corr) / gap, "fraction of clean-corrupted gap", "(patched - corrupted) / (clean - corrupted)"


__all__ = ["DIRECTIONS", "activation_patching"]
