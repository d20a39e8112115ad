"""Head-type scores against hand-written loops, planted patterns, and the model's own q/k on both families."""

from __future__ import annotations

import math

import pytest
import torch

from mechlab.core.activations import hook_name
from mechlab.methods import heads
from mechlab.methods.circuits import GPT2_INDUCTION_CIRCUIT


def loop_scores(pattern, tokens):
    """Reference: plain Python loops over batch, query and key for one [batch, head, q, k] stack."""
    batch, n_heads, n, _ = pattern.shape
    out = {}
    for kind in heads.HEAD_TYPES:
        total, count = torch.zeros(n_heads), 0
        for b in range(batch):
            toks = tokens[b].tolist()
            for q in range(n):
                if kind == "previous_token":
                    keys = [q - 1] if q >= 1 else []
                elif kind == "duplicate_token":
                    keys = [k for k in range(q) if toks[k] == toks[q]]
                else:
                    keys = [j + 1 for j in range(q) if toks[j] == toks[q]]
                keys = sorted(set(keys))
                if not keys:
                    continue
                count += 1
                for h in range(n_heads):
                    total[h] += sum(float(pattern[b, h, q, k]) for k in keys)
        out[kind] = total / count
    return out


def random_causal_pattern(batch, n_heads, n, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n_heads, n, n, generator=gen) * 2
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def test_scores_match_loops_on_text_with_accidental_repeats():
    tokens = torch.tensor([[0, 5, 6, 5, 5, 7, 6, 5], [0, 1, 2, 3, 1, 2, 3, 9]])
    pattern = random_causal_pattern(2, 3, 8, seed=0)
    want = loop_scores(pattern, tokens)
    torch.testing.assert_close(heads.previous_token_score(pattern), want["previous_token"])
    torch.testing.assert_close(heads.duplicate_token_score(pattern, tokens), want["duplicate_token"])
    torch.testing.assert_close(heads.induction_score(pattern, tokens), want["induction"])


def test_planted_patterns_score_one():
    n = 2 * 6 + 1
    tokens = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.arange(1, 7)[None].repeat(1, 2)], dim=1)
    prev, dup, ind = (torch.zeros(n, n) for _ in range(3))
    for q in range(n):
        prev[q, max(q - 1, 0)] = 1
        dup[q, q - 6 if q > 6 else 0] = 1
        ind[q, q - 5 if q > 6 else 0] = 1
    pattern = torch.stack([prev, dup, ind])[None]  # [1, 3 heads, n, n]
    for kind, head in (("previous_token", 0), ("duplicate_token", 1), ("induction", 2)):
        got = {"previous_token": heads.previous_token_score(pattern),
               "duplicate_token": heads.duplicate_token_score(pattern, tokens),
               "induction": heads.induction_score(pattern, tokens)}[kind]
        assert got[head] == pytest.approx(1.0)
        others = torch.cat([got[:head], got[head + 1:]])
        assert (others < 0.2).all(), (kind, got)  # the others only overlap where they fall back to BOS


def test_no_repeats_is_a_clear_error():
    tokens = torch.arange(6)[None]
    with pytest.raises(ValueError, match="repeated_random_tokens"):
        heads.induction_score(random_causal_pattern(1, 2, 6, seed=1), tokens)
    with pytest.raises(ValueError, match="positions"):
        heads.duplicate_token_score(random_causal_pattern(1, 2, 6, seed=1), tokens[:, :5])


def test_repeated_random_tokens_structure(tiny_model):
    toks = heads.repeated_random_tokens(tiny_model, seq_len=10, batch=3, seed=4)
    assert toks.shape == (3, 21)
    assert (toks[:, 0] == tiny_model.tokenizer.bos_token_id).all()
    assert torch.equal(toks[:, 1:11], toks[:, 11:])
    for row in toks[:, 1:11]:
        assert len(set(row.tolist())) == 10
        assert tiny_model.tokenizer.bos_token_id not in row.tolist()
    assert not torch.equal(toks[0], toks[1])
    assert torch.equal(toks, heads.repeated_random_tokens(tiny_model, seq_len=10, batch=3, seed=4))
    with pytest.raises(ValueError, match="context"):
        heads.repeated_random_tokens(tiny_model, seq_len=tiny_model.cfg.n_ctx, batch=1)


def test_attention_patterns_match_hand_computed_attention(gpt2_like):
    """GPT-2 family: softmax(q k^T / sqrt(d_head)) with a causal mask, from the cached q and k."""
    model = gpt2_like
    tokens = heads.repeated_random_tokens(model, seq_len=5, batch=2, seed=0)
    got = heads.attention_patterns(model, tokens)
    names = {hook_name(kind, layer) for kind in ("q", "k") for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    n = tokens.shape[1]
    for layer in range(model.cfg.n_layers):
        q, k = cache[hook_name("q", layer)], cache[hook_name("k", layer)]
        for b in range(2):
            for h in range(model.cfg.n_heads):
                for i in range(n):
                    s = torch.tensor([float(q[b, i, h] @ k[b, j, h]) / math.sqrt(q.shape[-1]) for j in range(i + 1)])
                    want = torch.cat([s.softmax(0), torch.zeros(n - i - 1)])
                    torch.testing.assert_close(got[b, layer, h, i].cpu(), want, atol=1e-5, rtol=1e-4)


def test_head_scores_on_both_families_match_loops(tiny_model):
    tokens = heads.repeated_random_tokens(tiny_model, seq_len=6, batch=2, seed=3)
    scores = heads.head_scores(tiny_model, tokens)
    pattern = heads.attention_patterns(tiny_model, tokens)
    assert pattern.shape == (2, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, 13, 13)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0)
    for layer in range(tiny_model.cfg.n_layers):
        want = loop_scores(pattern[:, layer].cpu(), tokens.cpu())
        for kind in heads.HEAD_TYPES:
            torch.testing.assert_close(scores.grid(kind)[layer], want[kind], atol=1e-5, rtol=1e-4)
    assert scores.induction.labels[:2] == ["L0H0", "L0H1"]
    assert scores.induction.unit == "attention mass"


def test_planted_induction_head_is_detected(gemma_like):
    """Overwrite one head's pattern with an exact induction pattern: the scores must find it and only it."""
    model = gemma_like
    tokens = heads.repeated_random_tokens(model, seq_len=6, batch=2, seed=5)
    n = tokens.shape[1]
    planted = torch.zeros(n, n)
    for q in range(n):
        planted[q, q - 5 if q > 6 else 0] = 1.0

    def plant(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 2] = planted.to(pattern.device)
        return pattern

    with model.hooks(fwd_hooks=[(hook_name("pattern", 1), plant)]):
        scores = heads.head_scores(model, tokens)
    assert float(scores.induction["L1H2"]) == pytest.approx(1.0)
    assert "L1H2" in scores.detected(0.99)["induction"]
    assert scores.detected(0.99)["induction"] == ["L1H2"]


def test_known_heads_and_comparison():
    known = heads.known_heads("gpt2")
    assert known["induction"] == ["L5H1", "L5H5", "L6H9", "L7H2", "L7H10"]
    assert heads.known_heads("tiny-gpt2") is None
    cmp = heads.compare_heads({"induction": ["L5H5", "L1H1"]}, known)
    assert cmp["induction"] == {"found": ["L5H5"], "missed": ["L5H1", "L6H9", "L7H10", "L7H2"], "new": ["L1H1"]}


def test_gpt2_heads_have_one_source_of_truth():
    for kind in ("induction", "previous_token"):
        assert GPT2_INDUCTION_CIRCUIT[kind] == heads.GPT2_KNOWN_HEADS[kind]
    assert GPT2_INDUCTION_CIRCUIT["previous_token"][0] == "L4H11"  # unit 03b reads the strongest one
    assert set(heads.GPT2_HEAD_SOURCES) == set(heads.HEAD_TYPES)
    # the IOI paper's induction class overlaps the induction-score list in L5H5 and L6H9
    assert set(heads.GPT2_IOI_INDUCTION_HEADS) & set(heads.GPT2_KNOWN_HEADS["induction"]) == {"L5H5", "L6H9"}
