"""Unit 07's checks follow the dtype: on a tiny Gemma-like model in bfloat16 they pass with bf16's tolerance,
where float32's tolerance would be too tight (the rounding is real, not a bug the tolerance hides)."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.loading import load_model
from mechlab.cot.analysis import (
    assert_dla_complete,
    assert_ig_complete,
    assert_last_mlp_exact,
    atp_subtask,
    dla_subtask,
    last_mlp_linearity,
    tolerance,
)
from mechlab.cot.pairs import build_pairs, pair_logit_diffs
from mechlab.cot.runner import make_items
from mechlab.data.prontoqa import make_problems


@pytest.fixture(scope="module")
def bf16_pairs():
    model = load_model("tiny-gemma", dtype="bfloat16", seed=3, verbose=False)
    with torch.no_grad():  # larger weights: logits of a few units, so bf16's rounding shows
        for name, param in model.original_model.named_parameters():
            if param.ndim == 2 and "embed" not in name:
                param.mul_(4)
    problems = make_problems(6, hops=(1, 2), seed=7, style="compact", n_distractors=4)
    items = make_items(problems, make_problems(2, seed=8, style="compact", n_distractors=1), n_shots=0,
                       style="compact")
    pairs = build_pairs(model, items, "S1")
    assert len(pairs) >= 3, pairs.summary()
    return model, pairs[:4]


def test_the_model_really_runs_in_bfloat16(bf16_pairs):
    model, _ = bf16_pairs
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tolerance(torch.bfloat16) > 100 * tolerance(torch.float32)


def test_dla_is_complete_within_the_bf16_tolerance_and_not_the_fp32_one(bf16_pairs):
    model, pairs = bf16_pairs
    clean, _ = pair_logit_diffs(model, pairs)
    dla = dla_subtask(model, pairs, progress=False)
    assert_dla_complete(dla, clean, torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_dla_complete(dla, clean, torch.float32)


def test_frozen_scale_last_mlp_and_ig_completeness_pass_in_bf16(bf16_pairs):
    model, pairs = bf16_pairs
    assert_last_mlp_exact(last_mlp_linearity(model, pairs, progress=False), torch.bfloat16, atol=1e-4)
    pair = pairs[:1]
    clean, corrupted = pair_logit_diffs(model, pair)
    ig = atp_subtask(model, pair, kinds=["resid_pre"], method="ig", steps=16, progress=False)
    assert_ig_complete(ig, clean, corrupted, torch.bfloat16)
