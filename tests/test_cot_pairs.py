"""Subtask pairs (mechlab.cot.pairs) and their analyses (mechlab.cot.analysis) on tiny models of both families.

Pairs: equal lengths, the decision read at the last position, the shots untouched, and only the intended tokens
changed (checked token by token, not through the builder's own code). Skips: counted with their reasons, for cases
built to be skipped. Analyses: DLA sums to each problem's logit difference from a plain forward pass; AtP agrees
with a finite-difference patch of the same component; IG on the residual stream is complete (its sum is the exact
effect of patching the whole layer)."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.results import Labelled
from mechlab.cot.analysis import (
    SubtaskAtP,
    aggregate_positions,
    assert_aggregate,
    assert_dla_complete,
    assert_ig_complete,
    assert_last_mlp_exact,
    assert_ranking,
    atp_subtask,
    dla_subtask,
    exact_subtask,
    last_mlp_linearity,
    pair_head_patterns,
    spearman,
    tolerance,
    top_heads,
)
from mechlab.cot.pairs import SUBTASKS, build_pairs, keep_decided, pair_logit_diffs, swap_words
from mechlab.cot.runner import make_items
from mechlab.data.prontoqa import Fact, Problem, make_problems, render


def _items(style: str, n: int = 10, seed: int = 3):
    if style == "compact":
        return make_items(make_problems(n, hops=(1, 2), seed=seed, n_distractors=4), [], n_shots=0, style="compact")
    pool = make_problems(6, seed=seed + 100, style="seed")
    return make_items(make_problems(n, hops=(1, 2), seed=seed, style="seed"), pool, n_shots=1, style="seed")


def _ids(model, word):
    return model.to_tokens(word, prepend_bos=False)[0].tolist()


@pytest.mark.parametrize("style", ["compact", "seed"])
@pytest.mark.parametrize("subtask", list(SUBTASKS))
def test_pairs_equal_length_and_only_intended_edits(tiny_model, subtask, style):
    items = _items(style)
    pairs = build_pairs(tiny_model, items, subtask)
    assert len(pairs) + len(pairs.skipped) == len(items)
    assert len(pairs) >= 1, pairs.summary()
    by_id = {x.id: x for x in items}
    for p in pairs:
        item = by_id[p.item_id]
        c, r = p.clean_tokens, p.corrupted_tokens
        assert c.shape == r.shape and p.pos == len(c) - 1 and c[-1] == r[-1]
        assert p.correct_id != p.incorrect_id
        shots = item.prompt[:-len(render(item.problem, style, with_proof=False))]
        assert p.clean.startswith(item.prompt) and p.corrupted.startswith(shots)
        n_shot_tokens = len(tiny_model.to_tokens(shots, prepend_bos=True, truncate=False)[0]) - 1 if shots else 1
        differ = (c != r).nonzero()[:, 0].tolist()
        assert differ and min(differ) >= n_shot_tokens, "the shots must not change"
        prob = item.problem
        if subtask == "S1":  # the corrupted text is the clean one with the two species swapped as words
            alt = p.incorrect.strip()
            assert p.corrupted == shots + swap_words(p.clean[len(shots):], prob.chain[0], alt)
            if style == "compact":
                allowed = {_ids(tiny_model, " " + prob.chain[0])[0], _ids(tiny_model, " " + alt)[0]}
                assert {int(c[i]) for i in differ} <= allowed and {int(r[i]) for i in differ} <= allowed
        elif subtask == "S2":  # exactly two facts exchange their attributes
            if style == "compact":
                words = {_ids(tiny_model, p.correct)[0], _ids(tiny_model, p.incorrect)[0]}
                assert len(differ) == 2 and {int(c[i]) for i in differ} == words == {int(r[i]) for i in differ}
        else:  # S3/S4: only "not"s move; without them the two token sequences are the same
            not_id = _ids(tiny_model, " not")[0]
            assert int((c == not_id).sum()) == int((r == not_id).sum())
            assert torch.equal(c[c != not_id], r[r != not_id])
            assert p.clean.count(" not") == p.corrupted.count(" not")
            tail = lambda text: text[text.rfind("Question:"):]  # noqa: E731
            assert tail(p.clean).count(" not") != tail(p.corrupted).count(" not")  # the proof's sign flipped


def _problem(**kw) -> Problem:
    base = dict(entity="Fae", entity_species=("impus",), attribute="hot", chain=("impus",), negated=False,
                label=True, hops=1,
                facts=(Fact("impus", "hot", True, False), Fact("wumpus", "hot", True, True)))
    base.update(kw)
    return Problem(**base)


def test_skips_are_counted_with_reasons(gpt2_like):
    # 'an impus' vs 'a wumpus': the article would give S1 away; no spare fact to rebalance S3/S4; no other attribute
    items = make_items([_problem()], [], n_shots=0, style="compact")
    for subtask, reason in (("S1", "different articles"), ("S2", "no other attribute fact"),
                            ("S3", "too few off-path"), ("S4", "too few off-path")):
        res = build_pairs(gpt2_like, items, subtask)
        assert len(res) == 0 and len(res.skipped) == 1
        item_id, sub, why = res.skipped[0]
        assert item_id == items[0].id and sub == subtask and reason in why
        assert "1 skipped" in res.summary() and reason in res.summary()


def test_rows_keep_only_solved_items(gpt2_like):
    items = _items("compact", n=4)
    rows = [{"id": items[0].id, "correct_pred": True, "correct_cot": True},
            {"id": items[1].id, "correct_pred": False, "correct_cot": False},
            {"id": items[2].id, "correct_pred": True, "correct_cot": False}]
    res = build_pairs(gpt2_like, items, "S2", rows=rows)
    reasons = {i: r for i, _, r in res.skipped}
    assert "wrong answer" in reasons[items[1].id] and "CoT differs" in reasons[items[2].id]
    assert "no result row" in reasons[items[3].id]
    assert {p.item_id for p in res} | set(reasons) == {x.id for x in items}


class _ByteTokenizerModel:
    """Only a tokenizer (byte-level, no merges): every word starts with the same space token."""

    def __init__(self):
        from transformers import AutoTokenizer

        from mechlab.core.loading import fallback_tokenizer_dir

        self.tokenizer = AutoTokenizer.from_pretrained(fallback_tokenizer_dir())
        self.cfg = type("cfg", (), {"n_ctx": 4096})()

    def to_tokens(self, text, prepend_bos=True, truncate=False):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([[self.tokenizer.bos_token_id or 0] * prepend_bos + ids])


def test_another_tokenizer_skips_shared_first_tokens():
    model = _ByteTokenizerModel()
    res = build_pairs(model, _items("compact", n=5), "S1")
    assert len(res) == 0 and len(res.skipped) == 5
    assert set(res.reasons()) <= {"the two answers share their first token", "clean and corrupted tokenize to "
                                  "different lengths", "the two species take different articles, which would give "
                                  "the answer away"}
    assert res.reasons()["the two answers share their first token"] >= 1


def test_bad_input_says_what_to_do(gpt2_like):
    items = _items("compact", n=2)
    with pytest.raises(ValueError, match="subtask"):
        build_pairs(gpt2_like, items, "S5")
    with pytest.raises(ValueError, match="CotItems"):
        build_pairs(gpt2_like, [{"id": "x", "prompt": "p"}], "S1")
    with pytest.raises(ValueError, match="result rows"):
        build_pairs(gpt2_like, items, "S1", rows={"id": 1})
    with pytest.raises(ValueError, match="no pairs"):
        build_pairs(gpt2_like, make_items([_problem()], [], n_shots=0, style="compact"), "S1").tensors()


def test_dla_sums_to_each_problems_logit_diff(tiny_model):
    pairs = build_pairs(tiny_model, _items("compact", n=6), "S3")
    dla = dla_subtask(tiny_model, pairs, batch_size=4, progress=False)  # padded batches of different lengths
    with torch.no_grad():  # each pair alone, unpadded, from the logits
        direct = torch.stack([(lambda lg: lg[0, -1, p.correct_id] - lg[0, -1, p.incorrect_id])(
            tiny_model(p.clean_tokens[None])) for p in pairs]).float()
    scale = direct.abs().max() + 1e-3
    assert torch.allclose(dla.components.values.sum(0), direct, atol=1e-4 * scale + 1e-6)
    assert torch.allclose(dla.logit_diff, direct, atol=1e-4 * scale + 1e-6)
    assert dla.heads().shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert len(top_heads(dla.mean(), 3)) == 3


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma"])
def scaled_model(request):
    """Weights x4: at random init (std 0.02) attention is nearly uniform and a last-layer q or k moves the logit
    difference by ~1e-5, too little for a comparison to tell a right estimate from 0."""
    from mechlab.core.loading import load_model

    model = load_model(request.param, seed=6, verbose=False)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(4.0)
    return model


@pytest.mark.parametrize("kind,component", [("k", 0), ("q", 0), ("mlp_out", 0)])
def test_atp_matches_a_hand_written_gradient(scaled_model, kind, component):
    """AtP (reduce=sum over positions) = (corrupted - clean) . d metric / d activation for one component, summed
    over positions: here from a zero tensor added at the hook by hand and torch.autograd.grad. (A finite difference
    is no reference on Gemma: its RMSNorm computes in fp32, whose rounding over a small step swamps 1e-3.)"""
    from mechlab.core.activations import hook_name, n_heads_for

    model = scaled_model
    pairs = build_pairs(model, _items("compact", n=3), "S3")[:1]
    atp = atp_subtask(model, pairs, kinds=[kind], reduce="sum", progress=False)
    layer = 0 if kind == "mlp_out" else model.cfg.n_layers - 1
    n_comp = 1 if kind == "mlp_out" else n_heads_for(model, kind)
    row = layer * n_comp + component if kind != "mlp_out" else layer
    estimate = float(atp.per_problem[kind].values[row, 0])
    p = pairs[0]
    name = hook_name(kind, layer)
    with torch.no_grad():
        _, rc = model.run_with_cache(p.corrupted_tokens[None], names_filter=lambda n: n == name)
    seen = {}

    def add_zero(act, hook):
        seen["clean"] = act.detach()
        seen["zero"] = torch.zeros_like(act, requires_grad=True)
        return act + seen["zero"]

    with torch.enable_grad():
        logits = model.run_with_hooks(p.clean_tokens[None], fwd_hooks=[(name, add_zero)])
        ld = logits[0, -1, p.correct_id] - logits[0, -1, p.incorrect_id]
        (grad,) = torch.autograd.grad(ld, seen["zero"])
    idx = (slice(None), slice(None), component) if grad.ndim == 4 else (slice(None), slice(None))
    want = float(((rc[name] - seen["clean"]) * grad)[idx].sum())
    assert abs(want) > 1e-4, f"the effect ({want:.2e}) is too small for the comparison to mean anything"
    assert estimate == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_ig_on_the_residual_stream_is_complete(tiny_model):
    pairs = build_pairs(tiny_model, _items("compact", n=4), "S3")[:2]
    clean, corrupted = pair_logit_diffs(tiny_model, pairs)
    ig = atp_subtask(tiny_model, pairs, kinds=["resid_pre"], method="ig", steps=16, reduce="sum", progress=False)
    gap = corrupted - clean  # patching a whole resid_pre layer gives the corrupted run exactly
    for layer in range(tiny_model.cfg.n_layers):
        got = ig.per_problem["resid_pre"].values[layer]
        assert torch.allclose(got, gap, rtol=3e-2, atol=3e-2 * float(gap.abs().max()) + 1e-6)


def test_mqa_keys_and_values_have_one_row_per_kv_head(gemma_like, gpt2_like):
    for model, tag in ((gemma_like, "KV"), (gpt2_like, "H")):
        pairs = build_pairs(model, _items("compact", n=3), "S2")[:1]
        atp = atp_subtask(model, pairs, kinds=["q", "k", "v"], progress=False)
        n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
        assert len(atp.per_problem["k"]) == model.cfg.n_layers * n_kv
        assert atp.per_problem["v"].labels[0] == f"L0{tag}0"
        assert len(atp.per_problem["q"]) == model.cfg.n_layers * model.cfg.n_heads


def test_keep_decided_and_patterns(gpt2_like):
    pairs = build_pairs(gpt2_like, _items("compact", n=6), "S1")
    clean, _ = pair_logit_diffs(gpt2_like, pairs)
    kept = keep_decided(gpt2_like, pairs)
    assert len(kept) == int((clean > 0).sum())
    assert len(kept.skipped) == len(pairs.skipped) + int((clean <= 0).sum())
    pats, toks = pair_head_patterns(gpt2_like, pairs[0], ["L0H1", "L1H0"], last=12)
    assert pats.shape == (2, 12, 12) and len(toks) == 12
    # a window of the last positions: causal (nothing above the diagonal), rows sum to at most 1
    assert float(pats.triu(1).abs().max()) == 0 and bool((pats.sum(-1) <= 1 + 1e-5).all())


def test_aggregate_positions_uses_each_problems_own_positions():
    maps = [torch.tensor([[-3.0, -1.0]]), torch.tensor([[-2.0, -5.0, -4.0]])]
    assert torch.allclose(aggregate_positions(maps), torch.tensor([(-4.0 - 11.0) / 2]))  # signed sum by default
    assert torch.allclose(aggregate_positions(maps, "max"), torch.tensor([-1.5]))
    assert torch.allclose(aggregate_positions(maps, "min"), torch.tensor([-4.0]))
    assert torch.allclose(aggregate_positions(maps, "absmax"), torch.tensor([-4.0]))


@pytest.mark.parametrize("bad,match", [
    ([], "empty list"),
    (torch.zeros(2, 3), "Tensor"),
    ([torch.zeros(2, 0)], "empty"),
    ([torch.zeros(0, 4)], "empty"),
    ([torch.zeros(2, 3), torch.zeros(3, 3)], "same components"),
    ([torch.zeros(2)], r"\[component, pos\]"),
])
def test_aggregate_positions_refuses_empty_or_ragged_maps(bad, match):
    with pytest.raises(ValueError, match=match):
        aggregate_positions(bad)
    with pytest.raises(ValueError, match="reduce"):
        aggregate_positions([torch.zeros(1, 2)], "median")


def test_spearman_against_hand_ranks():
    a, b = torch.tensor([0.1, 3.0, 2.0, -1.0]), torch.tensor([10.0, 40.0, 30.0, 20.0])
    # ranks [1, 3, 2, 0] and [0, 3, 2, 1]: d = [1, 0, 0, -1], rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(a, b) == pytest.approx(0.8)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties share their mean rank: [0.5, 0.5, 2] vs [0, 1, 2] -> Pearson of the ranks
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.8660254)
    with pytest.raises(ValueError, match="constant"):
        spearman(torch.ones(3), torch.arange(3.0))


def test_exact_subtask_is_a_whole_component_patch(gpt2_like):
    """exact_subtask's value for one head equals a hand-written patch of that head's z at every position."""
    from mechlab.core.activations import hook_name

    pairs = build_pairs(gpt2_like, _items("compact", n=8), "S3")[:2]
    assert len(pairs) == 2
    exact = exact_subtask(gpt2_like, pairs, kinds=["z", "mlp_out"], progress=False)
    assert exact.per_problem["z"].values.shape == (gpt2_like.cfg.n_layers * gpt2_like.cfg.n_heads, 2)
    name, head = hook_name("z", 1), 2
    for j, p in enumerate(pairs):
        with torch.no_grad():
            _, rc = gpt2_like.run_with_cache(p.corrupted_tokens[None], names_filter=lambda n: n == name)

            def patch(act, hook, src=rc[name]):
                act = act.clone()
                act[:, :, head] = src[:, :, head]
                return act

            def ld(logits, p=p):
                return float(logits[0, -1, p.correct_id] - logits[0, -1, p.incorrect_id])

            want = ld(gpt2_like.run_with_hooks(p.clean_tokens[None], fwd_hooks=[(name, patch)])) \
                - ld(gpt2_like(p.clean_tokens[None]))
        got = float(exact.per_problem["z"][f"L1H{head}"][j])
        assert got == pytest.approx(want, abs=1e-5)
    assert torch.allclose(exact.totals("z"), exact.per_problem["z"].values.sum(0))


def test_last_mlp_atp_is_exact_with_the_scale_frozen(gpt2_like):
    """Frozen-scale AtP of the last layer's whole mlp_out equals the frozen-scale exact patch (computed with its own
    hooks); a wrong value is caught."""
    pairs = build_pairs(gpt2_like, _items("compact", n=8), "S3")[:3]
    lin = last_mlp_linearity(gpt2_like, pairs, progress=False)
    assert lin.shape == (2, len(pairs)) and bool((lin[1].abs() > 1e-4).any())
    assert assert_last_mlp_exact(lin, torch.float32) < 1e-4
    assert float((lin[0] - lin[1]).abs().max()) < 1e-3 * float(lin[1].abs().max())  # relative to the effect too
    with pytest.raises(AssertionError, match="not exact on pair"):
        assert_last_mlp_exact(lin + torch.tensor([[0.01], [0.0]]), torch.float32)


def test_notebook_checks_pass_in_bfloat16():
    """The checks notebook 07 asserts, on a tiny Gemma in bfloat16 (the T4 plan): their tolerances follow the dtype.
    The fp32 tolerance would reject the same bf16 DLA, so the dtype really sets it."""
    from mechlab.core.loading import load_model

    model = load_model("tiny-gemma", dtype="bfloat16", seed=2, verbose=False)
    dtype = next(model.parameters()).dtype
    assert dtype == torch.bfloat16
    pairs = build_pairs(model, _items("compact", n=6), "S3")
    assert len(pairs) >= 2
    clean, corrupted = pair_logit_diffs(model, pairs)
    dla = dla_subtask(model, pairs, progress=False)
    gap = assert_dla_complete(dla, clean, dtype)
    assert gap > tolerance(torch.float32) * float(dla.components.values.abs().sum(0).max() + 1)  # fp32's would fail
    with pytest.raises(AssertionError, match="differ"):
        assert_dla_complete(dla, clean + 1.0, dtype)  # and a wrong logit difference is still caught

    atp = atp_subtask(model, pairs, kinds=["z", "mlp_out"], keep_maps=len(pairs), progress=False)
    assert_aggregate(atp, "z")
    exact = exact_subtask(model, pairs, kinds=["z", "mlp_out"], progress=False)
    # a figure that keeps exact patching's signs and order but not its values passes; flipped signs do not
    halved = SubtaskAtP(exact.subtask, "atp", "sum", {k: Labelled(0.5 * v.values, v.labels, axes=v.axes)
                                                      for k, v in exact.per_problem.items()})
    assert assert_ranking(halved.mean("z"), exact.mean("z"), min_spearman=1.0, same_sign=True) == pytest.approx(1.0)
    flipped = SubtaskAtP(exact.subtask, "atp", "sum", {k: Labelled(-v.values, v.labels, axes=v.axes)
                                                       for k, v in exact.per_problem.items()})
    with pytest.raises(AssertionError, match="sign differs"):
        assert_ranking(flipped.mean("mlp_out"), exact.mean("mlp_out"), min_spearman=-1.0, same_sign=True)

    ig = atp_subtask(model, pairs[:2], kinds=["resid_pre"], method="ig", steps=16, progress=False)
    assert_ig_complete(ig, clean[:2], corrupted[:2], dtype)
    with pytest.raises(AssertionError, match="IG on"):
        assert_ig_complete(ig, clean[:2], corrupted[:2] + 1.0, dtype)

    lin = last_mlp_linearity(model, pairs[:2], progress=False)
    assert_last_mlp_exact(lin, dtype)
