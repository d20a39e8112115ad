"""DLA against the model's own logits and against interventions, on both tiny families with non-trivial norms."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name
from mechlab.methods.dla import (
    accumulated_resid_dla,
    cache_names,
    component_labels,
    direct_effects,
    heads_grid,
    logit_diff_dla,
    unembed_directions,
)


@pytest.fixture
def model(noisy_model):
    """Both tiny families with random norm weights, norm biases and attention/MLP biases (conftest's
    ``noisy_model``): random init leaves them at 1 and 0, which would hide a missing weight, bias or ``1 +``
    offset."""
    return noisy_model


def _tokens(model):
    gen = torch.Generator().manual_seed(3)
    return torch.randint(1, model.cfg.d_vocab, (3, 9), generator=gen).to(next(model.parameters()).device)


def test_components_sum_to_the_logit_difference(model):
    tokens = _tokens(model)
    correct, incorrect = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    res = logit_diff_dla(model, tokens, correct, incorrect, per_prompt=True)
    logits = model(tokens).float()
    want = logits[torch.arange(3), -1, correct] - logits[torch.arange(3), -1, incorrect]
    assert res.labels == component_labels(model)
    torch.testing.assert_close(res.values.sum(0), want.cpu(), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.meta["logit_diff_per_prompt"], want.cpu(), atol=1e-4, rtol=0)
    assert "frozen" in res.meta["final_scale"]
    assert ("pos_embed" in res.labels) == (model.cfg.normalization_type == "LN")


def test_mean_of_a_set_and_per_prompt_positions(model):
    tokens = _tokens(model)
    correct, wrong_sets = torch.tensor([5, 6, 7]), torch.tensor([[8, 9], [10, 11], [12, 13]])
    pos = torch.tensor([2, 8, 5])
    res = logit_diff_dla(model, tokens, correct, wrong_sets, pos=pos)
    logits = model(tokens).float()[torch.arange(3), pos]
    want = logits[torch.arange(3), correct] - logits.gather(1, wrong_sets.to(logits.device)).mean(1)
    torch.testing.assert_close(res.values.sum(), want.mean().cpu(), atol=1e-4, rtol=0)


def test_last_layer_head_and_mlp_match_knockouts_with_the_scale_frozen(model):
    """Independent of the decomposition: zero one last-layer head (or the MLP) with the final scale and the
    last MLP's output held at their clean values; the logit difference drops by exactly that component's DLA."""
    tokens = _tokens(model)
    correct, incorrect = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    last = model.cfg.n_layers - 1
    res = logit_diff_dla(model, tokens, correct, incorrect, per_prompt=True)
    names = {FINAL_NORM_SCALE, hook_name("mlp_out", last)}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)

    def ld(lg):
        return (lg[torch.arange(3), -1, correct] - lg[torch.arange(3), -1, incorrect]).float()

    def keep(name):
        return lambda act, hook: cache[name]

    for head in (0, model.cfg.n_heads - 1):
        def zero_head(z, hook, head=head):
            z = z.clone()
            z[:, :, head] = 0
            return z
        mlp = hook_name("mlp_out", last)
        hooks = [(hook_name("z", last), zero_head), (FINAL_NORM_SCALE, keep(FINAL_NORM_SCALE)), (mlp, keep(mlp))]
        patched = model.run_with_hooks(tokens, fwd_hooks=hooks)
        assert not torch.allclose(ld(patched), ld(logits))  # the knockout did something
        torch.testing.assert_close(res[f"L{last}H{head}"], (ld(logits) - ld(patched)).cpu(), atol=1e-4, rtol=0)
    patched = model.run_with_hooks(tokens, fwd_hooks=[(hook_name("mlp_out", last), lambda a, hook: torch.zeros_like(a)),
                                                       (FINAL_NORM_SCALE, keep(FINAL_NORM_SCALE))])
    torch.testing.assert_close(res[f"L{last} mlp"], (ld(logits) - ld(patched)).cpu(), atol=1e-4, rtol=0)


def test_a_layer_0_head_matches_a_hand_computation_that_a_missing_scale_or_sign_flip_would_fail(model):
    """An early head, which the knockouts above do not reach: z @ W_O, centred (LayerNorm), times the final norm's
    weight read from the HF module, divided by the cached scale, dotted with W_U[:, correct] - W_U[:, incorrect].
    The same sum without the scale, or with the sign flipped, is far outside the tolerance: the comparison sees
    both mistakes."""
    tokens = _tokens(model)
    correct, incorrect = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    res = logit_diff_dla(model, tokens, correct, incorrect, per_prompt=True)
    z_name = hook_name("z", 0)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in {z_name, FINAL_NORM_SCALE})
    hf = model.original_model
    if hasattr(hf, "transformer"):  # GPT-2: LayerNorm centres, gain = weight
        centre, gain = True, hf.transformer.ln_f.weight.detach().float()
    else:  # Gemma: RMSNorm, gain = 1 + weight
        centre, gain = False, 1.0 + hf.model.norm.weight.detach().float()
    w_u = model.W_U.detach().float()
    read = (w_u[:, correct.to(w_u.device)] - w_u[:, incorrect.to(w_u.device)]).T  # [batch, d_model]
    scale = cache[FINAL_NORM_SCALE][:, -1].float()  # [batch, 1]
    for head in range(model.cfg.n_heads):
        out = cache[z_name][:, -1, head].float() @ model.W_O[0, head].detach().float()  # [batch, d_model]
        if centre:
            out = out - out.mean(-1, keepdim=True)
        want = (out * gain * read).sum(-1) / scale[:, 0]
        torch.testing.assert_close(res[f"L0H{head}"], want.cpu(), atol=1e-6, rtol=1e-4)
        # these heads write little (|effect| ~ 1e-3): the mistakes fail even a tolerance 100 times looser
        without_scale = (out * gain * read).sum(-1)
        assert not torch.allclose(without_scale, want, atol=1e-6, rtol=1e-2)
        assert not torch.allclose(-want, want, atol=1e-6, rtol=1e-2)


def test_accumulated_residual(model):
    tokens = _tokens(model)
    correct, incorrect = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    acc = accumulated_resid_dla(model, tokens, correct, incorrect)
    dla = logit_diff_dla(model, tokens, correct, incorrect)
    assert acc.labels == [f"L{i} resid_pre" for i in range(model.cfg.n_layers)] + ["final resid"]
    torch.testing.assert_close(acc["final resid"], torch.tensor(dla.meta["logit_diff"]), atol=1e-4, rtol=0)
    # entering layer 1 = embeddings + bias + everything layer 0 wrote (its b_O is inside `bias`, so add it)
    before = [x for x in dla.labels if x in ("embed", "pos_embed") or x.startswith("L0")]
    acc0 = dla[[x for x in dla.labels if x in ("embed", "pos_embed")]].sum()
    assert not torch.isclose(acc["L0 resid_pre"], acc["L1 resid_pre"])
    if "gemma" in model.mechlab_info.name:  # no attention output bias: `bias` is exactly the final norm + b_U
        torch.testing.assert_close(acc["L0 resid_pre"], acc0 + dla["bias"], atol=1e-4, rtol=0)
        torch.testing.assert_close(acc["L1 resid_pre"], dla[before].sum() + dla["bias"], atol=1e-4, rtol=0)
    # every step, both families: what layer l wrote (its heads and MLP from DLA, its attention output bias by hand,
    # through the final LayerNorm with the run's scale frozen) is the step from entry l to entry l + 1
    b_o = getattr(model, "b_O", None)
    if b_o is not None and model.cfg.normalization_type == "LN":
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "ln_final.hook_scale")
        scale = cache["ln_final.hook_scale"][:, -1].float()   # [batch, 1]
        readout = (model.W_U[:, correct] - model.W_U[:, incorrect]).T.float()   # [batch, d_model]
        centred = b_o.detach().float() - b_o.detach().float().mean(-1, keepdim=True)   # [layer, d_model]
        b_o_read = ((centred[None] / scale[:, None] * model.ln_final.weight.float() * readout[:, None]).sum(-1)
                    .mean(0).detach().cpu())   # [layer]
    else:  # RMSNorm (Gemma): no attention output bias
        assert b_o is None or not b_o.detach().abs().max(), "a Gemma-like model with an attention output bias"
        b_o_read = torch.zeros(model.cfg.n_layers)
    entries = acc.values
    for layer in range(model.cfg.n_layers):
        wrote = [x for x in dla.labels if x.startswith(f"L{layer}H") or x == f"L{layer} mlp"]
        step = entries[layer + 1] - entries[layer]
        torch.testing.assert_close(step, dla[wrote].sum() + b_o_read[layer], atol=1e-4, rtol=0)
        assert abs(float(step)) > 2e-3, f"layer {layer} wrote only {float(step):.1e}: too small to test"


def test_heads_grid(model):
    tokens = _tokens(model)
    res = logit_diff_dla(model, tokens, torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    grid = heads_grid(model, res)
    assert grid.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert grid[1, 2] == res["L1H2"]


def test_direct_effects_next_token_sum_to_logits(model):
    tokens = _tokens(model)
    names = cache_names(model)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    dirs = unembed_directions(model, tokens[:, 1:])
    res = direct_effects(model, cache, dirs, positions=slice(0, -1))
    assert res.values.shape == (len(component_labels(model)), 3, 8)
    want = logits[:, :-1].float().gather(-1, tokens[:, 1:, None])[..., 0] - model.b_U.float()[tokens[:, 1:]]
    torch.testing.assert_close(res.values.sum(0), want.detach().cpu(), atol=1e-4, rtol=0)


def test_direct_effects_with_another_runs_scale(model):
    """A head's effect with a chosen scale is its effect with the own scale times own / chosen (per position)."""
    tokens = _tokens(model)
    names = cache_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    dirs = unembed_directions(model, tokens)
    other = cache[FINAL_NORM_SCALE] * torch.linspace(0.5, 2.0, tokens.shape[1], device=tokens.device)[None, :, None]
    own = direct_effects(model, cache, dirs)
    chosen = direct_effects(model, cache, dirs, scale=other)
    ratio = (cache[FINAL_NORM_SCALE] / other)[..., 0].cpu()
    torch.testing.assert_close(chosen["L1H0"], own["L1H0"] * ratio, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_bad_input(gpt2_like):
    model = gpt2_like
    tokens = model.to_tokens(["a b c d"])
    with pytest.raises(ValueError, match="single-token answer"):
        logit_diff_dla(model, tokens, "hello there", "b")
    with pytest.raises(ValueError, match="integer token ids"):
        logit_diff_dla(model, tokens, torch.tensor([1.0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="out of range"):
        logit_diff_dla(model, tokens, "a", "b", pos=50)
    with pytest.raises(ValueError, match="outside"):
        logit_diff_dla(model, tokens, torch.tensor([10**6]), torch.tensor([2]))
    with pytest.raises(ValueError, match="one answer per"):
        logit_diff_dla(model, tokens, torch.tensor([1, 2, 3]), torch.tensor([2]))
    with pytest.raises(ValueError, match="integer tensor"):
        logit_diff_dla(model, tokens.float(), "a", "b")
    names = cache_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    with pytest.raises(ValueError, match="lacks"):
        logit_diff_dla(model, tokens, "a", "b", cache={k: v for k, v in cache.items() if "mlp" not in k})
    dirs = unembed_directions(model, tokens)
    with pytest.raises(ValueError, match="on meta"):
        direct_effects(model, cache, dirs.to("meta"))
    with pytest.raises(ValueError, match="float tensor"):
        direct_effects(model, cache, tokens)
    with pytest.raises(ValueError, match="expected"):
        direct_effects(model, cache, dirs[:, 1:])
    with pytest.raises(ValueError, match="float tensor"):
        direct_effects(model, cache, dirs, scale=cache[FINAL_NORM_SCALE][:, :2])
