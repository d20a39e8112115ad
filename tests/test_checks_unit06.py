"""Unit 06 checkers: each rejects the stub and plausible wrong answers (the ablated run's scale, no centring, a sign
flip, a missing intercept, no top-k filter) and accepts a correct solution written differently from the reference;
the references agree with mechlab.methods.self_repair / mechlab.methods.dla on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechlab.checks import unit06
from mechlab.checks.core import CheckFailed
from mechlab.core.activations import hook_name


def stub(*args):
    raise NotImplementedError("write this function")


# ---- exercise 1: a head's direct effect with the clean scale


def de_solution(z, W_O, readout, ln_weight, scales, centre):
    out = torch.einsum("bpd,dm->bpm", z, W_O)
    if centre:
        out = out - out.mean(dim=-1, keepdim=True)
    return torch.einsum("bpm,bpm->bp", out * ln_weight, readout) / scales["clean"][..., 0]


def de_ablated_scale(z, W_O, readout, ln_weight, scales, centre):
    return de_solution(z, W_O, readout, ln_weight, {"clean": scales["ablated"]}, centre)


def de_no_centring(z, W_O, readout, ln_weight, scales, centre):
    return de_solution(z, W_O, readout, ln_weight, scales, False)


def de_no_weight(z, W_O, readout, ln_weight, scales, centre):
    return de_solution(z, W_O, readout, torch.ones_like(ln_weight), scales, centre)


def test_direct_effect_checker_accepts_the_solution():
    unit06.check_head_direct_effect(de_solution)


@pytest.mark.parametrize("wrong", [stub, de_ablated_scale, de_no_centring, de_no_weight])
def test_direct_effect_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit06.check_head_direct_effect(wrong)


def test_direct_effect_reference_matches_mechlab_dla(noisy_model):
    """On random norm weights and biases: weight 1 would hide a norm weight dropped on either side."""
    from mechlab.methods.dla import cache_names, direct_effects, final_norm_params, unembed_directions

    model = noisy_model
    tokens = torch.randint(0, 200, (2, 9))
    names = cache_names(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    readout = unembed_directions(model, tokens[:, 1:])
    scale = cache["ln_final.hook_scale"]
    fake_ablated = scale * 0.5
    result = direct_effects(model, cache, readout, positions=slice(0, -1))
    centres, weight, _ = final_norm_params(model)
    layer, head = 1, 2
    z = cache[hook_name("z", layer)][:, :-1, head]
    got = unit06.head_direct_effect(z, model.W_O[layer, head].detach(), readout, weight,
                                    {"clean": scale[:, :-1], "ablated": fake_ablated[:, :-1]}, centres)
    torch.testing.assert_close(got, result[f"L{layer}H{head}"], atol=1e-5, rtol=1e-4)


# ---- exercise 2: self-repair


def repair_solution(delta_logit, clean_de, ablated_de):
    return delta_logit + clean_de - ablated_de


def repair_sign_flip(delta_logit, clean_de, ablated_de):
    return delta_logit + (ablated_de - clean_de)


def repair_forgets_clean(delta_logit, clean_de, ablated_de):
    return delta_logit - ablated_de


def test_self_repair_checker_accepts_the_solution():
    unit06.check_self_repair(repair_solution)


@pytest.mark.parametrize("wrong", [stub, repair_sign_flip, repair_forgets_clean])
def test_self_repair_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit06.check_self_repair(wrong)


# ---- exercise 3: backup slope


def slope_solution(x, y, intercept, top_percent):
    if top_percent is not None:
        k = max(1, round(len(x) * top_percent / 100))
        idx = torch.topk(x, k).indices
        x, y = x[idx], y[idx]
    x, y = x.double(), y.double()
    if not intercept:
        return float((x * y).sum() / (x * x).sum()), 0.0
    xm, ym = x.mean(), y.mean()
    slope = ((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum()
    return float(slope), float(ym - slope * xm)


def slope_never_intercept(x, y, intercept, top_percent):
    return slope_solution(x, y, False, top_percent)


def slope_always_intercept(x, y, intercept, top_percent):
    return slope_solution(x, y, True, top_percent)


def slope_no_filter(x, y, intercept, top_percent):
    return slope_solution(x, y, intercept, None)


def slope_swapped_axes(x, y, intercept, top_percent):
    return slope_solution(y, x, intercept, top_percent)


def test_slope_checker_accepts_the_solution():
    unit06.check_backup_slope(slope_solution)


@pytest.mark.parametrize("wrong", [stub, slope_never_intercept, slope_always_intercept, slope_no_filter,
                                   slope_swapped_axes])
def test_slope_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit06.check_backup_slope(wrong)


def test_slope_reference_matches_mechlab_fit_slope():
    from mechlab.methods.self_repair import fit_slope

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, generator=gen), torch.randn(200, generator=gen)
    for intercept in (True, False):
        for top in (None, 15.0):
            want = unit06.backup_slope(x, y, intercept, top)
            got = fit_slope(x, y, intercept=intercept, top_percent=top)[:2]
            assert np.allclose(got, want, atol=1e-10)


def slope_with_count(count):
    def fit(x, y, intercept, top_percent):
        if top_percent is not None:
            idx = torch.topk(x, count(len(x) * top_percent / 100)).indices
            x, y = x[idx], y[idx]
        return slope_solution(x, y, intercept, None)
    return fit


def slope_quantile(x, y, intercept, top_percent):
    if top_percent is not None:
        keep = x >= torch.quantile(x, 1 - top_percent / 100)
        x, y = x[keep], y[keep]
    return slope_solution(x, y, intercept, None)


def slope_smallest(x, y, intercept, top_percent):
    if top_percent is not None:
        idx = torch.topk(x, max(1, round(len(x) * top_percent / 100)), largest=False).indices
        x, y = x[idx], y[idx]
    return slope_solution(x, y, intercept, None)


@pytest.mark.parametrize("wrong, named", [
    (slope_with_count(int), "rounded down .int"),
    (slope_with_count(math.floor), "rounded down .int.. or floor"),
    (slope_with_count(math.ceil), "rounded up .ceil"),
    (slope_quantile, "quantile threshold"),
    (slope_smallest, "smallest"),
    (slope_no_filter, "no top-percent filter"),
    (slope_never_intercept, "through the origin"),
    (slope_swapped_axes, "swapped"),
])
def test_slope_checker_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit06.check_backup_slope(wrong)


def test_int_count_fails_only_where_the_count_is_fractional():
    with pytest.raises(CheckFailed) as info:
        unit06.check_backup_slope(slope_with_count(int))
    assert "77 points, top 10 % = 7.7 points" in str(info.value) and "1 of 6 cases failed" in str(info.value)


@pytest.mark.parametrize("wrong, named", [(de_ablated_scale, "ablated"), (de_no_centring, "no centring"),
                                          (de_no_weight, "weight")])
def test_direct_effect_checker_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit06.check_head_direct_effect(wrong)


def test_direct_effect_checker_names_the_sign_flip():
    with pytest.raises(CheckFailed, match="matches this mistake: the sign is flipped"):
        unit06.check_head_direct_effect(lambda *a: -de_solution(*a))


@pytest.mark.parametrize("wrong, named", [(repair_sign_flip, "wrong sign"),
                                          (repair_forgets_clean, "clean_de is missing"),
                                          (lambda *a: -repair_solution(*a), "sign is flipped overall")])
def test_self_repair_checker_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit06.check_self_repair(wrong)
