"""AtP, layer-wise IG and input-embedding IG against independent computations: explicit hook patches written here,
finite differences of such patches, and the completeness of integrated gradients."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name, n_heads_for
from mechlab.core.activations import PATCH_KINDS as KINDS
from mechlab.core.runs import logit_diff_metric
from mechlab.methods.attribution import (
    attribution_patching,
    ig_alphas,
    input_integrated_gradients,
    integrated_gradients,
)

BATCH, POS = 3, 7


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(5, 250, (BATCH, POS), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(5, 250, (BATCH,), generator=g)
    corrupted[:, 4] = 7
    metric = logit_diff_metric(torch.tensor([10, 11, 12]), torch.tensor([20, 21, 22]))
    return clean, corrupted, metric


def _acts(model, tokens, name):
    store = {}

    def keep(act, hook):
        store["a"] = act.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(name, keep)])
    return store["a"]


def _patched_metric(model, tokens, metric, name, edit, frozen_scale=None) -> float:
    """The independent exact patch: run ``tokens`` with ``edit(act)`` replacing the activation ``name``."""
    hooks = [(name, lambda act, hook: edit(act))]
    if frozen_scale is not None:
        hooks.append((FINAL_NORM_SCALE, lambda act, hook: frozen_scale))
    with torch.no_grad():
        return float(metric(model.run_with_hooks(tokens, fwd_hooks=hooks)).mean())


def _runs(direction, clean, corrupted):
    return (clean, corrupted) if direction == "noising" else (corrupted, clean)


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_atp_equals_exact_patch_where_metric_is_linear(tiny_model, prompts, direction):
    """With the final scale frozen the metric is linear in the last MLP's output, so AtP equals the exact patch
    within 1e-4 (the acceptance criterion), to float precision. The last layer's head and attention outputs still
    pass through that MLP, a mild bend: there AtP is off only by that second-order term, a few % of the effect."""
    model, (clean, corrupted, metric) = tiny_model, prompts
    base, target = _runs(direction, clean, corrupted)
    last = model.cfg.n_layers - 1
    atp = attribution_patching(model, clean, corrupted, metric, kinds=["z", "attn_out", "mlp_out"],
                               direction=direction, freeze_final_scale=True, layers=[last])
    scale = _acts(model, base, FINAL_NORM_SCALE)
    with torch.no_grad():
        hooks = [(FINAL_NORM_SCALE, lambda act, hook: scale)]
        m0 = float(metric(model.run_with_hooks(base, fwd_hooks=hooks)).mean())
    checked = 0
    for kind in ("z", "attn_out", "mlp_out"):
        name = hook_name(kind, last)
        tgt = _acts(model, target, name)
        heads = range(model.cfg.n_heads) if kind == "z" else [None]
        for h in heads:
            label = f"L{last}H{h}" if kind == "z" else f"L{last} {'attn' if kind == 'attn_out' else 'mlp'}"
            for p in range(POS):
                def edit(act, p=p, h=h, tgt=tgt):
                    act = act.clone()
                    if h is None:
                        act[:, p] = tgt[:, p]
                    else:
                        act[:, p, h] = tgt[:, p, h]
                    return act
                exact = _patched_metric(model, base, metric, name, edit, scale) - m0
                gap = abs(float(atp[kind][label][p]) - exact)
                if kind == "mlp_out":  # linear: equal within 1e-4, in fact to float precision
                    assert gap < 1e-4 and gap <= 1e-6 + 1e-4 * abs(exact), (kind, label, p, exact)
                else:  # through the last MLP: only the second-order term separates them
                    assert gap < 1e-4 + 0.05 * abs(exact), (kind, label, p, exact)
                checked += abs(exact) > 1e-5
    assert checked > 5  # the comparison is not all zeros


def test_atp_is_not_exact_without_frozen_scale_and_nonlinear_nodes(tiny_model, prompts):
    """AtP is an approximation: on resid_pre of layer 0 it differs from the exact patch by more than noise."""
    model, (clean, corrupted, metric) = tiny_model, prompts
    atp = attribution_patching(model, clean, corrupted, metric, kinds=["resid_pre"], layers=[0])["resid_pre"]
    name = hook_name("resid_pre", 0)
    tgt = _acts(model, corrupted, name)
    exact = _patched_metric(model, clean, metric, name, lambda act: tgt) - _patched_metric(
        model, clean, metric, name, lambda act: act)
    assert abs(float(atp.values.sum()) - exact) > 1e-4


@pytest.mark.parametrize("kind", ["resid_pre", "z", "q", "k", "v", "mlp_out"])
def test_atp_gradient_matches_finite_differences(tiny_model, prompts, kind):
    """Per head (per K/V head for k, v): AtP equals the derivative of the exact patch along the step, measured by a
    central difference of explicit patches a + t (a_target - a)."""
    model, (clean, corrupted, metric) = tiny_model, prompts
    atp = attribution_patching(model, clean, corrupted, metric, kinds=[kind], layers=[0])[kind]
    name = hook_name(kind, 0)
    a0, a1 = _acts(model, clean, name), _acts(model, corrupted, name)
    n = n_heads_for(model, kind) if kind in ("z", "q", "k", "v") else 1
    assert len(atp) == n
    t = 1e-2
    for h in range(n):
        mask = torch.zeros_like(a0)
        if a0.ndim == 4:
            mask[:, :, h] = 1
        else:
            mask[:] = 1
        step = (a1 - a0) * mask
        plus = _patched_metric(model, clean, metric, name, lambda act, s=step: a0 + t * s)
        minus = _patched_metric(model, clean, metric, name, lambda act, s=step: a0 - t * s)
        fd = (plus - minus) / (2 * t)
        got = float(atp.values[h].sum())
        assert abs(got - fd) <= 1e-5 + 1e-2 * abs(fd), (kind, h, got, fd)


def test_kv_rows_are_per_kv_head(gemma_like, gpt2_like, prompts):
    clean, corrupted, metric = prompts
    for model, tag in ((gemma_like, "KV"), (gpt2_like, "H")):
        atp = attribution_patching(model, clean, corrupted, metric, kinds=["q", "k", "v"])
        n_kv = n_heads_for(model, "k")
        assert atp["k"].labels[: n_kv] == [f"L0{tag}{g}" for g in range(n_kv)]
        assert atp["q"].values.shape == (model.cfg.n_layers * model.cfg.n_heads, POS)
        assert atp["v"].values.shape == (model.cfg.n_layers * n_kv, POS)
    assert n_heads_for(gemma_like, "k") == 1


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_ig_one_step_equals_atp(tiny_model, prompts, direction):
    model, (clean, corrupted, metric) = tiny_model, prompts
    atp = attribution_patching(model, clean, corrupted, metric, direction=direction)
    eap = input_integrated_gradients(model, clean, corrupted, metric, steps=1, direction=direction, progress=False)
    for kind in KINDS:
        ig = integrated_gradients(model, clean, corrupted, metric, kind=kind, steps=1, direction=direction,
                                  max_batch=BATCH, progress=False)
        torch.testing.assert_close(ig.values, atp[kind].values, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(eap[kind].values, atp[kind].values, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["resid_pre", "attn_out", "mlp_out", "z", "v"])
def test_ig_completeness_matches_exact_layer_patch(tiny_model, prompts, kind):
    """Summed over a whole layer, IG at m = 32 equals the exact effect of patching that layer within 2 %."""
    model, (clean, corrupted, metric) = tiny_model, prompts
    ig = integrated_gradients(model, clean, corrupted, metric, kind=kind, steps=32, max_batch=40, progress=False)
    atp = attribution_patching(model, clean, corrupted, metric, kinds=[kind])[kind]
    m0 = _patched_metric(model, clean, metric, hook_name(kind, 0), lambda act: act)
    rows, largest = len(ig) // model.cfg.n_layers, 0.0
    for layer in range(model.cfg.n_layers):
        name = hook_name(kind, layer)
        tgt = _acts(model, corrupted, name)
        exact = _patched_metric(model, clean, metric, name, lambda act, tgt=tgt: tgt) - m0
        got = float(ig.values[layer * rows:(layer + 1) * rows].sum())
        largest = max(largest, abs(exact))
        assert abs(got - exact) <= 0.02 * abs(exact) + 1e-7, (kind, layer, got, exact)
    assert largest > 1e-5  # the patch moved the metric
    # the injection is real: on a nonlinear node IG moves away from plain AtP
    assert float((ig.values - atp.values).abs().max()) > 1e-3 * float(atp.values.abs().max())


def test_input_ig_completeness(tiny_model, prompts):
    """Input-embedding IG: the input embeddings' attributions sum to metric(corrupted) - metric(clean)."""
    model, (clean, corrupted, metric) = tiny_model, prompts
    res = input_integrated_gradients(model, clean, corrupted, metric, kinds=["resid_pre"], steps=32,
                                     max_batch=48, progress=False)["resid_pre"]
    with torch.no_grad():
        total = float(metric(model(corrupted)).mean() - metric(model(clean)).mean())
    assert abs(float(res["L0 resid_pre"].sum()) - total) <= 0.02 * abs(total)


def test_chunking_does_not_change_ig(gpt2_like, prompts):
    clean, corrupted, metric = prompts
    a = integrated_gradients(gpt2_like, clean, corrupted, metric, kind="q", steps=5, max_batch=BATCH, progress=False)
    b = integrated_gradients(gpt2_like, clean, corrupted, metric, kind="q", steps=5, max_batch=100, progress=False)
    torch.testing.assert_close(a.values, b.values, atol=1e-7, rtol=1e-4)


def test_ig_alphas_trapezoid():
    assert ig_alphas(1) == [(0.0, 1.0)]
    pairs = ig_alphas(5)
    assert [a for a, _ in pairs] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert abs(sum(w for _, w in pairs) - 1) < 1e-12


def test_normalise_and_meta(gpt2_like, prompts):
    clean, corrupted, metric = prompts
    raw = attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["z"], direction="denoising")["z"]
    norm = attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["z"], direction="denoising",
                                normalise=True)["z"]
    with torch.no_grad():
        gap = float(metric(gpt2_like(clean)).mean() - metric(gpt2_like(corrupted)).mean())
    torch.testing.assert_close(norm.values * gap, raw.values, atol=1e-6, rtol=1e-4)
    assert norm.meta["direction"] == "denoising" and "gap" in norm.unit
    assert "corrupted, target = clean" in norm.meta["estimates"]


def test_bf16_model_fp32_accumulation(prompts):
    from mechlab.core.loading import load_model

    clean, corrupted, metric = prompts
    m32 = load_model("tiny-gpt2", seed=1, verbose=False)
    m16 = load_model("tiny-gpt2", seed=1, dtype="bfloat16", verbose=False)
    assert next(m16.parameters()).dtype == torch.bfloat16
    for fn in (lambda m: attribution_patching(m, clean, corrupted, metric, kinds=["z", "mlp_out"])["z"],
               lambda m: integrated_gradients(m, clean, corrupted, metric, kind="z", steps=4, progress=False)):
        a, b = fn(m32).values, fn(m16).values
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert float((a - b).norm() / a.norm()) < 0.1


def _live_hooks(model) -> list[str]:
    """Every hook point that still holds a forward or backward hook (the registry itself, not the outputs)."""
    out = []
    for name, hp in model.hook_dict.items():
        registered = (len(hp._forward_hooks) + len(hp._backward_hooks) + len(hp._forward_pre_hooks)
                      + len(getattr(hp, "_backward_pre_hooks", {})) + len(getattr(hp, "fwd_hooks", []))
                      + len(getattr(hp, "bwd_hooks", [])))
        if registered:
            out.append(name)
    return out


def test_hooks_do_not_survive(gpt2_like, prompts):
    """AtP's hooks add a zero leaf, so a leftover one would not change any output: look at the registry. Also
    after a call that raises in the middle of its last forward pass, when the method's own hooks (injection,
    interpolation, frozen scale) are in place, not merely the caching pass's."""
    clean, corrupted, metric = prompts
    assert _live_hooks(gpt2_like) == []
    calls = [
        lambda: integrated_gradients(gpt2_like, clean, corrupted, metric, kind="z", steps=2, progress=False),
        lambda: attribution_patching(gpt2_like, clean, corrupted, metric, freeze_final_scale=True),
        lambda: input_integrated_gradients(gpt2_like, clean, corrupted, metric, kinds=["z", "mlp_out"], steps=2,
                                           freeze_final_scale=True, progress=False),
    ]
    final_norms = []  # how many times each call runs the final norm: its last run is the method's own pass

    def count(*args, **kwargs):
        final_norms[-1] += 1

    handle = gpt2_like.original_model.transformer.ln_f.register_forward_pre_hook(count)
    try:
        for call in calls:
            final_norms.append(0)
            call()
            assert _live_hooks(gpt2_like) == []
    finally:
        handle.remove()
    assert all(n >= 2 for n in final_norms), final_norms  # a caching pass, then the method's own

    seen = []
    state = {"left": 0}

    def boom(*args, **kwargs):  # the last final norm of the call fails, after every block's hooks have fired
        state["left"] -= 1
        if state["left"] == 0:
            seen.append(_live_hooks(gpt2_like))
            raise RuntimeError("simulated failure mid-forward")

    handle = gpt2_like.original_model.transformer.ln_f.register_forward_pre_hook(boom)
    try:
        for call, n in zip(calls, final_norms, strict=True):
            state["left"] = n
            with pytest.raises(RuntimeError, match="mid-forward"):
                call()
            assert _live_hooks(gpt2_like) == []
    finally:
        handle.remove()
    assert len(seen) == len(calls) and all(seen)  # the hooks were in place when it raised: the check can fail
    # the frozen-scale hook of AtP and input-IG was among them (a caching pass does not hook the scale)
    assert all(any("ln_final" in name for name in live) for live in seen[1:]), seen


def test_bad_input(gpt2_like, prompts):
    clean, corrupted, metric = prompts
    with pytest.raises(ValueError, match="shape"):
        attribution_patching(gpt2_like, clean, corrupted[:, :-1], metric)
    with pytest.raises(ValueError, match="unknown activation kinds"):
        attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["hook_z"])
    with pytest.raises(ValueError, match="direction"):
        attribution_patching(gpt2_like, clean, corrupted, metric, direction="forward")
    with pytest.raises(ValueError, match="one number per prompt"):
        attribution_patching(gpt2_like, clean, corrupted, lambda logits: logits[:, -1, 0].sum())
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(gpt2_like, clean, corrupted, metric, kind="z", steps=0)
    with pytest.raises(ValueError, match="integer tensor"):
        attribution_patching(gpt2_like, clean.float(), corrupted, metric)
    with pytest.raises(ValueError, match="layer"):
        attribution_patching(gpt2_like, clean, corrupted, metric, layers=[5])
    with pytest.raises(ValueError, match="gap"):
        attribution_patching(gpt2_like, clean, clean, metric, normalise=True)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.skipif("not __import__('mechlab.core.loading', fromlist=['x']).organism_available()",
                    reason="needs the shipped organism checkpoint")
def test_organism_ioi_heads_rank_like_exact_patching():
    """Over all heads of the organism on IOI, against exact patching of each head's z: IG (m=16) ranks the heads
    like the exact patch (Spearman >= 0.9). AtP agrees linearly (Pearson >= 0.95), finds the same set of heads
    that matter (over 5 % of the largest effect) with the same top head and the same signs. AtP's exact order
    within that set is not asserted: on the shipped checkpoint one head carries -2.4 and five others lie between
    -0.65 and -0.38, where AtP's first-order error (it gives the top head -1.4) swaps neighbours (measured:
    Spearman over all heads 0.97 for AtP, 0.99 for IG; the previous checkpoint gave AtP 0.69)."""
    from mechlab.core.loading import load_model
    from mechlab.data.ioi import corrupt, ioi_batch, make_ioi

    model = load_model("organism", verbose=False)
    samples = make_ioi(16, seed=0, templates=[0])
    clean_b, corr_b = ioi_batch(model, samples), ioi_batch(model, corrupt(samples, "abc", seed=1))
    rows = torch.arange(len(samples))

    def metric(logits):
        final = logits[rows, clean_b.end].float()
        return final[rows, clean_b.answer] - final[rows, clean_b.wrong]

    clean, corrupted = clean_b.tokens, corr_b.tokens
    atp = attribution_patching(model, clean, corrupted, metric, kinds=["z"])["z"].values.sum(-1)
    ig = integrated_gradients(model, clean, corrupted, metric, kind="z", steps=16, progress=False).values.sum(-1)
    m0 = _patched_metric(model, clean, metric, hook_name("z", 0), lambda act: act)
    exact = []
    for layer in range(model.cfg.n_layers):
        name = hook_name("z", layer)
        tgt = _acts(model, corrupted, name)
        for h in range(model.cfg.n_heads):
            def edit(act, h=h, tgt=tgt):
                act = act.clone()
                act[:, :, h] = tgt[:, :, h]
                return act
            exact.append(_patched_metric(model, clean, metric, name, edit) - m0)
    exact = torch.tensor(exact)
    assert _spearman(ig, exact) >= 0.9
    assert float(torch.corrcoef(torch.stack([atp, exact]))[0, 1]) >= 0.95
    floor = 0.05 * float(exact.abs().max())
    matter = [int(i) for i in exact.abs().argsort(descending=True) if exact[i].abs() > floor]
    assert 1 <= len(matter) < len(exact), "the comparison needs heads that matter and heads that do not"
    assert sorted(int(i) for i in atp.abs().argsort(descending=True)[:len(matter)]) == sorted(matter)
    assert int(atp.abs().argmax()) == matter[0]
    assert bool((atp[matter].sign() == exact[matter].sign()).all())
