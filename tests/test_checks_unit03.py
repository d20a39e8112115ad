"""Each unit-03 checker rejects the blank stub and plausible wrong answers, and accepts a correct one.

The "solutions" here are written independently of ``mechlab.models.toy`` (loops, explicit masks), so a checker that
merely compared a function with itself could not pass them all.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mechlab.checks import unit03
from mechlab.checks.core import CheckFailed


def stub(*args):
    raise NotImplementedError("Exercise: replace this line with your solution.")


# ---- attention pattern ---------------------------------------------------------------------------------


def pattern_solution(q, k):
    n = q.shape[1]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    future = torch.arange(n)[None, :] > torch.arange(n)[:, None]
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def pattern_mask_from_values(q, k):  # the seed's bug: marks nonzero scores above the diagonal, in place
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return scores.masked_fill_(torch.triu(scores, diagonal=1).bool(), -1e5).softmax(-1)


def pattern_no_scale(q, k):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    future = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def pattern_masks_the_diagonal(q, k):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    future = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(0)
    return scores.masked_fill(future, -1e9).softmax(-1)


def pattern_softmax_over_queries(q, k):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    future = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-2)


def test_attention_pattern_accepts_solution(capsys):
    unit03.check_attention_pattern(pattern_solution)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, pattern_mask_from_values, pattern_no_scale, pattern_masks_the_diagonal,
                                   pattern_softmax_over_queries])
def test_attention_pattern_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit03.check_attention_pattern(wrong)


def test_value_mask_message_names_the_zero_key_case():
    with pytest.raises(CheckFailed, match="zero"):
        unit03.check_attention_pattern(pattern_mask_from_values)


# ---- training step -------------------------------------------------------------------------------------


def step_solution(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(tokens)[:, -1, :], labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_without_zero_grad(model, optimizer, tokens, labels):
    loss = F.cross_entropy(model(tokens)[:, -1], labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_first_position(model, optimizer, tokens, labels):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(tokens)[:, 0], labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_without_update(model, optimizer, tokens, labels):
    return F.cross_entropy(model(tokens)[:, -1], labels).item()


def step_returns_nothing(model, optimizer, tokens, labels):
    step_solution(model, optimizer, tokens, labels)


def test_train_step_accepts_solution():
    unit03.check_train_step(step_solution)


@pytest.mark.parametrize("wrong", [stub, step_without_zero_grad, step_first_position, step_without_update,
                                   step_returns_nothing])
def test_train_step_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit03.check_train_step(wrong)


# ---- head to logits ------------------------------------------------------------------------------------


def h2l_solution(z, W_O, W_U, head):
    out = torch.zeros(z.shape[0], z.shape[1], W_U.shape[1])
    for b in range(z.shape[0]):
        for p in range(z.shape[1]):
            out[b, p] = z[b, p, head] @ W_O[head] @ W_U
    return out


def h2l_wrong_weight_index(z, W_O, W_U, head):
    return z[:, :, head] @ W_O[0] @ W_U


def h2l_all_heads(z, W_O, W_U, head):
    return torch.einsum("bphd,hdm,mv->bpv", z, W_O, W_U)


def h2l_indexes_position_axis(z, W_O, W_U, head):
    return z[:, head] @ W_O[head] @ W_U


def h2l_forgets_unembed(z, W_O, W_U, head):
    return z[:, :, head] @ W_O[head]


def test_head_to_logits_accepts_solution():
    unit03.check_head_to_logits(h2l_solution)


@pytest.mark.parametrize("wrong", [stub, h2l_wrong_weight_index, h2l_all_heads, h2l_indexes_position_axis,
                                   h2l_forgets_unembed])
def test_head_to_logits_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit03.check_head_to_logits(wrong)


@pytest.mark.parametrize("wrong, named", [(pattern_no_scale, "1/sqrt"), (pattern_masks_the_diagonal, "diagonal"),
                                          (pattern_softmax_over_queries, "query axis")])
def test_attention_pattern_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit03.check_attention_pattern(wrong)


def test_value_mask_is_reported_with_its_targeted_case_and_hint():
    with pytest.raises(CheckFailed, match="(?s)Case 'future keys are zero.*build it from positions"):
        unit03.check_attention_pattern(pattern_mask_from_values)
