"""Resuming a forward pass mid-model (``mechlab.core.runs.run_from``) against the full forward pass, on both tiny
families: learned positions + LayerNorm (gpt2_like) and rotary + RMSNorm + multi-query (gemma_like)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mechlab.core.activations import hook_name
from mechlab.core.runs import (
    Patch,
    Resume,
    cache_acts,
    cache_resume,
    gap_fraction_metric,
    logit_diff_metric,
    run_from,
    run_patches,
)
from mechlab.methods.attribution import ig_alphas, integrated_gradients

TOL = 1e-5


@pytest.fixture
def tokens(tiny_model):
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, tiny_model.cfg.d_vocab, (3, 11), generator=g)
    corrupted = clean.clone()
    corrupted[:, 4] = torch.randint(0, tiny_model.cfg.d_vocab, (3,), generator=g)
    return clean, corrupted


def _metric(model):
    return logit_diff_metric(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]), pos=torch.tensor([10, 6, 4]))


@pytest.mark.parametrize("copies", [1, 3])
def test_run_from_every_layer_equals_the_full_forward(tiny_model, tokens, copies):
    clean, _ = tokens
    resume, _, _ = cache_resume(tiny_model, clean, range(tiny_model.cfg.n_layers))
    assert resume.exact
    with torch.no_grad():
        full = tiny_model(clean).repeat(copies, 1, 1)
        for layer in range(tiny_model.cfg.n_layers):
            torch.testing.assert_close(run_from(tiny_model, resume, layer, copies=copies), full, atol=TOL, rtol=0)


def test_rotary_positions_are_needed_and_carried(gemma_like):
    """Without the captured rotary cos / sin a Gemma-like resumed run differs: the equality above is not an
    accident of arguments that do nothing. (The causal mask is carried too, but on unpadded tokens both families'
    attention applies causality itself, so dropping it changes nothing here; GPT-2's positions are in the
    residual stream.)"""
    clean = torch.randint(0, gemma_like.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(3))
    resume, _, _ = cache_resume(gemma_like, clean, [1])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that RoPE was not applied: that is the point
        full = gemma_like(clean)
        for key in ("position_embeddings",):
            assert key in resume.block_kwargs[1], key
            broken = Resume(clean, resume.resid, [{k: v for k, v in kw.items() if k != key}
                                                  for kw in resume.block_kwargs])
            assert (run_from(gemma_like, broken, 1) - full).abs().max() > 10 * TOL, key


def test_a_resumed_intervention_equals_the_full_forward_one(tiny_model, tokens):
    clean, corrupted = tokens
    name = hook_name("z", 1)
    cache, _ = cache_acts(tiny_model, corrupted, {name})

    def patch(act, hook):
        act = act.clone()
        act[:, :, 2] = cache[name][:, :, 2]
        return act

    resume, _, _ = cache_resume(tiny_model, clean, [1])
    with torch.no_grad():
        full = tiny_model.run_with_hooks(clean, fwd_hooks=[(name, patch)])
        resumed = run_from(tiny_model, resume, 1, fwd_hooks=[(name, patch)])
        plain = tiny_model(clean)
    torch.testing.assert_close(resumed, full, atol=TOL, rtol=0)
    assert (resumed - plain).abs().max() > 1e-4  # the hook fired and changed the output
    with pytest.raises(ValueError, match="never runs the hook"):
        run_from(tiny_model, resume, 1, fwd_hooks=[(hook_name("z", 0), patch)])
    with pytest.raises(ValueError, match="kept the residual stream only at layers"):
        run_from(tiny_model, resume, 0)


@pytest.mark.parametrize("kind", ["z", "resid_pre", "mlp_out"])
def test_run_patches_resumed_equals_full_passes(tiny_model, tokens, kind):
    clean, corrupted = tokens
    model = tiny_model
    names = {hook_name(kind, layer) for layer in range(model.cfg.n_layers)}
    cache, m_corr = cache_acts(model, corrupted, names, _metric(model))
    heads = range(model.cfg.n_heads) if kind == "z" else [None]
    patches = [Patch(hook_name(kind, layer), h, p) for layer in reversed(range(model.cfg.n_layers)) for h in heads
               for p in (None, 4, 9)]
    resume, _, m_clean = cache_resume(model, clean, range(model.cfg.n_layers), set(), _metric(model))
    fraction = gap_fraction_metric(_metric(model), m_clean.mean(), m_corr.mean())
    for metric in (_metric(model), fraction, lambda lg: lg[:, 9, 7]):  # the last one reads every logit
        full = run_patches(model, clean, patches, cache, metric, max_batch=7, progress=False)
        fast = run_patches(model, clean, patches, cache, metric, max_batch=7, progress=False, resume=resume)
        torch.testing.assert_close(fast, full, atol=TOL, rtol=0)
        assert (full - full[0]).abs().max() > 1e-4  # the patches differ: the comparison is not of constants
    not_exact = Resume(resume.tokens, resume.resid, resume.block_kwargs, exact=False)  # falls back to full passes
    torch.testing.assert_close(run_patches(model, clean, patches, cache, _metric(model), progress=False,
                                           resume=not_exact),
                               run_patches(model, clean, patches, cache, _metric(model), progress=False),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="cached on other tokens"):
        run_patches(model, corrupted, patches, cache, _metric(model), progress=False, resume=resume)


@pytest.mark.parametrize("freeze", [False, True])
def test_resumed_ig_equals_one_full_forward_backward_per_step(tiny_model, tokens, freeze):
    """integrated_gradients (one layer per pass, resumed there) against the unbatched full-forward loop."""
    clean, corrupted = tokens
    model, metric, steps = tiny_model, _metric(tiny_model), 4
    got = integrated_gradients(model, clean, corrupted, metric, kind="z", steps=steps, freeze_final_scale=freeze,
                               max_batch=6, progress=False)
    rows = []
    for layer in range(model.cfg.n_layers):
        name = hook_name("z", layer)
        base_cache, _ = cache_acts(model, clean, {name, "ln_final.hook_scale"})
        target_cache, _ = cache_acts(model, corrupted, {name})
        base, target = base_cache[name], target_cache[name]
        grad_sum = torch.zeros_like(base)
        for alpha, weight in ig_alphas(steps):
            point = (base + alpha * (target - base)).requires_grad_(True)
            hooks = [(name, lambda act, hook, p=point: p)]
            if freeze:
                hooks.append(("ln_final.hook_scale", lambda act, hook, s=base_cache["ln_final.hook_scale"]: s))
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(metric(model.run_with_hooks(clean, fwd_hooks=hooks)).sum(), [point])
            grad_sum += weight * grad
        rows.append(((target - base) * grad_sum).sum(-1).mean(0).transpose(0, 1))
    want = torch.cat(rows)
    torch.testing.assert_close(got.values, want, atol=TOL, rtol=1e-4)
    assert want.abs().max() > 1e-4
