"""Path patching against a hand computation (one sender at a time, full caches, run_with_hooks) and against DLA."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.runs import logit_diff_metric
from mechlab.methods.dla import cache_names as dla_names
from mechlab.methods.dla import direct_effects, unembed_directions
from mechlab.methods.path_patching import path_patching


def _prompts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(5, 250, (3, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(5, 250, (3,), generator=g)
    corrupted[:, 4] = torch.randint(5, 250, (3,), generator=g)
    good, bad = torch.randint(5, 250, (3,), generator=g), torch.randint(5, 250, (3,), generator=g)
    return clean, corrupted, good, bad, logit_diff_metric(good, bad)


def _hand(model, clean, corrupted, metric, sender, receivers=None, kinds=("q",), freeze_mlps=True):
    """Path patching written out: full caches, hook functions per layer, one sender per call."""
    cc, xc = _full_caches(model, clean, corrupted)
    sl, sh = sender
    n_layers = model.cfg.n_layers
    hooks = []
    for layer in range(n_layers):
        def freeze_z(act, hook, layer=layer):
            new = cc[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == sl:
                new[:, :, sh] = xc[f"blocks.{layer}.attn.hook_z"][:, :, sh]
            return new
        hooks.append((f"blocks.{layer}.attn.hook_z", freeze_z))
        if freeze_mlps:
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook, layer=layer:
                          cc[f"blocks.{layer}.hook_mlp_out"].clone()))
    if receivers is None:
        return metric(model.run_with_hooks(clean, fwd_hooks=hooks))
    seen = {}
    for layer in {r[0] for r in receivers}:
        for kind in kinds:
            name = f"blocks.{layer}.attn.hook_{kind}"
            hooks.append((name, lambda act, hook, name=name: seen.__setitem__(name, act.clone())))
    model.run_with_hooks(clean, fwd_hooks=hooks)
    writes = []
    for layer in {r[0] for r in receivers}:
        for kind in kinds:
            name = f"blocks.{layer}.attn.hook_{kind}"
            n_kv = model.cfg.n_heads // seen[name].shape[2]
            idx = sorted({h // n_kv for rl, h in receivers if rl == layer})

            def write(act, hook, name=name, idx=idx):
                act = act.clone()
                act[:, :, idx] = seen[name][:, :, idx]
                return act
            writes.append((name, write))
    return metric(model.run_with_hooks(clean, fwd_hooks=writes))


_CACHES: dict = {}


def _full_caches(model, clean, corrupted):
    key = (id(model), clean.sum().item(), corrupted.sum().item())
    if key not in _CACHES:
        _CACHES.clear()
        _CACHES[key] = (model.run_with_cache(clean)[1], model.run_with_cache(corrupted)[1])
    return _CACHES[key]


@pytest.mark.parametrize("freeze_mlps", [True, False])
def test_to_logits_equals_hand_computation(tiny_model, freeze_mlps):
    clean, corrupted, _, _, metric = _prompts(tiny_model)
    senders = ["L0H0", "L0H3", "L1H1", "L1H2"]
    res = path_patching(tiny_model, clean, corrupted, metric, senders=senders, freeze_mlps=freeze_mlps,
                        max_batch=6, progress=False)  # 2 senders per pass: the chunks must line up
    assert res.labels == senders and res.meta["mlps"] == ("frozen at clean" if freeze_mlps else "recomputed")
    for label, (layer, head) in zip(senders, [(0, 0), (0, 3), (1, 1), (1, 2)], strict=True):
        with torch.no_grad():
            want = _hand(tiny_model, clean, corrupted, metric, (layer, head), freeze_mlps=freeze_mlps)
        torch.testing.assert_close(res.meta["per_prompt"][res.index(label)], want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma"])
def sharp_model(request):
    """Matrices x4: at random init (std 0.02) attention is nearly uniform, and a sender's path into a receiver's
    query or key moves the metric by ~4e-5, too close to the 1e-5 tolerance for the comparison to tell a slightly
    wrong patch (the wrong K/V head, a missed position) from the right one."""
    from mechlab.core.loading import load_model

    model = load_model(request.param, seed=1 if request.param == "tiny-gpt2" else 2, verbose=False)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(4.0)
    return model


@pytest.mark.parametrize("kinds", [("q",), ("k",), ("v",), ("k", "v")])
def test_to_receiver_inputs_equals_hand_computation(sharp_model, kinds):
    clean, corrupted, _, _, metric = _prompts(sharp_model, seed=1)
    receivers = ["L1H0", "L1H2"]
    res = path_patching(sharp_model, clean, corrupted, metric, senders=["L0H1", "L0H2"], receivers=receivers,
                        receiver_input=kinds, progress=False)
    for label, sender in (("L0H1", (0, 1)), ("L0H2", (0, 2))):
        with torch.no_grad():
            want = _hand(sharp_model, clean, corrupted, metric, sender, [(1, 0), (1, 2)], kinds)
            effect = float((want - metric(sharp_model(clean))).abs().max())
        assert effect > 100 * 1e-5, f"{kinds} {label}: the path moves the metric by only {effect:.1e}"
        torch.testing.assert_close(res.meta["per_prompt"][res.index(label)], want, atol=1e-5, rtol=0)


def test_multi_query_kv_receivers_patch_the_shared_kv_head(gemma_like, gpt2_like):
    clean, corrupted, _, _, metric = _prompts(gemma_like)
    res = path_patching(gemma_like, clean, corrupted, metric, senders=["L0H1"], receivers=["L1H0", "L1H3"],
                        receiver_input="k", progress=False)
    assert res.meta["receiver_slots"] == ["L1KV0 k"]  # one K/V head, shared by all four query heads
    res = path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H1"], receivers=["L1H0", "L1H3"],
                        receiver_input=("q", "k"), progress=False)
    assert res.meta["receiver_slots"] == ["L1H0 q", "L1H3 q", "L1H0 k", "L1H3 k"]


def test_to_logits_with_frozen_scale_is_the_dla_difference(tiny_model):
    """Sender -> logits, MLPs and final scale frozen at clean = the sender's DLA(corrupted) - DLA(clean) through the
    clean scale and the unembedding."""
    clean, corrupted, good, bad, metric = _prompts(tiny_model, seed=2)
    res = path_patching(tiny_model, clean, corrupted, metric, freeze_mlps=True, freeze_final_scale=True,
                        effect=True, progress=False)
    names = dla_names(tiny_model)
    with torch.no_grad():
        _, cc = tiny_model.run_with_cache(clean, names_filter=lambda n: n in names)
        _, xc = tiny_model.run_with_cache(corrupted, names_filter=lambda n: n in names)
    direction = (unembed_directions(tiny_model, good) - unembed_directions(tiny_model, bad))[:, None]
    scale = cc["ln_final.hook_scale"]
    d_corr = direct_effects(tiny_model, xc, direction, positions=slice(-1, None), scale=scale)
    d_clean = direct_effects(tiny_model, cc, direction, positions=slice(-1, None), scale=scale)
    for label in res.labels:
        want = (d_corr[label] - d_clean[label])[:, 0]
        torch.testing.assert_close(res.meta["per_prompt"][res.index(label)], want, atol=1e-5, rtol=0)
    assert res.values.abs().max() > 1e-3  # the patch moved something: the comparison is not 0 == 0


def test_patch_changes_the_output_and_a_no_op_is_detected(gpt2_like):
    clean, corrupted, _, _, metric = _prompts(gpt2_like)
    with torch.no_grad():
        base = float(metric(gpt2_like(clean)).mean())
    res = path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H0", "L0H1"], progress=False)
    assert (res.values - base).abs().max() > 1e-3
    res = path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H0", "L0H1"], receivers=["L1H0"],
                        receiver_input=("q", "k", "v"), progress=False)
    assert (res.values - base).abs().max() > 1e-6  # random-init heads barely attend: small but well above rounding
    assert res.meta["metric_clean"] == pytest.approx(base, abs=1e-5)
    # a "corruption" equal to the clean prompts is a no-op: every path's effect is exactly 0
    same = path_patching(gpt2_like, clean, clean.clone(), metric, effect=True, progress=False)
    assert same.values.abs().max() < 1e-5
    # and the same sender path is a different number from activation patching it (other paths really frozen)
    full = path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H0"], freeze_mlps=False, effect=True,
                         progress=False)
    with torch.no_grad():
        from_hand = metric(gpt2_like.run_with_hooks(clean, fwd_hooks=[(
            "blocks.0.attn.hook_z", _patch_head(gpt2_like, corrupted, 0))])).mean() - base
    assert abs(float(full.values[0]) - float(from_hand)) > 1e-5


def _patch_head(model, corrupted, head):
    with torch.no_grad():
        _, xc = model.run_with_cache(corrupted, names_filter=lambda n: n == "blocks.0.attn.hook_z")

    def hook(act, hook):
        act = act.clone()
        act[:, :, head] = xc["blocks.0.attn.hook_z"][:, :, head]
        return act
    return hook


def test_sender_groups_are_patched_together(gpt2_like):
    clean, corrupted, _, _, metric = _prompts(gpt2_like)
    # with MLPs and the final scale frozen the logits are linear in the senders: a group's effect is the sum
    res = path_patching(gpt2_like, clean, corrupted, metric, senders=[["L0H0", "L1H1"], "L0H0", "L1H1"],
                        freeze_final_scale=True, effect=True, progress=False)
    assert res.labels == ["L0H0+L1H1", "L0H0", "L1H1"]
    torch.testing.assert_close(res.values[0], res.values[1] + res.values[2], atol=1e-5, rtol=0)
    assert abs(float(res.values[1])) > 1e-3 and abs(float(res.values[2])) > 1e-3


def test_bad_input_gets_one_clear_error_naming_the_fix(gpt2_like):
    clean, corrupted, _, _, metric = _prompts(gpt2_like)
    with pytest.raises(ValueError, match=r"does not exist.*Pass heads as"):
        path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H9"], progress=False)
    with pytest.raises(ValueError, match=r"receivers.*does not exist"):
        path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H1"], receivers=["L7H0"], progress=False)
    with pytest.raises(ValueError, match=r"not earlier than every receiver.*Choose senders in layers 0..0"):
        path_patching(gpt2_like, clean, corrupted, metric, senders=["L1H1"], receivers=["L1H0"], progress=False)
    with pytest.raises(ValueError, match=r"not earlier than every receiver"):
        path_patching(gpt2_like, clean, corrupted, metric, senders=["L1H1"], receivers=["L0H0"], progress=False)
    with pytest.raises(ValueError, match=r"(?s)must match so that positions line up.*Pick corrupting words"):
        path_patching(gpt2_like, clean, corrupted[:, :-1], metric, progress=False)
    with pytest.raises(ValueError, match=r"receiver_input='z'.*query, key or value"):
        path_patching(gpt2_like, clean, corrupted, metric, senders=["L0H1"], receivers=["L1H0"], receiver_input="z",
                      progress=False)
    with pytest.raises(ValueError, match=r"receivers='resid'"):
        path_patching(gpt2_like, clean, corrupted, metric, receivers="resid", progress=False)
    with pytest.raises(ValueError, match=r"receivers are in layer 0"):
        path_patching(gpt2_like, clean, corrupted, metric, receivers=["L0H0"], progress=False)
