"""mechlab.methods.self_repair against independent computations on both tiny families: hand-written einsums through the
HF model's own final-norm weights, one resample-ablated forward pass per head (``mechlab.methods.ablation`` hooks), the
model's logits, numpy's least squares and the organism evaluation's own self-repair number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechlab.core.activations import hook_name
from mechlab.core.results import Labelled
from mechlab.data.text import text_tokens
from mechlab.methods.ablation import ablation_hooks
from mechlab.methods.self_repair import (
    PARTS,
    SelfRepair,
    backup_fit,
    backup_slopes,
    fit_slope,
    later_head_changes,
    mean_direct_effects,
    norm_share,
    reliable_slopes,
    select_points,
    self_repair_sweep,
    slope_reliability,
    slopes_grid,
    top_token_effects,
)
from mechlab.models.organism import ORGANISM_DIR

TOL_SUM = 1e-4
TOL_LOOP = 1e-5


def _hf_norm(model):
    """(centres, weight, bias) read from the HF module itself, not through mechlab.methods.dla."""
    hf = model.original_model
    if hasattr(hf, "transformer"):  # GPT-2: LayerNorm
        ln = hf.transformer.ln_f
        return True, ln.weight.detach().float(), ln.bias.detach().float()
    norm = hf.model.norm  # Gemma: RMSNorm with a (1 + weight) gain, no bias
    return False, 1.0 + norm.weight.detach().float(), torch.zeros_like(norm.weight).float()


@pytest.fixture
def model(tiny_model):
    """The tiny model with a non-trivial final norm (random init leaves weight 1 / bias 0), restored after."""
    hf = tiny_model.original_model
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    saved = {n: p.detach().clone() for n, p in norm.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=gen).to(p.device))
    yield tiny_model
    with torch.no_grad():
        for n, p in norm.named_parameters():
            p.copy_(saved[n])


@pytest.fixture
def data(model):
    return text_tokens(model, n_prompts=3, n_pos=24, source="organism", seed=1)


def _names(model):
    out = {"ln_final.hook_scale", "ln_final.hook_in"}
    for layer in range(model.cfg.n_layers):
        out |= {hook_name("z", layer), hook_name("mlp_out", layer)}
    return out


@torch.no_grad()
def _run(model, tokens, hooks=()):
    names = _names(model)
    with model.hooks(fwd_hooks=list(hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logits, cache


def _read(model, x, scale, targets):
    """Writer x [batch, pos, (head,) d_model] read along W_U[:, next token] through the norm with ``scale``."""
    centres, weight, _ = _hf_norm(model)
    if centres:
        x = x - x.mean(-1, keepdim=True)
    w_u = model.W_U.detach().float()[:, targets]  # [d_model, batch, pos]
    sc = scale[..., 0] if x.ndim == 3 else scale[..., 0, None]
    eq = "bpm,mbp->bp" if x.ndim == 3 else "bphm,mbp->bph"
    return torch.einsum(eq, x * weight, w_u) / sc


def _head_des(model, cache, scale, targets):
    """[layer, head, batch, pos-1] direct effect of every head, by hand."""
    rows = []
    for layer in range(model.cfg.n_layers):
        out = torch.einsum("bphd,hdm->bphm", cache[hook_name("z", layer)][:, :-1].float(),
                           model.W_O[layer].detach().float())
        rows.append(_read(model, out, scale[:, :-1], targets).permute(2, 0, 1))
    return torch.stack(rows)


def _mlp_des(model, cache, scale, targets):
    return torch.stack([_read(model, cache[hook_name("mlp_out", layer)][:, :-1].float(), scale[:, :-1], targets)
                        for layer in range(model.cfg.n_layers)])


def _next_logit(logits, targets):
    return logits[:, :-1].float().gather(-1, targets[..., None])[..., 0]


def test_clean_direct_effects_match_hand_einsum_and_sum_to_logits(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, heads=["L0H0"], progress=False)
    logits, cache = _run(model, clean)
    targets = clean[:, 1:]
    scale = cache["ln_final.hook_scale"].float()
    heads = _head_des(model, cache, scale, targets)
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            torch.testing.assert_close(result.clean[f"L{layer}H{h}"], heads[layer, h].cpu(), atol=1e-5, rtol=1e-4)
    mlps = _mlp_des(model, cache, scale, targets)
    torch.testing.assert_close(result.clean["L1 mlp"], mlps[1].cpu(), atol=1e-5, rtol=1e-4)
    b_u = getattr(model, "b_U", torch.zeros(model.cfg.d_vocab)).detach().float()[targets]
    total = result.clean.values.sum(0) + b_u.cpu()
    torch.testing.assert_close(total, _next_logit(logits, targets).cpu(), atol=1e-4, rtol=1e-4)


def test_decomposition_sums_to_delta_logit(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, progress=False)
    parts = result.direct.values + result.heads.values + result.mlps.values + result.fixed.values + result.norm.values
    err = (parts - result.delta_logit.values).abs().max()
    assert err < TOL_SUM
    # the norm term is resolved, not lost in rounding: leaving it out breaks the sum
    without_norm = (parts - result.norm.values - result.delta_logit.values).abs().max()
    assert without_norm > 20 * err
    # self-repair is delta_logit minus the ablated heads' own change
    torch.testing.assert_close(result.self_repair.values, result.heads.values + result.mlps.values
                               + result.fixed.values + result.norm.values, atol=TOL_SUM, rtol=0)


def test_every_ablation_changes_the_logits(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, progress=False)
    moved = result.delta_logit.values.abs().flatten(1).max(1).values
    assert bool((moved > 1e-4).all()), dict(zip(result.labels, moved.tolist(), strict=True))
    assert bool((result.direct.values.abs().flatten(1).max(1).values > 1e-4).all())


def test_batched_sweep_equals_one_head_at_a_time(model, data):
    clean, corrupted = data
    batch = clean.shape[0]
    # 3 ablations per pass: several chunks, the last one short
    result = self_repair_sweep(model, clean, corrupted, max_batch=3 * batch, progress=False)
    logits_c, cache_c = _run(model, clean)
    targets = clean[:, 1:]
    s_clean = cache_c["ln_final.hook_scale"].float()
    heads_c, mlps_c = _head_des(model, cache_c, s_clean, targets), _mlp_des(model, cache_c, s_clean, targets)
    centres, weight, _ = _hf_norm(model)
    for i, label in enumerate(result.labels):
        layer, h = int(label[1:].split("H")[0]), int(label.split("H")[1])
        hooks = ablation_hooks(model, [label], method="resample", reference=corrupted, tokens=clean)
        logits_a, cache_a = _run(model, clean, hooks)
        heads_a, mlps_a = _head_des(model, cache_a, s_clean, targets), _mlp_des(model, cache_a, s_clean, targets)
        d_heads = heads_a - heads_c
        direct = d_heads[layer, h]
        others = d_heads.sum((0, 1)) - direct
        resid = cache_a["ln_final.hook_in"][:, :-1].float()
        s_abl = cache_a["ln_final.hook_scale"][:, :-1, 0].float()
        if centres:
            resid = resid - resid.mean(-1, keepdim=True)
        a_abl = torch.einsum("bpm,mbp->bp", resid * weight, model.W_U.detach().float()[:, targets])
        want = {"delta_logit": _next_logit(logits_a, targets) - _next_logit(logits_c, targets), "direct": direct,
                "heads": others, "mlps": (mlps_a - mlps_c).sum(0),
                "norm": a_abl * (1 / s_abl - 1 / s_clean[:, :-1, 0])}
        for part, value in want.items():
            torch.testing.assert_close(getattr(result, part).values[i], value.cpu(), atol=TOL_LOOP, rtol=1e-4,
                                       msg=lambda m, part=part, label=label: f"{label} {part}: {m}")


def test_group_ablation_and_logit_diff_readout(model, data):
    clean, corrupted = data
    wrong = torch.roll(clean[:, 1:], 1, dims=1)
    result = self_repair_sweep(model, clean, corrupted, heads=[["L0H1", "L1H2"], "L1H0"], wrong=wrong,
                               keep_components=True, progress=False)
    assert result.labels == ["L0H1+L1H2", "L1H0"]
    hooks = ablation_hooks(model, ["L0H1", "L1H2"], method="resample", reference=corrupted, tokens=clean)
    logits_a, _ = _run(model, clean, hooks)
    logits_c, _ = _run(model, clean)

    def ld(lg):
        return _next_logit(lg, clean[:, 1:]) - _next_logit(lg, wrong)

    torch.testing.assert_close(result.delta_logit.values[0], (ld(logits_a) - ld(logits_c)).cpu(), atol=TOL_LOOP,
                               rtol=1e-4)
    parts = sum(getattr(result, p).values for p in ("direct", "heads", "mlps", "fixed", "norm"))
    assert (parts - result.delta_logit.values).abs().max() < TOL_SUM
    changes = result.component_changes("L0H1+L1H2")
    assert changes["L0H0"].abs() < 1e-6  # same layer, not ablated: unchanged
    torch.testing.assert_close(changes["L0H1"] + changes["L1H2"], result.direct.values[0].mean(), atol=1e-6, rtol=0)
    at = result.at(torch.tensor([0, 5, 22]))
    assert at.delta_logit.values.shape == (2, 3, 1)
    assert float(at.delta_logit.values[1, 1, 0]) == float(result.delta_logit.values[1, 1, 5])


def test_slopes_equal_numpy_lstsq():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=gen)
    y = -0.3 * x + 0.2 + 0.1 * torch.randn(400, generator=gen)
    xs, ys = x.double().numpy(), y.double().numpy()
    slope, icpt, n = fit_slope(x, y, intercept=True)
    want = np.linalg.lstsq(np.stack([xs, np.ones_like(xs)], 1), ys, rcond=None)[0]
    assert n == 400 and np.allclose([slope, icpt], want, atol=1e-10)
    slope0, icpt0, _ = fit_slope(x, y, intercept=False)
    assert icpt0 == 0.0 and np.isclose(slope0, np.linalg.lstsq(xs[:, None], ys, rcond=None)[0][0], atol=1e-10)
    assert abs(slope0 - slope) > 1e-3  # the intercept matters on these points
    # filters: threshold then the top 10 % by signed x
    keep = (xs >= 0.5) & (xs >= np.sort(xs)[-40])
    slope_f, icpt_f, n_f = fit_slope(x, y, threshold=0.5, top_percent=10)
    want_f = np.linalg.lstsq(np.stack([xs[keep], np.ones(keep.sum())], 1), ys[keep], rcond=None)[0]
    assert n_f == keep.sum() == 40 and np.allclose([slope_f, icpt_f], want_f, atol=1e-10)
    assert select_points(x, threshold=1.0).sum() == int((xs >= 1.0).sum())
    with pytest.raises(ValueError, match="pass the filters"):
        fit_slope(x, y, threshold=100.0)
    with pytest.raises(ValueError, match="top_percent"):
        fit_slope(x, y, top_percent=0)


def test_backup_slopes_per_head_match_numpy(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, progress=False)
    slopes = backup_slopes(result, top_percent=50)
    xs, ys = result.clean_direct_effect().values, result.compensation("heads").values
    for i, label in enumerate(result.labels):
        x, y = xs[i].flatten().double().numpy(), ys[i].flatten().double().numpy()
        keep = np.argsort(-x)[: int(round(x.size * 0.5))]
        want = np.linalg.lstsq(np.stack([x[keep], np.ones(keep.size)], 1), y[keep], rcond=None)[0]
        assert np.allclose([float(slopes[label]), slopes.meta["intercepts"][i]], want, atol=1e-8), label
    grid = slopes_grid(model, slopes)
    assert grid.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert float(grid[1, 2]) == float(slopes["L1H2"])
    share = norm_share(result, "L0H0")
    i = result.labels.index("L0H0")
    assert np.isclose(share, float(result.norm.values[i].sum() / result.self_repair.values[i].sum()), rtol=1e-5)


def test_bad_input_raises(gpt2_like):
    clean, corrupted = text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="organism")
    with pytest.raises(ValueError, match="corrupted tokens have shape"):
        self_repair_sweep(gpt2_like, clean, corrupted[:, :8], progress=False)
    with pytest.raises(ValueError, match="targets have shape"):
        self_repair_sweep(gpt2_like, clean, corrupted, targets=clean, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        self_repair_sweep(gpt2_like, clean, corrupted, heads=["L7H0"], progress=False)
    with pytest.raises(ValueError, match="source='organism'"):
        text_tokens(gpt2_like, 2, 10, source="openwebtext")  # HF_HUB_OFFLINE=1 in the tests: fails at once
    assert clean.shape == corrupted.shape == (2, 10) and not torch.equal(clean, corrupted)


@pytest.mark.skipif("not __import__('mechlab.core.loading', fromlist=['x']).organism_available()",
                    reason="the organism checkpoint is not shipped yet")
def test_organism_top_name_mover_compensation_matches_its_evaluation():
    """The sweep's self-repair of the organism's top IOI name mover equals the number the organism's own
    evaluation computes (another code path: mechlab.course.organism_card.ioi_circuit) and is positive."""
    from mechlab.core.loading import load_model
    from mechlab.course.organism_card import HELD_OUT_SEED, ioi_circuit
    from mechlab.methods.self_repair import ioi_self_repair

    model = load_model("organism", device="cpu", verbose=False)
    reference = ioi_circuit(model, n=40, seed=HELD_OUT_SEED + 1)
    result = ioi_self_repair(model, n=40, seed=HELD_OUT_SEED + 1, progress=False)
    drop = -result.direct.values.mean((1, 2))
    top = result.labels[int(drop.argmax())]
    assert top == reference["top_name_mover"]
    assert float(drop.max()) == pytest.approx(reference["top_direct_effect"], abs=1e-4)
    repair = float(result.self_repair[top].mean())
    assert repair == pytest.approx(reference["compensation"], abs=1e-4)


def _organism_self_repair_met() -> bool:
    import json

    from mechlab.core.loading import organism_available

    if not organism_available():
        return False
    path = ORGANISM_DIR / "checkpoint" / "evaluation.json"
    return bool(json.loads(path.read_text())["targets_met"]["self_repair"])


@pytest.mark.skipif("not __import__('mechlab.core.loading', fromlist=['x']).organism_available()",
                    reason="the organism checkpoint is not shipped yet")
@pytest.mark.xfail(not _organism_self_repair_met(), strict=True,
                   reason="the shipped organism's card reports the self-repair target as not met")
def test_organism_top_name_mover_is_repaired():
    """Ablating the organism's top IOI name mover costs clearly less than its direct effect (positive
    compensation). Strict xfail while the card says 'not met', so the card and this test cannot disagree."""
    from mechlab.core.loading import load_model
    from mechlab.course.organism_card import HELD_OUT_SEED
    from mechlab.methods.self_repair import ioi_self_repair

    model = load_model("organism", device="cpu", verbose=False)
    result = ioi_self_repair(model, n=40, seed=HELD_OUT_SEED + 1, progress=False)
    drop = -result.direct.values.mean((1, 2))
    top = result.labels[int(drop.argmax())]
    assert float(drop.max()) > 0.5, f"top head {top} has almost no direct effect ({float(drop.max()):.3f})"
    assert float(result.self_repair[top].mean()) > 0.2 * float(drop.max())


@pytest.mark.skipif("not __import__('mechlab.core.loading', fromlist=['x']).organism_available()",
                    reason="the organism checkpoint is not shipped yet")
def test_organism_all_heads_sweep_under_30_seconds_on_cpu():
    import time

    from mechlab.core.loading import load_model

    model = load_model("organism", device="cpu", verbose=False)
    clean, corrupted = text_tokens(model, n_prompts=50, n_pos=100, source="organism")
    # CPU seconds of this process, not wall time: other processes on the machine must not fail the test. 30 s of
    # wall time on 2 threads is at most 60 CPU seconds.
    start = time.process_time()
    result = self_repair_sweep(model, clean, corrupted, progress=False)
    cpu = time.process_time() - start
    assert cpu < 30 * max(1, torch.get_num_threads()), f"the sweep took {cpu:.1f} CPU seconds"
    assert len(result.labels) == model.cfg.n_layers * model.cfg.n_heads


def test_time_sweep_smoke(gpt2_like):
    from mechlab.methods.self_repair import time_sweep

    row = time_sweep(gpt2_like, 2, 8, loop_heads=2)
    assert row["heads"] == 8 and row["batched_s"] > 0 and row["loop_s"] > 0
    assert row["speedup"] == pytest.approx(row["loop_s"] / row["batched_s"])


# ---------------------------------------------------------------------------------------------------------
# the seed's figures' numbers: per-head direct effects, one head's fitted line, the later heads' changes


def test_mean_direct_effects_match_hand_einsum_and_sum_per_layer_to_attn_out(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, progress=False)
    means = mean_direct_effects(result)
    logits, cache = _run(model, clean)
    scale = cache["ln_final.hook_scale"].float()
    heads = _head_des(model, cache, scale, clean[:, 1:]).mean((2, 3))  # [layer, head]
    torch.testing.assert_close(slopes_grid(model, means), heads.cpu(), atol=1e-5, rtol=1e-4)
    assert means.labels == result.labels


def test_top_token_effects_and_reliable_slopes():
    result = _synthetic_sweep()
    eff = top_token_effects(result, top_percent=10)  # 10 % of 40 points: the 4 largest x
    x = result.clean_direct_effect().values.flatten(1)
    want = x.topk(4, dim=1).values.mean(1)
    torch.testing.assert_close(eff.values, want)
    slopes = backup_slopes(result, top_percent=10)
    kept = reliable_slopes(slopes, eff, min_effect=float(want[1]) - 1e-6)
    assert set(kept.labels) == {lab for lab, w in zip(result.labels, want.tolist(), strict=True)
                                if w >= float(want[1]) - 1e-6}
    assert set(kept.meta["dropped"]) == set(result.labels) - set(kept.labels)
    with pytest.raises(ValueError, match="lower min_effect"):
        reliable_slopes(slopes, eff, min_effect=1e3)


def test_slope_reliability_names_each_failed_test():
    # five heads built to fail one test each (or none): y = a * x + b + noise on 200 points
    gen = torch.Generator().manual_seed(5)
    labels = ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    base = 1.0 + torch.rand(5, 4, 50, generator=gen)  # x in [1, 2]: far from 0
    x = base * torch.tensor([1.0, 0.01, 1.0, 1.0, 1.0])[:, None, None]
    a = torch.tensor([0.5, 0.5, -3.0, 0.0, -0.5])
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0])
    noise = torch.randn(5, 4, 50, generator=gen) * torch.tensor([0.01, 0.0001, 0.01, 0.3, 0.01])[:, None, None]
    heads = a[:, None, None] * x + b[:, None, None] + noise
    zero = torch.zeros(5, 4, 50)
    parts = {p: Labelled(zero.clone(), labels, axes=("ablated", "batch", "pos")) for p in PARTS}
    parts["heads"] = Labelled(heads, labels, axes=("ablated", "batch", "pos"))
    clean = Labelled(torch.cat([x, torch.zeros(1, 4, 50)]), labels + ["L1 mlp"], axes=("component", "batch", "pos"))
    result = SelfRepair(**parts, clean=clean, groups=[[lab] for lab in labels])
    rel = slope_reliability(result, top_percent=100, min_effect=0.5, n_boot=500)
    assert rel.reasons["L0H0"] == [] and rel.reliable == ["L0H0"]
    assert rel.reasons["L0H1"] == ["direct effect under 0.500"]
    assert rel.reasons["L0H2"] == ["|slope| over 1"]
    assert "CI includes 0" in rel.reasons["L0H3"]
    assert rel.reasons["L1H0"] == ["sign flips through the origin"]
    rng = np.random.default_rng(0)
    for i in range(5):
        xs, ys = x[i].flatten().double().numpy(), heads[i].flatten().double().numpy()
        assert abs(float(rel.slope[i]) - np.polyfit(xs, ys, 1)[0]) < 1e-6
        assert abs(float(rel.slope_origin[i]) - (xs @ ys) / (xs @ xs)) < 1e-6
        boot = [np.polyfit(xs[j], ys[j], 1)[0] for j in rng.integers(0, xs.size, (300, xs.size))]
        lo, hi = np.quantile(boot, [0.025, 0.975])
        width = hi - lo
        assert abs(float(rel.ci_low[i]) - lo) < 0.3 * width and abs(float(rel.ci_high[i]) - hi) < 0.3 * width
    assert "L0H2: top-token direct effect" in rel.line("L0H2") and "|slope| over 1" in rel.line("L0H2")
    with pytest.raises(ValueError, match="0 < level < 1"):
        slope_reliability(result, top_percent=100, min_effect=0.5, level=1.5)


def test_slope_reliability_marks_a_head_whose_top_tokens_tie_instead_of_raising():
    # L0H1's largest direct effects all sit at position 0, identical in every prompt (as the same BOS token makes
    # them on any model): its top 10 % are one x value, so no line can be fitted through them
    gen = torch.Generator().manual_seed(3)
    labels = ["L0H0", "L0H1"]
    x = 1.0 + torch.rand(2, 4, 10, generator=gen)
    x[1, :, 0] = 5.0
    heads = 0.5 * x + 0.01 * torch.randn(2, 4, 10, generator=gen)
    zero = torch.zeros(2, 4, 10)
    parts = {p: Labelled(zero.clone(), labels, axes=("ablated", "batch", "pos")) for p in PARTS}
    parts["heads"] = Labelled(heads, labels, axes=("ablated", "batch", "pos"))
    clean = Labelled(torch.cat([x, torch.zeros(1, 4, 10)]), labels + ["L1 mlp"], axes=("component", "batch", "pos"))
    result = SelfRepair(**parts, clean=clean, groups=[[lab] for lab in labels])
    with pytest.raises(ValueError, match="distinct point"):
        backup_fit(result, "L0H1", top_percent=10)
    rel = slope_reliability(result, top_percent=10, min_effect=0.5, n_boot=100)
    assert rel.reasons["L0H1"] == ["no line: its 4 top-token points have 1 distinct direct effect(s)"]
    assert float(rel.effect[1]) == 5.0 and bool(rel.slope[1].isnan())
    assert "L0H1" not in rel.reliable and "no line" in rel.line("L0H1")
    assert not bool(rel.slope[0].isnan())


def test_backup_fit_equals_backup_slopes_and_numpy():
    result = _synthetic_sweep()
    slopes = backup_slopes(result, top_percent=25)
    for label in result.labels:
        fit = backup_fit(result, label, top_percent=25)
        assert fit.slope == pytest.approx(float(slopes[label]))
        x, y = fit.x.double().numpy(), fit.y.double().numpy()
        keep = np.argsort(-x)[: int(round(x.size * 0.25))]
        slope, icept = np.polyfit(x[keep], y[keep], 1)
        assert fit.slope == pytest.approx(slope, rel=1e-6) and fit.intercept == pytest.approx(icept, abs=1e-6)
        assert int(fit.kept.sum()) == keep.size and bool(fit.kept[torch.as_tensor(keep)].all())


def test_later_head_changes_match_a_hand_ablation(model, data):
    clean, corrupted = data
    result = self_repair_sweep(model, clean, corrupted, heads=["L0H1"], keep_components=True, progress=False)
    later = later_head_changes(result, "L0H1")
    assert later.labels == [f"L{la}H{h}" for la in range(1, model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    _, cache_c = _run(model, clean)
    s_clean = cache_c["ln_final.hook_scale"].float()
    hooks = ablation_hooks(model, ["L0H1"], method="resample", reference=corrupted, tokens=clean)
    _, cache_a = _run(model, clean, hooks)
    want = (_head_des(model, cache_a, s_clean, clean[:, 1:]) - _head_des(model, cache_c, s_clean, clean[:, 1:]))
    torch.testing.assert_close(later.values, want[1:].mean((2, 3)).flatten().cpu(), atol=1e-5, rtol=1e-4)
    # the heads that cannot see L0H1 did not move, so the later heads carry the whole `heads` part
    assert float(later.values.sum()) == pytest.approx(float(result.heads.values[0].mean()), abs=1e-5)
    with pytest.raises(ValueError, match="group"):
        later_head_changes(result, "L0H1+L0H0")
    last = self_repair_sweep(model, clean, corrupted, heads=[f"L{model.cfg.n_layers - 1}H0"], keep_components=True,
                             progress=False)
    with pytest.raises(ValueError, match="last layer"):
        later_head_changes(last, f"L{model.cfg.n_layers - 1}H0")


def _synthetic_sweep():
    """A SelfRepair with known numbers: 3 heads x 4 prompts x 10 positions, y a bent function of x."""
    gen = torch.Generator().manual_seed(3)
    labels = ["L0H0", "L0H1", "L1H0"]
    x = torch.randn(3, 4, 10, generator=gen) * torch.tensor([0.1, 1.0, 3.0])[:, None, None]
    heads = 0.4 * x + 0.2 * x.clamp(min=0.5) ** 2 + 0.05 * torch.randn(3, 4, 10, generator=gen)
    zero = torch.zeros(3, 4, 10)
    parts = {p: Labelled(zero.clone(), labels, axes=("ablated", "batch", "pos")) for p in PARTS}
    parts["heads"] = Labelled(heads, labels, axes=("ablated", "batch", "pos"))
    clean = Labelled(torch.cat([x, torch.zeros(1, 4, 10)]), labels + ["L1 mlp"], axes=("component", "batch", "pos"))
    return SelfRepair(**parts, clean=clean, groups=[[lab] for lab in labels])
