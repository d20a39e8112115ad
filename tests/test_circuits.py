"""mechlab.methods.circuits against materialised products, the bridge's own folding and the model's activations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechlab.core.activations import hook_name
from mechlab.core.loading import load_model
from mechlab.methods import circuits as C
from mechlab.plot import composition_graph


@pytest.fixture(scope="module")
def gpt2_weights(gpt2_like):
    return C.circuit_weights(gpt2_like)


@pytest.mark.parametrize("name,seed", [("tiny-gpt2", 1), ("tiny-gemma", 2)])
def test_folding_equals_the_bridges_compatibility_mode(name, seed, perturbed):
    """Both copies get the same random norm weights, norm biases and b_Q / b_K / b_O (random init leaves them at 1
    and 0, where dropping a fold would change nothing), then one is folded by TransformerLens itself."""
    raw = perturbed(load_model(name, seed=seed, verbose=False))
    if name == "tiny-gpt2":
        assert raw.b_Q.detach().abs().max() > 0.1 and (raw.ln_final.weight - 1).abs().max() > 0.1
    before = raw.W_Q.detach().clone()
    w = C.circuit_weights(raw)
    folded = perturbed(load_model(name, seed=seed, verbose=False))
    folded.enable_compatibility_mode()
    n_heads = raw.cfg.n_heads
    for n in ("W_Q", "W_K", "W_V", "W_O", "W_E", "W_U", "b_Q", "b_K"):
        if n.startswith("b_") and name == "tiny-gemma":  # bias-free: the bridge has none, mechlab uses zeros
            assert not getattr(w, n).any()
            continue
        theirs = getattr(folded, n).detach().float()
        if n in ("W_K", "W_V", "b_K") and theirs.shape[1] != n_heads:  # multi-query: one K/V head per group
            theirs = theirs.repeat_interleave(n_heads // theirs.shape[1], dim=1)
        torch.testing.assert_close(getattr(w, n), theirs, atol=1e-5, rtol=1e-4, msg=f"{name}: {n}")
    if name == "tiny-gemma":
        assert w.W_pos is None and any("multi-query" in note for note in w.notes)
    assert torch.equal(raw.W_Q.detach(), before)  # circuit_weights never folds the model in place


def test_folded_queries_equal_the_models_queries(noisy_model):
    """q = norm(resid_pre) @ W_Q + b_Q in the run; the folded weights give it from centre(resid) / size alone (on
    random norm weights and biases, so the fold of each is tested)."""
    model = noisy_model
    w = C.circuit_weights(model)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(3))
    names = {hook_name("resid_pre", 1), hook_name("q", 1)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    x = cache[hook_name("resid_pre", 1)].float()
    if w.ln1[1][0]:
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()
    want = cache[hook_name("q", 1)].float()
    if model.cfg.positional_embedding_type == "rotary":  # rotary rotates q after the projection: compare norms
        got = torch.einsum("bpm,hmd->bphd", x, w.W_Q[1]) + w.b_Q[1]
        torch.testing.assert_close(got.norm(dim=-1), want.norm(dim=-1), atol=1e-4, rtol=1e-3)
    else:
        got = torch.einsum("bpm,hmd->bphd", x, w.W_Q[1]) + w.b_Q[1]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_ov_and_qk_equal_materialised_products(tiny_model):
    w = C.circuit_weights(tiny_model)
    for layer in range(w.n_layers):
        for h in range(w.n_heads):
            ov, qk = C.head_ov(w, f"L{layer}H{h}"), C.head_qk(w, (layer, h))
            ov_full = torch.einsum("md,dn->mn", w.W_V[layer, h], w.W_O[layer, h])
            qk_full = torch.einsum("md,nd->mn", w.W_Q[layer, h], w.W_K[layer, h])
            torch.testing.assert_close(ov.AB, ov_full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(qk.AB, qk_full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ov.S, torch.linalg.svdvals(ov_full)[: w.d_head], atol=1e-5, rtol=1e-4)
            assert ov.shape == (tiny_model.cfg.d_model,) * 2


def test_multi_query_heads_share_their_key_weights(gemma_like):
    w = C.circuit_weights(gemma_like)
    assert gemma_like.W_K.shape[1] == 1
    torch.testing.assert_close(w.W_K[:, 0], w.W_K[:, -1])
    assert not torch.allclose(w.W_Q[:, 0], w.W_Q[:, -1])


@pytest.mark.parametrize("batch_size", [1, 7, 100, 10_000])
def test_batched_copying_accuracy_equals_the_materialised_one(gpt2_weights, batch_size):
    w = gpt2_weights
    tokens = torch.arange(0, w.W_E.shape[0], 3)  # a tiny vocabulary: every third id
    got = C.ov_copying_accuracy(w, tokens=tokens, batch_size=batch_size)
    for label in got.labels:
        layer, h = w.head(label)
        full = w.W_E[tokens] @ (w.W_V[layer, h] @ w.W_O[layer, h]) @ w.W_U  # [n, d_vocab], materialised
        want = (full.argmax(-1) == tokens).float().mean()
        assert float(got[label]) == float(want), label


def test_a_planted_copying_head_copies_and_its_negative_suppresses(gpt2_like):
    """With W_U = W_E.T and OV a projection, the full OV circuit is a Gram matrix (positive semi-definite): it
    copies (eigenvalue score +1); minus it suppresses (-1, and no token maps to itself)."""
    w = dataclasses.replace(C.circuit_weights(gpt2_like))
    w.W_U = w.W_E.T.clone()
    basis = torch.linalg.qr(torch.randn(w.W_E.shape[1], w.d_head, generator=torch.Generator().manual_seed(0)))[0]
    w.W_V, w.W_O = w.W_V.clone(), w.W_O.clone()
    w.W_V[0, 0], w.W_O[0, 0] = basis, basis.T
    w.W_V[0, 1], w.W_O[0, 1] = basis, -basis.T
    acc = C.ov_copying_accuracy(w, heads=["L0H0", "L0H1"])
    eig = C.ov_eigen_copying_score(w, heads=["L0H0", "L0H1"])
    assert float(acc["L0H0"]) > 0.05 and float(acc["L0H1"]) == 0.0
    assert float(eig["L0H0"]) > 0.999 and float(eig["L0H1"]) < -0.999


def test_eigen_copying_score_equals_the_materialised_eigenvalues(gpt2_weights):
    w = gpt2_weights
    got = C.ov_eigen_copying_score(w, layer=1)
    for label in got.labels:
        layer, h = w.head(label)
        full = w.W_E @ w.W_V[layer, h] @ w.W_O[layer, h] @ w.W_U  # d_vocab x d_vocab
        eig = torch.linalg.eigvals(full.double())
        eig = eig[eig.abs() > 1e-6 * eig.abs().max()]  # the d_head non-zero ones
        assert abs(float(got[label]) - float(eig.sum().real / eig.abs().sum())) < 1e-4, label


def test_positional_pattern_equals_the_models_pattern_without_token_embeddings(noisy_gpt2):
    model, w = noisy_gpt2, C.circuit_weights(noisy_gpt2)
    n_pos = 9
    tokens = torch.randint(1, model.cfg.d_vocab, (1, n_pos), generator=torch.Generator().manual_seed(0))
    seen = {}

    def keep(t, hook):
        seen["pattern"] = t.detach()

    with model.hooks(fwd_hooks=[("hook_embed", lambda t, hook: torch.zeros_like(t)),
                                (hook_name("pattern", 0), keep)]):
        model(tokens)
    for h in range(w.n_heads):
        got = C.positional_pattern(w, (0, h), n_pos=n_pos)
        torch.testing.assert_close(got.values, seen["pattern"][0, h].float(), atol=1e-5, rtol=1e-4)
        assert got.axes == ("pos", "key_pos") and torch.isnan(got.meta["scores"][0, 1])


def _materialised_score(left, right):
    return float((left @ right).norm() / (left.norm() * right.norm()))


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_equal_materialised_norms(tiny_model, kind):
    w = C.circuit_weights(tiny_model)
    if w.rotary and kind in ("Q", "K"):  # rotary: W_Q W_K^T is not the score, so Q/K composition refuses
        with pytest.raises(ValueError, match="rotary"):
            C.composition_scores(w, kind, sender_layer=0, receiver_layer=1)
        return
    got = C.composition_scores(w, kind, sender_layer=0, receiver_layer=1)
    assert got.values.shape == (w.n_heads, w.n_heads) and got.meta["kind"] == kind
    for s in range(w.n_heads):
        ov_s = w.W_V[0, s] @ w.W_O[0, s]
        for r in range(w.n_heads):
            qk_r = w.W_Q[1, r] @ w.W_K[1, r].T
            right = {"Q": qk_r, "K": qk_r.T, "V": w.W_V[1, r] @ w.W_O[1, r]}[kind]
            assert abs(float(got.values[s, r]) - _materialised_score(ov_s, right)) < 1e-5, (kind, s, r)


def test_k_and_q_composition_differ(gpt2_weights):
    """The transposed QK is what separates K- from Q-composition: the two must not coincide."""
    q = C.composition_scores(gpt2_weights, "Q", sender_layer=0, receiver_layer=1).values
    k = C.composition_scores(gpt2_weights, "K", sender_layer=0, receiver_layer=1).values
    assert (q - k).abs().max() > 1e-3


def test_baseline_matches_random_matrices_and_is_seeded(gpt2_weights):
    base = C.composition_baseline(gpt2_weights, n_seeds=4, seed=5)
    again = C.composition_baseline(gpt2_weights, n_seeds=4, seed=5)
    assert torch.equal(base.values, again.values) and base.meta["sd"] > 0
    d_model, d_head = gpt2_weights.W_Q.shape[2], gpt2_weights.d_head
    gen = torch.Generator().manual_seed(5)
    a1, b1, a2, b2 = (torch.randn(gpt2_weights.n_heads, *shape, generator=gen)
                      for shape in [(d_model, d_head), (d_head, d_model)] * 2)
    assert abs(float(base.values[0, 1]) - _materialised_score(a1[0] @ b1[0], a2[1] @ b2[1])) < 1e-5
    # independent random matrices compose by about 1 / sqrt(d_model), whatever their rank
    assert 0.8 < base.meta["mean"] * d_model ** 0.5 < 1.2


def test_bad_input_is_refused_with_one_clear_error(gpt2_weights, gemma_like):
    w = gpt2_weights
    with pytest.raises(ValueError, match="does not exist"):
        C.head_ov(w, "L5H0")
    with pytest.raises(ValueError, match="not after"):
        C.composition_scores(w, "K", sender_layer=1, receiver_layer=1)
    with pytest.raises(ValueError, match="not after"):
        C.composition_scores(w, "K", sender_layer=1, receiver_layer=0)
    with pytest.raises(ValueError, match="expected one of"):
        C.composition_scores(w, "O", sender_layer=0, receiver_layer=1)
    with pytest.raises(ValueError, match="learned absolute positions"):
        C.positional_pattern(C.circuit_weights(gemma_like), "L0H0")
    with pytest.raises(ValueError, match="n_pos"):
        C.positional_pattern(w, "L0H0", n_pos=10**6)
    with pytest.raises(ValueError, match="CircuitWeights"):
        C.ov_copying_accuracy(object())
    with pytest.raises(ValueError, match="tokens must be"):
        C.ov_copying_accuracy(w, tokens=torch.tensor([10**6]))
    with pytest.raises(ValueError, match="2 seeds"):
        C.composition_baseline(w, n_seeds=1)


def test_all_compositions_covers_every_later_layer(gpt2_weights):
    got = C.all_compositions(gpt2_weights, "V")
    n = gpt2_weights.n_layers
    assert set(got) == {(a, b) for a in range(n) for b in range(a + 1, n)}


def test_the_organisms_induction_circuit_shows_in_its_weights():
    """The model card's heads: previous-token L0H3 K-composes with the induction heads L2H0-L2H3 above the random
    baseline's mean + 3 sd, and the induction heads' OV circuits copy better than every other head."""
    model = load_model("organism", verbose=False)
    w = C.circuit_weights(model)
    base = C.composition_baseline(w, n_seeds=10)
    k = C.composition_scores(w, "K", sender_layer=0, receiver_layer=2)
    threshold = base.meta["mean"] + 3 * base.meta["sd"]
    induction = [f"L2H{h}" for h in range(4)]
    assert bool((k["L0H3"] > threshold).all()), (k["L0H3"], threshold)
    acc = C.ov_copying_accuracy(w)
    others = [label for label in acc.labels if label not in induction]
    assert float(acc[induction].min()) > float(acc[others].max())
    pattern = C.positional_pattern(w, "L0H3", n_pos=20)
    assert float(pattern.values.diagonal(-1).min()) > 0.9  # previous-token from positions alone


def test_rotated_null_keeps_the_spectrum_and_is_seeded(gpt2_weights):
    w = gpt2_weights
    rot = C.haar_orthogonal(w.W_O.shape[-1], torch.Generator().manual_seed(3))
    assert torch.allclose(rot @ rot.T, torch.eye(rot.shape[0]), atol=1e-5)
    ov = w.W_V[0, 1] @ w.W_O[0, 1]
    assert torch.allclose(torch.linalg.svdvals(ov @ rot), torch.linalg.svdvals(ov), atol=1e-5)
    z = C.rotated_composition_null(w, "K", sender_layer=0, receiver_layer=1, n_seeds=5, seed=3)
    again = C.rotated_composition_null(w, "K", sender_layer=0, receiver_layer=1, n_seeds=5, seed=3)
    assert torch.equal(z.values, again.values) and z.meta["null"].shape == (5, w.n_heads, w.n_heads)
    real = C.composition_scores(w, "K", sender_layer=0, receiver_layer=1).values
    assert torch.allclose(z.values, (real - z.meta["null"].mean(0)) / z.meta["null"].std(0), atol=1e-5)
    with pytest.raises(ValueError, match="2 seeds"):
        C.rotated_composition_null(w, "K", sender_layer=0, receiver_layer=1, n_seeds=1)


def test_input_validation_gaps(gpt2_weights):
    with pytest.raises(ValueError, match="both layer"):
        C.ov_copying_accuracy(gpt2_weights, layer=0, heads=["L1H0"])
    a = torch.zeros(2, 8, 4)
    with pytest.raises(ValueError, match="expected A1"):
        C.frobenius_composition(a, a, a, a)


def test_post_attention_norm_models_are_refused(gpt2_like):
    block = gpt2_like.blocks[0]
    block.ln1_post = torch.nn.Identity()
    try:
        with pytest.raises(ValueError, match="post-attention norms"):
            C.circuit_weights(gpt2_like)
    finally:
        del block.ln1_post


def test_composition_graph_is_one_trace_per_band_with_top_k(gpt2_weights):
    scores = C.all_compositions(gpt2_weights, "V")
    fig = composition_graph(scores, n_layers=gpt2_weights.n_layers, n_heads=gpt2_weights.n_heads, threshold=-1.0,
                            top_k=1)
    lines = [t for t in fig.data if t.mode == "lines"]
    n_edges = sum(sum(1 for x in t.x if x is None) for t in lines)
    assert len(lines) <= 3 and n_edges == gpt2_weights.n_heads * (gpt2_weights.n_layers - 1)
