"""Exact patching and ablations against hand-written one-hook-per-forward loops on both tiny families."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.activations import hook_name
from mechlab.core.runs import Patch, gap_fraction_metric, logit_diff_metric
from mechlab.methods.ablation import ablation_hooks, ablation_scan, all_components
from mechlab.methods.patching import activation_patching, as_token_pair, row_labels, run_patches

CORRECT, WRONG = torch.tensor([5, 6]), torch.tensor([8, 9])


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma"])
def model(request, device):
    """A tiny model whose weights are scaled up: at random init (std 0.02) attention is nearly uniform and every
    patch moves the metric by ~1e-4, too little for a 1e-5 comparison to tell one patch from another."""
    from mechlab.core.loading import load_model

    m = load_model(request.param, device=device, seed=4, verbose=False)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.mul_(6.0)
    return m


def _pair(model):
    gen = torch.Generator().manual_seed(11)
    clean = torch.randint(1, model.cfg.d_vocab, (2, 6), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, model.cfg.d_vocab, (2,), generator=gen)
    corrupted[:, 4] = torch.randint(1, model.cfg.d_vocab, (2,), generator=gen)
    return clean, corrupted


def _metric():
    return logit_diff_metric(CORRECT, WRONG)


def _loop_patch(model, run_tokens, source_tokens, name, head, pos):
    """Reference: one forward pass with one hand-written hook that copies the source run's slice."""
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda n: n == name)
    src = cache[name]

    def hook(act, hook):
        act = act.clone()
        idx = (slice(None), slice(None) if pos is None else pos) + (() if head is None else (head,))
        act[idx] = src[idx]
        return act

    logits = model.run_with_hooks(run_tokens, fwd_hooks=[(name, hook)])
    return float(_metric()(logits).mean().detach())


@pytest.mark.parametrize("kind,direction", [("resid_pre", "noising"), ("z", "denoising"), ("k", "noising"),
                                            ("mlp_out", "denoising"), ("q", "noising")])
def test_batched_per_position_equals_the_loop(model, kind, direction):
    clean, corrupted = _pair(model)
    run, source = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    # max_batch=6: three copies of the 2-prompt batch per pass, so chunks cut across rows and layers
    res = activation_patching(model, clean, corrupted, _metric(), kind=kind, direction=direction, max_batch=6,
                              progress=False)
    n_rows = len(row_labels(model, kind, range(model.cfg.n_layers)))
    assert res.values.shape == (n_rows, clean.shape[1])
    heads_per_layer = n_rows // model.cfg.n_layers
    for row in range(n_rows):
        layer, head = divmod(row, heads_per_layer)
        head = head if kind in ("z", "q", "k", "v") else None
        for pos in (2, 5):
            want = _loop_patch(model, run, source, hook_name(kind, layer), head, pos)
            assert abs(float(res.values[row, pos]) - want) < 1e-5, (res.labels[row], pos)
    base = res.meta["metric_baseline"]
    assert (res.values - base).abs().max() > 1e-2  # some patch changed the output
    # positions where the two runs agree up to that point change nothing when patched in layer 0
    if kind == "resid_pre":
        assert torch.allclose(res.values[0, :2], torch.tensor(base), atol=1e-5)


def test_mqa_kv_heads_are_patched_as_one_unit(gemma_like):
    model = gemma_like
    assert model.cfg.n_key_value_heads == 1
    clean, corrupted = _pair(model)
    res = activation_patching(model, clean, corrupted, _metric(), kind="v", per_position=False, progress=False)
    assert res.labels == ["L0KV0", "L1KV0"]
    want = _loop_patch(model, clean, corrupted, hook_name("v", 1), 0, None)
    assert abs(float(res["L1KV0"]) - want) < 1e-5


def test_all_positions_heads_equal_the_loop(model):
    clean, corrupted = _pair(model)
    res = activation_patching(model, clean, corrupted, _metric(), kind="z", per_position=False, max_batch=4,
                              progress=False)
    assert res.axes == ("component",) and len(res) == model.cfg.n_layers * model.cfg.n_heads
    for label in ("L0H1", "L1H3"):
        layer, head = int(label[1]), int(label[3])
        want = _loop_patch(model, clean, corrupted, hook_name("z", layer), head, None)
        assert abs(float(res[label]) - want) < 1e-5


def test_whole_residual_patch_recovers_the_other_run_and_normalises(model):
    """Patching the whole residual stream entering layer 0 *is* the other run: 0 / 1 of the gap."""
    clean, corrupted = _pair(model)
    metric = _metric()
    with torch.no_grad():
        m_clean, m_corr = float(metric(model(clean)).mean()), float(metric(model(corrupted)).mean())
    noise = activation_patching(model, clean, corrupted, metric, kind="resid_pre", per_position=False,
                                normalise=True, progress=False)
    denoise = activation_patching(model, clean, corrupted, metric, kind="resid_pre", per_position=False,
                                  direction="denoising", normalise=True, progress=False)
    assert abs(float(noise["L0 resid_pre"])) < 1e-4 and abs(float(denoise["L0 resid_pre"]) - 1) < 1e-4
    eff = activation_patching(model, clean, corrupted, metric, kind="resid_pre", per_position=False, effect=True,
                              progress=False)
    assert abs(float(eff["L0 resid_pre"]) - (m_corr - m_clean)) < 1e-4
    frac = gap_fraction_metric(metric, m_clean, m_corr)
    assert abs(float(frac(model(clean)).mean()) - 1) < 1e-5 and abs(float(frac(model(corrupted)).mean())) < 1e-5


def test_per_prompt_positions_in_the_metric(gpt2_like):
    tokens = _pair(gpt2_like)[0]
    logits = gpt2_like(tokens)
    metric = logit_diff_metric(CORRECT, WRONG, pos=torch.tensor([3, 5]))
    want = torch.stack([logits[0, 3, 5] - logits[0, 3, 8], logits[1, 5, 6] - logits[1, 5, 9]])
    torch.testing.assert_close(metric(logits), want.float())


# ---------------------------------------------------------------------------------------------------------
# ablations


def _loop_ablate(model, tokens, label, replacement):
    """Reference: overwrite one head's z (or one MLP output) with ``replacement`` [batch, pos, ...]."""
    if label.endswith("mlp"):
        name, head = hook_name("mlp_out", int(label[1:].split()[0])), None
    else:
        name, head = hook_name("z", int(label[1:label.index("H")])), int(label[label.index("H") + 1:])

    def hook(act, hook):
        act = act.clone()
        if head is None:
            act[:] = replacement(act)
        else:
            act[:, :, head] = replacement(act)[:, :, head]
        return act

    return float(_metric()(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])).mean())


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablation_scan_equals_the_loop(model, method):
    tokens, reference = _pair(model)
    reference = reference.flip(0)
    scan = ablation_scan(model, tokens, _metric(), method=method, reference=None if method == "zero" else reference,
                         effect=False, max_batch=5, progress=False)
    assert scan.labels == all_components(model)
    names = {hook_name(k, layer) for k in ("z", "mlp_out") for layer in range(model.cfg.n_layers)}
    _, ref_cache = model.run_with_cache(reference, names_filter=lambda n: n in names)
    for label in ("L0H2", "L1 mlp", "L1H0"):
        name = hook_name("mlp_out" if label.endswith("mlp") else "z", int(label[1]))
        if method == "zero":
            def repl(act):
                return torch.zeros_like(act)
        elif method == "mean":
            def repl(act, name=name):
                return ref_cache[name].mean(0, keepdim=True).expand_as(act)
        else:
            def repl(act, name=name):
                return ref_cache[name]
        want = _loop_ablate(model, tokens, label, repl)
        assert abs(float(scan[label]) - want) < 1e-5, label
    unablated = float(_metric()(model(tokens)).mean())
    assert (scan.values - unablated).abs().max() > 1e-2


def test_ablation_hooks_ablate_heads_together(model):
    tokens = _pair(model)[0]
    base = model(tokens)
    with model.hooks(fwd_hooks=ablation_hooks(model, ["L1H0", "L1H2", "L0 mlp"], method="zero")):
        ablated = model(tokens)
    assert not torch.allclose(base, ablated)

    def zero_heads(z, hook):
        z = z.clone()
        z[:, :, [0, 2]] = 0
        return z

    want = model.run_with_hooks(tokens, fwd_hooks=[(hook_name("z", 1), zero_heads),
                                                   (hook_name("mlp_out", 0), lambda a, hook: torch.zeros_like(a))])
    torch.testing.assert_close(ablated, want, atol=1e-5, rtol=0)
    assert len(model.hook_dict[hook_name("z", 1)]._forward_hooks) == 0  # the scope removed them
    reference = _pair(model)[1]
    with model.hooks(fwd_hooks=ablation_hooks(model, ["L0H1"], method="resample", reference=reference,
                                              tokens=tokens)):
        resampled = float(_metric()(model(tokens)).mean())
    _, ref = model.run_with_cache(reference, names_filter=lambda n: n == hook_name("z", 0))
    assert abs(resampled - _loop_ablate(model, tokens, "L0H1", lambda act: ref[hook_name("z", 0)])) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_bad_input(gpt2_like):
    model = gpt2_like
    metric = _metric()
    with pytest.raises(ValueError, match=r"(?s)clean is \d+ tokens but corrupted is \d+ tokens.*clean:.*corrupted:"):
        as_token_pair(model, ["ab cd", "ab cd"], ["ab cde", "ab cd"])
    clean, corrupted = _pair(model)
    with pytest.raises(ValueError, match=r"(?s)shape \(2, 6\) but corrupted tokens have \(2, 5\).*clean\[0\]"):
        activation_patching(model, clean, corrupted[:, :5], metric, kind="z")
    with pytest.raises(ValueError, match="unknown activation kind"):
        activation_patching(model, clean, corrupted, metric, kind="attn_pattern")
    with pytest.raises(ValueError, match="does not exist"):
        activation_patching(model, clean, corrupted, metric, kind="z", layers=[5])
    with pytest.raises(ValueError, match="direction"):
        activation_patching(model, clean, corrupted, metric, kind="z", direction="sideways")
    with pytest.raises(ValueError, match="integer tensor"):
        activation_patching(model, clean.float(), corrupted.float(), metric, kind="z")
    with pytest.raises(ValueError, match="one number per prompt"):
        activation_patching(model, clean, corrupted, lambda lg: lg[:, -1, :3].sum(), kind="z")
    with pytest.raises(ValueError, match="does not tell the runs apart"):
        activation_patching(model, clean, clean, metric, kind="z", normalise=True, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        ablation_scan(model, clean, metric, components=["L7H0"])
    with pytest.raises(ValueError, match="not understood"):
        ablation_scan(model, clean, metric, components=["head 3"])
    with pytest.raises(ValueError, match="needs reference tokens"):
        ablation_scan(model, clean, metric, method="mean")
    with pytest.raises(ValueError, match="method"):
        ablation_scan(model, clean, metric, method="shuffle", reference=clean)
    with pytest.raises(ValueError, match="run's shape"):
        ablation_scan(model, clean, metric, method="resample", reference=clean[:1])
    name = hook_name("z", 0)
    src = torch.zeros(2, 6, model.cfg.n_heads, model.cfg.d_head)
    with pytest.raises(ValueError, match="on meta"):
        run_patches(model, clean, [Patch(name, 0)], {name: src.to("meta")}, metric)
    with pytest.raises(ValueError, match="dtype"):
        run_patches(model, clean, [Patch(name, 0)], {name: src.long()}, metric)
    with pytest.raises(ValueError, match="one correct id per prompt"):
        logit_diff_metric(torch.tensor([[1, 2]]), torch.tensor([3]))
