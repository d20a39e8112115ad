"""The from-scratch toy model, its training loop and its readers, each against an independent computation."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from mechlab.data.skip_trigram import PAIRS, make_skip_trigram, pair_names, signal_prompts
from mechlab.models.toy import (
    AttnOnlyTransformer,
    ToyConfig,
    ToyTrainConfig,
    attention_pattern,
    head_attention,
    head_logit_contributions,
    loss_and_accuracy,
    ov_circuit,
    pair_accuracy_ablated,
    pair_logit_table,
    qk_circuit,
    train_step,
    train_toy,
)


def _random_model(seed: int = 0, n_heads: int = 3, d_head: int = 2) -> AttnOnlyTransformer:
    """A model with random (nonzero) biases too, so that a bias handled wrongly shows."""
    model = AttnOnlyTransformer(ToyConfig(n_heads=n_heads, d_head=d_head, seed=seed))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in (model.attn.b_Q, model.attn.b_K, model.attn.b_V, model.attn.b_O):
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def _loop_forward(model: AttnOnlyTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits with explicit loops over batch, head, query and key: no einsum, no mask tensor."""
    a = model.attn
    batch, n_pos = tokens.shape
    out = torch.zeros(batch, n_pos, model.cfg.d_vocab)
    for b in range(batch):
        for i in range(n_pos):
            x_i = torch.zeros(model.cfg.d_vocab)
            x_i[tokens[b, i]] = 1.0
            resid = x_i.clone() + a.b_O
            for h in range(model.cfg.n_heads):
                q = x_i @ a.W_Q[h] + a.b_Q[h]
                scores, values = [], []
                for j in range(i + 1):  # only keys at or before the query
                    x_j = torch.zeros(model.cfg.d_vocab)
                    x_j[tokens[b, j]] = 1.0
                    scores.append(float(q @ (x_j @ a.W_K[h] + a.b_K[h])) / math.sqrt(model.cfg.d_head))
                    values.append(x_j @ a.W_V[h] + a.b_V[h])
                weights = torch.tensor(scores).softmax(0)
                z = sum(w * v for w, v in zip(weights, values, strict=True))
                resid = resid + z @ a.W_O[h]
            out[b, i] = resid  # the unembedding is the identity
    return out


@torch.no_grad()
def test_forward_matches_loops():
    model = _random_model()
    tokens = make_skip_trigram(6, seed=1).tokens
    torch.testing.assert_close(model(tokens), _loop_forward(model, tokens), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mask_is_by_position_even_when_scores_are_zero():
    model = _random_model(n_heads=2, d_head=1)
    model.attn.W_K.zero_()
    model.attn.b_K.zero_()  # every score is exactly 0: a mask built from score values would mask nothing
    tokens = torch.tensor([[1, 7, 3, 0]])
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_attn_scores")))
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    want = torch.tensor([[1 / (i + 1) if j <= i else 0.0 for j in range(4)] for i in range(4)])
    torch.testing.assert_close(pattern, want.expand(2, 4, 4))
    scores = cache["blocks.0.attn.hook_attn_scores"][0]
    assert torch.isinf(scores[:, 0, 1:]).all() and not torch.isinf(scores.tril()).any()


@torch.no_grad()
def test_attention_pattern_does_not_edit_input_and_ignores_future():
    q, k = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    q0, k0 = q.clone(), k.clone()
    p = attention_pattern(q, k)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    k2 = k.clone()
    k2[:, 3:] = torch.randn(2, 2, 3, 4)  # change only keys after position 2
    torch.testing.assert_close(attention_pattern(q, k2)[:, :, :3], p[:, :, :3])


@torch.no_grad()
def test_hooks_and_cache():
    model = _random_model()
    tokens = make_skip_trigram(5, seed=2).tokens
    logits, cache = model.run_with_cache(tokens)
    shapes = {"blocks.0.attn.hook_q": (5, 4, 3, 2), "blocks.0.attn.hook_pattern": (5, 3, 4, 4),
              "blocks.0.attn.hook_z": (5, 4, 3, 2), "blocks.0.attn.hook_result": (5, 4, 3, 11),
              "blocks.0.hook_resid_post": (5, 4, 11), "hook_embed": (5, 4, 11)}
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"].sum(2) + model.attn.b_O,
                               cache["blocks.0.hook_attn_out"])
    # zeroing every head leaves the direct path plus b_O; the hook is gone afterwards
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", lambda r, hook: r * 0)])
    torch.testing.assert_close(zeroed, F.one_hot(tokens, 11).float() + model.attn.b_O)
    assert not torch.allclose(zeroed, logits)
    torch.testing.assert_close(model(tokens), logits)


@torch.no_grad()
def test_head_contributions_sum_to_logits_and_match_z():
    model = _random_model()
    tokens = make_skip_trigram(7, seed=3).tokens
    contrib = head_logit_contributions(model, tokens)
    assert contrib.labels == ["embed", "L0H0", "L0H1", "L0H2", "bias"]
    logits, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])
    torch.testing.assert_close(contrib.values.sum(0), logits[:, -1], atol=1e-5, rtol=1e-5)
    z = cache["blocks.0.attn.hook_z"][:, -1]
    for h in range(3):
        torch.testing.assert_close(contrib[f"L0H{h}"], z[:, h] @ model.attn.W_O[h])
    torch.testing.assert_close(contrib["bias"][0], model.attn.b_O)


@torch.no_grad()
def test_ov_and_qk_circuits_agree_with_the_cache():
    model = _random_model()
    tokens = make_skip_trigram(30, seed=4).tokens
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_result", "hook_attn_scores")))
    ov, qk = ov_circuit(model), qk_circuit(model)
    # position 0 can only attend to itself, so each head writes exactly its OV row for that token there
    result0 = cache["blocks.0.attn.hook_result"][:, 0]  # [batch, head, d_model]
    torch.testing.assert_close(result0.permute(1, 0, 2), ov.values[:, tokens[:, 0]])
    scores = cache["blocks.0.attn.hook_attn_scores"]
    for b in range(5):
        for i in range(4):
            for j in range(i + 1):
                torch.testing.assert_close(scores[b, :, i, j], qk.values[:, tokens[b, i], tokens[b, j]])


@torch.no_grad()
def test_pair_tables_agree_with_direct_computation():
    model = _random_model(seed=5)
    tokens, labels, names = signal_prompts(4)
    logits = model(tokens)[:, -1]
    own = logits.gather(1, labels[:, None])[:, 0]
    margin = own - (logits[:, :10].sum(1) - own) / 9  # correct minus the mean of the nine other pair labels
    table = pair_logit_table(model)
    acc = pair_accuracy_ablated(model)
    for p, name in enumerate(pair_names()):
        rows = [i for i, n in enumerate(names) if n == name]
        assert table.values[:, p].sum().item() == pytest.approx(margin[rows].mean().item(), abs=1e-4)
        right = (logits[rows].argmax(-1) == labels[rows]).float().mean().item()
        assert acc["none"][p].item() == pytest.approx(right)
    # mean-ablating head 1 by hand: replace its result everywhere by its mean over the signal prompts
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_result"])
    result = cache["blocks.0.attn.hook_result"].clone()
    result[:, :, 1] = result[:, :, 1].mean(0)
    ablated = (F.one_hot(tokens, 11).float() + result.sum(2) + model.attn.b_O)[:, -1]
    right = ablated.argmax(-1) == labels
    for p, name in enumerate(pair_names()):
        rows = [i for i, n in enumerate(names) if n == name]
        assert acc["L0H1"][p].item() == pytest.approx(right[rows].float().mean().item())
    assert len(PAIRS) == table.values.shape[1]


def test_train_step_loss_and_update():
    model = _random_model()
    data = make_skip_trigram(32, seed=6)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        want = F.cross_entropy(model(data.tokens)[:, -1], data.labels).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_step(model, opt, data.tokens, data.labels) == pytest.approx(want, rel=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_evaluate_weights_a_short_last_batch():
    model = _random_model()
    data = make_skip_trigram(103, seed=7)
    with torch.no_grad():
        logits = model(data.tokens)[:, -1]
    loss, acc = loss_and_accuracy(model, data, batch_size=10)  # ten batches of 10 and one of 3
    assert loss == pytest.approx(F.cross_entropy(logits, data.labels).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(-1) == data.labels).float().mean().item())


def test_training_reaches_the_ceiling_fast_and_reproducibly():
    threads = torch.get_num_threads()
    start = time.process_time()  # CPU time of this process: a busy machine must not fail the test
    first = train_toy(ToyConfig(), ToyTrainConfig(), progress=False)
    seconds = time.process_time() - start
    assert torch.get_num_threads() == threads  # train_toy() runs on one thread and restores the setting
    second = train_toy(ToyConfig(), ToyTrainConfig(), progress=False)
    assert seconds < 60, f"training took {seconds:.1f} s"
    assert first.history == second.history  # identical numbers, epoch by epoch
    assert abs(first.history.test_acc[-1] - first.ceiling.total) < 0.01
    sig = first.test_data[first.test_data.is_signal]
    assert loss_and_accuracy(first.model, sig)[1] == 1.0
    pattern = head_attention(first.model, torch.tensor([2, 9, 3, 0]))
    assert pattern.values.shape == (3, 4, 4) and torch.allclose(pattern.values.sum(-1), torch.ones(3, 4))


def test_bad_inputs_raise():
    model = _random_model()
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="0..10"):
        model(torch.tensor([[1, 2, 11]]))
    with pytest.raises(ValueError, match="one sequence"):
        head_attention(model, torch.zeros(2, 4, dtype=torch.long))
