"""Checkers for unit 05 (activation patching and attribution patching), each against mechlab's reference.

The learner writes, for the head outputs ``z`` of one layer:

    atp_heads(model, clean, corrupted, metric, layer, direction)  -> Float[Tensor, "head"]
        AtP estimate per head (summed over positions, mean over prompts) of patching the target run's ``z``
        into the baseline run: noising = corrupted into clean (gradient on the clean run), denoising = clean
        into corrupted (gradient on the corrupted run).
    ig_heads(model, clean, corrupted, metric, layer, steps)       -> Float[Tensor, "head"]
        The same estimate (noising) with integrated gradients: the layer's ``z`` moves from the clean to the
        corrupted value, gradients averaged with the trapezoidal rule (``mechlab.methods.attribution.ig_alphas``).

Each check runs on tiny random-init GPT-2-like and Gemma-like models and rejects a flipped sign, the wrong
direction (gradient taken on the other run) and, for IG, an interpolation that never reaches the model.

Example::

    from mechlab.checks import unit05
    unit05.check_atp_heads(atp_heads)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch

from mechlab.checks.core import Case, compare_tensors, run_cases
from mechlab.core.loading import load_model
from mechlab.core.runs import logit_diff_metric
from mechlab.methods.attribution import attribution_patching, integrated_gradients


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


def _compare(got, want) -> str:
    # tight enough that a gradient taken on the wrong run (a few % off on these models) fails
    return compare_tensors(got, want, atol=1e-6, rtol=2e-3, what="per-head estimate")


def reference_atp_heads(model, clean, corrupted, metric, layer: int, direction: str) -> torch.Tensor:
    """mechlab's AtP on ``z`` at ``layer``, summed over positions: shape [head]."""

    res = attribution_patching(model, clean, corrupted, metric, kinds=["z"], direction=direction, layers=[layer])
    return res["z"].values.sum(-1)


def reference_ig_heads(model, clean, corrupted, metric, layer: int, steps: int) -> torch.Tensor:
    """mechlab's layer-wise IG on ``z`` at ``layer`` (noising), summed over positions: shape [head]."""

    res = integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps, layers=[layer],
                               progress=False)
    return res.values.sum(-1)


def check_atp_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, direction) -> [head]`` against mechlab's AtP."""
    run_cases(fn, reference_atp_heads, _cases(with_direction=True), name="atp_heads", compare=_compare)


def check_ig_heads(fn: Callable) -> None:
    """``fn(model, clean, corrupted, metric, layer, steps) -> [head]`` against mechlab's IG (noising, steps=4)."""
    run_cases(fn, reference_ig_heads, _cases(with_direction=False), name="ig_heads", compare=_compare)


__all__ = ["check_atp_heads", "check_ig_heads", "reference_atp_heads", "reference_ig_heads"]
