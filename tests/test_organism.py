"""The shipped organism: loads fast, its tokenizer round-trips, it meets its targets on a fast subset, the model
card's numbers match a recomputation, and a short training run lowers the loss."""

from __future__ import annotations

import json
import time

import pytest
import torch

from mechlab.core.loading import ORGANISM_CHECKPOINT, organism_available

pytestmark = pytest.mark.skipif(not organism_available(), reason="the organism checkpoint is not shipped")


@pytest.fixture(scope="module")
def organism():
    import transformer_lens  # noqa: F401  (the import itself, 3-4 s, is not part of loading the model)

    from mechlab.core.loading import load_model

    start = time.process_time()  # CPU time of this process: a busy machine must not fail the test
    model = load_model("organism", device="cpu", verbose=False)
    model.load_seconds = time.process_time() - start
    return model


@pytest.fixture(scope="module")
def evaluation():
    return json.loads((ORGANISM_CHECKPOINT / "evaluation.json").read_text())


def test_loads_offline_fast_and_is_the_default(organism):
    from mechlab.core.loading import resolve_model_name

    assert organism.load_seconds < 5.0
    assert resolve_model_name("offline") == "organism"
    size = sum(p.stat().st_size for p in ORGANISM_CHECKPOINT.iterdir())
    assert size < 20e6
    assert type(organism.original_model).__name__ == "GPT2LMHeadModel"


def test_tokenizer_round_trips_and_is_bpe():
    from mechlab.data.ioi import NAMES
    from mechlab.models.organism.tokenizer import load_tokenizer

    tok = load_tokenizer()
    texts = ["When Mary and John went to the store, John gave a drink to Mary.",
             "Every wumpus is a yumpus.\nQuestion: Is Fae hot?\n(1) Fae is a wumpus.", "  odd   spacing\t\n",
             "Unicode: café, naïve, 東京, emoji 🙂", "The archaeologist found interpretability counterintuitive."]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    pieces = tok.convert_ids_to_tokens(tok("The garden and the river")["input_ids"])
    assert pieces == ["The", "Ġgarden", "Ġand", "Ġthe", "Ġriver"]  # leading-space tokens
    assert all(len(tok(" " + n)["input_ids"]) == 1 for n in NAMES)
    assert len(tok(" interpretability")["input_ids"]) >= 3  # a rare word split into pieces
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"


@pytest.fixture(scope="module")
def subset(organism):
    from mechlab.course import organism_card as ev

    seed = ev.HELD_OUT_SEED + 7
    return {"ioi": ev.ioi_metrics(organism, n=60, seed=seed),
            "induction": ev.induction_metrics(organism, n=12, seed=seed),
            "prontoqa": ev.prontoqa_metrics(organism, n=20, seed=seed)}


SUBSET_CHECKS = {  # target -> (does the subset meet it?, result group, key of the number to show)
    "ioi_accuracy": lambda s, t: (s["ioi"]["accuracy"] >= t["ioi_accuracy"], "ioi", "accuracy"),
    "ioi_logit_diff": lambda s, t: (s["ioi"]["logit_diff"] >= t["ioi_logit_diff"], "ioi", "logit_diff"),
    "induction": lambda s, t: (s["induction"]["second_half_loss"] <= t["induction_second_half_loss"]
                               and s["induction"]["first_half_loss"] >= t["induction_first_half_loss_min"],
                               "induction", "second_half_loss"),
    "prontoqa_answer": lambda s, t: (s["prontoqa"]["answer_acc"] >= t["prontoqa_answer_acc"], "prontoqa", "answer_acc"),
    "prontoqa_cot": lambda s, t: (s["prontoqa"]["cot_acc"] >= t["prontoqa_cot_acc"], "prontoqa", "cot_acc"),
}


# What the shipped checkpoint meets, written down here (not read from evaluation.json) so that a new checkpoint
# or a re-run of evaluate that loses a target fails a test instead of quietly turning it into an xfail.
EXPECTED_MET = {"ioi_accuracy": True, "ioi_logit_diff": True, "induction": True, "prontoqa_answer": True,
                "prontoqa_cot": True, "self_repair": True}


def test_evaluation_claims_what_the_tests_expect(evaluation):
    assert evaluation["targets_met"] == EXPECTED_MET, "update EXPECTED_MET with the card, or re-run evaluate"


@pytest.mark.parametrize("target", list(SUBSET_CHECKS))
def test_targets_on_a_fast_subset(subset, evaluation, target):
    """Every target the shipped checkpoint meets holds on a fresh held-out subset; a target it misses must be
    missed on the subset too (then the test is an expected failure that states the card's number)."""
    from mechlab.course import organism_card as ev

    met, group, key = SUBSET_CHECKS[target](subset, ev.TARGETS)
    expected = EXPECTED_MET[target]
    assert met == expected, (f"{target}: the fast subset gives {subset[group][key]:.3f} but the card says "
                             f"{evaluation[group][key]:.3f} ({'met' if expected else 'not met'}); re-run evaluate")
    if not expected:
        pytest.xfail(f"{target} is not reached by the shipped checkpoint: {key} = {evaluation[group][key]:.3f} "
                     f"(subset {subset[group][key]:.3f}); see the card")


def test_card_matches_recomputation(organism, evaluation):
    from mechlab.course import organism_card as ev

    ioi = ev.ioi_metrics(organism, n=evaluation["ioi"]["n"])
    assert ioi["accuracy"] == pytest.approx(evaluation["ioi"]["accuracy"], abs=1e-6)
    assert ioi["logit_diff"] == pytest.approx(evaluation["ioi"]["logit_diff"], abs=1e-3)
    h = ev.head_types(organism)
    for kind, scores in h["scores"].items():
        for label, value in scores.items():
            assert value == pytest.approx(evaluation["head_types"]["scores"][kind][label], abs=1e-4)
    assert h["detected"] == evaluation["head_types"]["detected"]
    record = json.loads((ORGANISM_CHECKPOINT / "training.json").read_text())
    card = (ORGANISM_CHECKPOINT.parent / "README.md").read_text()
    assert ev.card_section(evaluation, record) in card
    heads = json.loads((ORGANISM_CHECKPOINT.parent / "heads.json").read_text())
    assert heads == evaluation["head_types"]["detected"]


def test_self_repair_claim(organism, evaluation):
    """Recompute the direct effect of the top name mover and the effect of ablating it, by an exact patch."""
    from mechlab.core.tokens import logit_diff
    from mechlab.course import organism_card as ev
    from mechlab.data import ioi

    claim = evaluation["ioi_circuit"]
    layer, head = (int(x) for x in claim["top_name_mover"][1:].split("H"))
    n, seed = claim["n"], ev.HELD_OUT_SEED + 1
    clean_s = ioi.make_ioi(n, seed=seed)
    clean, corr = ioi.ioi_batch(organism, clean_s), ioi.ioi_batch(organism, ioi.corrupt(clean_s, "abc", seed=seed))
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = organism.run_with_cache(corr.tokens, names_filter=lambda x: x == name)
        rows = torch.arange(n)
        scales = []  # the final norm's scale at the end position: clean run, then patched run

        def keep_scale(s, hook):
            scales.append(s[rows, clean.end, 0])

        def patch(z, hook):
            z[:, :, head] = cache[name][:, :, head]
            return z

        base = organism.run_with_hooks(clean.tokens, fwd_hooks=[("ln_final.hook_scale", keep_scale)])[rows, clean.end]
        patched = organism.run_with_hooks(clean.tokens, fwd_hooks=[(name, patch), ("ln_final.hook_scale",
                                                                                   keep_scale)])[rows, clean.end]
    ld_patched = logit_diff(patched, clean.answer, clean.wrong)
    drop = float((logit_diff(base, clean.answer, clean.wrong) - ld_patched).mean())
    assert drop == pytest.approx(claim["total_effect"], abs=1e-3)
    # the LayerNorm share, by algebra instead of the evaluation's frozen-scale rerun: logit diff = x / scale + b,
    # so freezing the scale at its clean value changes it by (ld - b) * (1 - scale_ablated / scale_clean)
    with torch.no_grad():
        direction = organism.W_U[:, clean.answer] - organism.W_U[:, clean.wrong]
        b = organism.original_model.transformer.ln_f.bias @ direction
    ln_part = float(((ld_patched - b) * (1 - scales[1] / scales[0])).mean())
    assert ln_part == pytest.approx(claim["compensation_layernorm"], abs=1e-3)
    assert claim["compensation_components"] == pytest.approx(claim["compensation"] - ln_part, abs=1e-3)
    # the frozen-scale rerun and the per-component direct effects (heads and MLPs) account for the same change
    assert sum(claim["dla_change_when_ablated"].values()) == pytest.approx(claim["compensation_components"],
                                                                           abs=1e-3)
    assert abs(drop) > 0.05  # the patch changes the output
    met = claim["top_direct_effect"] > 1.0 and drop < 0.8 * claim["top_direct_effect"]
    assert evaluation["targets_met"]["self_repair"] == met
    assert met == EXPECTED_MET["self_repair"]
    if not met:
        pytest.xfail(f"self-repair is not reached: top head {claim['top_name_mover']} has direct effect "
                     f"{claim['top_direct_effect']:.2f} and ablating it costs {drop:.2f} (goal: direct > 1 and "
                     "cost < 0.8 x direct); see the card")


def test_training_smoke_lowers_the_loss(tmp_path):
    from mechlab.data.corpus import Mix
    from mechlab.models.organism.train import TrainConfig, train

    cfg = TrainConfig(steps=80, batch=8, seq_len=64, n_layer=1, n_embd=64, n_head=2, tokenizer_docs=1000,
                      min_frequency=20, warmup=5, log_every=5, mix=Mix(prontoqa=0.0))
    record = train(cfg, tmp_path, progress=False, max_seconds=50)
    losses = [loss for _, loss in record["losses"]]
    assert record["seconds"] < 60
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
