"""mechlab.methods.logit_lens against the model's own logits, torch's layer_norm and per-head DLA."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name
from mechlab.methods.dla import logit_diff_dla
from mechlab.methods.logit_lens import answer_ranks, layer_decomposition, lens_cache_names, logit_lens


def _tokens(model, batch=3, n_pos=7, seed=0):
    return torch.randint(1, model.cfg.d_vocab, (batch, n_pos), generator=torch.Generator().manual_seed(seed))


def test_last_row_is_the_models_own_logits(noisy_model):
    tokens = _tokens(noisy_model)
    lens = logit_lens(noisy_model, tokens)
    logits = noisy_model(tokens)[:, -1].float()
    torch.testing.assert_close(lens["final resid"], logits, atol=1e-4, rtol=1e-4)
    assert lens.labels[0] == "L0 resid_pre" and lens.values.shape[:2] == (noisy_model.cfg.n_layers + 1, 3)


def test_per_prompt_positions(gpt2_like):
    tokens = _tokens(gpt2_like)
    end = torch.tensor([2, 6, 4])
    lens = logit_lens(gpt2_like, tokens, pos=end)
    logits = gpt2_like(tokens).float()
    torch.testing.assert_close(lens["final resid"], logits[torch.arange(3), end], atol=1e-4, rtol=1e-4)


def test_an_early_row_equals_torchs_layer_norm(noisy_gpt2):
    model = noisy_gpt2
    assert (model.ln_final.weight - 1).abs().max() > 0.1 and model.ln_final.bias.abs().max() > 0.1
    tokens = _tokens(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook_name("resid_pre", 1))
    resid = cache[hook_name("resid_pre", 1)][:, -1]
    normed = torch.nn.functional.layer_norm(resid, (model.cfg.d_model,), model.ln_final.weight, model.ln_final.bias,
                                            eps=model.cfg.eps)
    want = normed @ model.W_U + model.b_U
    torch.testing.assert_close(logit_lens(model, tokens)["L1 resid_pre"], want.detach(), atol=1e-4, rtol=1e-4)


def test_answer_ranks_and_probabilities(gpt2_like):
    tokens = _tokens(gpt2_like)
    lens = logit_lens(gpt2_like, tokens)
    answer = torch.tensor([3, 10, 20])
    got = answer_ranks(lens, answer)
    for r in range(len(lens)):
        for b in range(3):
            order = lens.values[r, b].argsort(descending=True).tolist()
            assert int(got.values[r, b, 0]) == order.index(int(answer[b]))
            assert abs(float(got.values[r, b, 1]) - float(lens.values[r, b].softmax(-1)[answer[b]])) < 1e-6
    top = lens.values[-1].argmax(-1)
    assert torch.equal(answer_ranks(lens, top).values[-1, :, 0], torch.zeros(3))


def test_layer_decomposition_sums_to_the_logit_difference(noisy_model):
    model = noisy_model
    tokens = _tokens(model)
    good, bad = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    dec = layer_decomposition(model, tokens, good, bad)
    logits = model(tokens)[:, -1].float()
    actual = logits[torch.arange(3), good] - logits[torch.arange(3), bad]
    torch.testing.assert_close(dec.values.sum(0), actual.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dec.meta["logit_diff"], actual.detach(), atol=1e-4, rtol=1e-4)


def test_layer_rows_agree_with_per_head_dla(noisy_gpt2):
    """attention row = its heads' DLA + b_O through the frozen scale; MLP rows equal DLA's MLP rows (b_O random)."""
    model = noisy_gpt2
    assert model.b_O.detach().abs().max() > 0.1
    tokens = _tokens(model)
    good, bad = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    dec = layer_decomposition(model, tokens, good, bad)
    dla = logit_diff_dla(model, tokens, good, bad, per_prompt=True)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == FINAL_NORM_SCALE)
    scale = cache[FINAL_NORM_SCALE][:, -1]
    readout = (model.W_U[:, good] - model.W_U[:, bad]).T * model.ln_final.weight
    readout = (readout - readout.mean(-1, keepdim=True)) / scale
    for layer in range(model.cfg.n_layers):
        heads = sum(dla[f"L{layer}H{h}"] for h in range(model.cfg.n_heads))
        b_o = (readout * model.b_O[layer]).sum(-1).detach()
        torch.testing.assert_close(dec[f"L{layer} attn"], heads + b_o, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dec[f"L{layer} mlp"], dla[f"L{layer} mlp"], atol=1e-4, rtol=1e-4)


def test_a_given_cache_is_used_and_bad_input_refused(gpt2_like):
    model = gpt2_like
    tokens = _tokens(model)
    names = lens_cache_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    torch.testing.assert_close(logit_lens(model, tokens, cache=cache).values, logit_lens(model, tokens).values)
    with pytest.raises(ValueError, match="cache lacks"):
        logit_lens(model, tokens, cache={})
    with pytest.raises(ValueError, match="pos="):
        logit_lens(model, tokens, pos=99)
    with pytest.raises(ValueError, match="token ids"):
        layer_decomposition(model, tokens, torch.tensor([10**6] * 3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="logit_lens returns"):
        answer_ranks(torch.zeros(3), torch.tensor([1]))
    with pytest.raises(ValueError, match="integer tensor"):
        logit_lens(model, "a prompt")


def test_answer_ranks_refuses_float_ids(gpt2_like):
    tokens = torch.randint(0, gpt2_like.cfg.d_vocab, (2, 5))
    lens = logit_lens(gpt2_like, tokens)
    with pytest.raises(ValueError, match="integer token ids"):
        answer_ranks(lens, torch.tensor([1.0, 2.0]))


def test_soft_cap_is_applied_and_decomposition_refuses(gpt2_like):
    tokens = torch.randint(0, gpt2_like.cfg.d_vocab, (2, 5))
    plain = logit_lens(gpt2_like, tokens)
    old = getattr(gpt2_like.cfg, "output_logits_soft_cap", -1.0)
    gpt2_like.cfg.output_logits_soft_cap = 0.5
    try:
        capped = logit_lens(gpt2_like, tokens)
        assert torch.allclose(capped.values, 0.5 * torch.tanh(plain.values / 0.5), atol=1e-6)
        with pytest.raises(ValueError, match="soft-caps"):
            layer_decomposition(gpt2_like, tokens, torch.tensor([1, 2]), torch.tensor([3, 4]))
    finally:
        gpt2_like.cfg.output_logits_soft_cap = old
