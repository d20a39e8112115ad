"""Each unit-01 checker rejects the blank stub and plausible wrong answers, and accepts a correct one written
independently of the reference (explicit loops, exp/sum softmax)."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit01
from mechlab.checks.core import CheckFailed


def stub(*args):
    raise NotImplementedError("Exercise: replace this line with your solution.")


# ---- top-k next tokens ---------------------------------------------------------------------------------


def top_k_solution(logits, k):
    last = logits[:, -1]
    probs = last.exp() / last.exp().sum(-1, keepdim=True)
    ids = torch.stack([torch.tensor(sorted(range(row.numel()), key=lambda i: -float(row[i]))[:k]) for row in probs])
    return probs.gather(-1, ids), ids


def top_k_of_logits(logits, k):  # forgets the softmax: the right ids, but logits reported as probabilities
    return logits[:, -1].topk(k)[:]


def top_k_first_position(logits, k):
    return logits[:, 0].softmax(-1).topk(k)[:]


def top_k_softmax_over_positions(logits, k):
    return logits.softmax(1)[:, -1].topk(k)[:]


def top_k_least_likely(logits, k):
    return logits[:, -1].softmax(-1).topk(k, largest=False)[:]


def test_top_k_accepts_solution(capsys):
    unit01.check_top_k_next_tokens(top_k_solution)
    assert "passed 3 cases" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, top_k_of_logits, top_k_first_position, top_k_softmax_over_positions,
                                   top_k_least_likely])
def test_top_k_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit01.check_top_k_next_tokens(wrong)


def test_top_k_message_says_probabilities_when_ids_are_right():
    with pytest.raises(CheckFailed, match="probabilities"):
        unit01.check_top_k_next_tokens(top_k_of_logits)


# ---- probability of each actual next token -------------------------------------------------------------


def token_probs_solution(logits, tokens):
    batch, pos, _ = logits.shape
    out = torch.zeros(batch, pos - 1)
    for b in range(batch):
        for p in range(pos - 1):
            row = logits[b, p].exp()
            out[b, p] = row[tokens[b, p + 1]] / row.sum()
    return out


def token_probs_no_shift(logits, tokens):  # the probability of the current token, not the next one
    return logits[:, :-1].softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]


def token_probs_shift_wrong_way(logits, tokens):
    return logits[:, 1:].softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]


def token_probs_log(logits, tokens):
    return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def token_probs_all_positions(logits, tokens):  # keeps the last position, which has no next token
    return logits.softmax(-1).gather(-1, tokens.roll(-1, dims=1)[..., None])[..., 0]


def test_token_probs_accepts_solution():
    unit01.check_correct_token_probs(token_probs_solution)


@pytest.mark.parametrize("wrong", [stub, token_probs_no_shift, token_probs_shift_wrong_way, token_probs_log,
                                   token_probs_all_positions])
def test_token_probs_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit01.check_correct_token_probs(wrong)


def top_k_float_ids(logits, k):  # the right numbers, but the ids converted to floats
    top = logits[:, -1].softmax(-1).topk(k)
    return top.values, top.indices.float()


def test_top_k_rejects_float_ids_by_dtype():
    with pytest.raises(CheckFailed, match="token ids has dtype torch.float32, expected an integer tensor"):
        unit01.check_top_k_next_tokens(top_k_float_ids)


@pytest.mark.parametrize("wrong, named", [(top_k_of_logits, "no softmax"), (top_k_first_position, "first position"),
                                          (top_k_least_likely, "least")])
def test_top_k_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit01.check_top_k_next_tokens(wrong)


@pytest.mark.parametrize("wrong, named", [(token_probs_no_shift, "no shift"), (token_probs_log, "log-probabilities")])
def test_token_probs_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: {named}"):
        unit01.check_correct_token_probs(wrong)
