"""The unit 07 checkers accept the reference solutions and reject the stub and plausible wrong answers: the seed's
substring replace, a two-step replace, a forgotten capital; the last position of a padded batch, a sign flip; a
max over positions (the seed's), the min, a mean over positions, |x| summed, a sum over problems; each failure names
its mistake."""

from __future__ import annotations

import re

import pytest
import torch

from mechlab.checks import unit07
from mechlab.checks.core import CheckFailed


def stub(*args):
    raise NotImplementedError("stub")


def swap_words(text, a, b):
    other = {a: b, b: a}
    return re.sub(rf"\b({a}|{b})(es)?\b", lambda m: other[m.group(1).lower()].capitalize() * m.group(1)[0].isupper()
                  + other[m.group(1).lower()] * (not m.group(1)[0].isupper()) + (m.group(2) or ""), text,
                  flags=re.IGNORECASE)


def swap_substring(text, a, b):  # the seed's str.replace: also rewrites 'impus' inside 'grimpus'
    return text.replace(a, "\0").replace(b, a).replace("\0", b)


def swap_two_steps(text, a, b):  # a -> b, then b -> a: everything ends up as a
    return re.sub(rf"\b{b}", a, re.sub(rf"\b{a}", b, text))


def swap_lowercase_only(text, a, b):  # forgets "Wumpuses are ..."
    return re.sub(rf"\b({a}|{b})(es)?\b", lambda m: {a: b, b: a}[m.group(1)] + (m.group(2) or ""), text)


def test_swap_words_accepts_solution():
    unit07.check_swap_words(swap_words)


@pytest.mark.parametrize("wrong", [stub, swap_substring, swap_two_steps, swap_lowercase_only],
                         ids=["stub", "substring replace", "two-step replace", "capitals ignored"])
def test_swap_words_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit07.check_swap_words(wrong)


def decision(logits, pos, correct, incorrect):
    rows = torch.arange(logits.shape[0])
    return logits[rows, pos, correct] - logits[rows, pos, incorrect]


def test_decision_accepts_solution():
    unit07.check_decision_logit_diff(decision)


@pytest.mark.parametrize("wrong", [
    stub,
    lambda lg, p, c, i: decision(lg, torch.full_like(p, lg.shape[1] - 1), c, i),
    lambda lg, p, c, i: -decision(lg, p, c, i),
    lambda lg, p, c, i: decision(lg, p, c, i).mean().expand(lg.shape[0]),
], ids=["stub", "last position (padding)", "sign flip", "batch mean"])
def test_decision_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit07.check_decision_logit_diff(wrong)


def aggregate(maps):
    return torch.stack([m.sum(-1) for m in maps]).mean(0)


def test_aggregate_accepts_solution():
    unit07.check_aggregate_positions(aggregate)


def _zero_padded_sum(maps):  # padding is harmless for a sum: this one must pass
    width = max(m.shape[1] for m in maps)
    return torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in maps]).sum(-1).mean(0)


def test_aggregate_accepts_zero_padding_before_the_sum():
    unit07.check_aggregate_positions(_zero_padded_sum)


@pytest.mark.parametrize("wrong,mistake", [
    (stub, "not implemented"),
    (lambda maps: torch.stack([m.max(-1).values for m in maps]).mean(0), "max over positions"),
    (lambda maps: torch.stack([m.min(-1).values for m in maps]).mean(0), "min over positions"),
    (lambda maps: torch.stack([m.mean(-1) for m in maps]).mean(0), "averaged over positions"),
    (lambda maps: torch.stack([m.abs().sum(-1) for m in maps]).mean(0), "lost the sign"),
    (lambda maps: torch.stack([m.sum(-1) for m in maps]).sum(0), "summed over problems"),
    (lambda maps: torch.stack([m.sum(-1) for m in maps]).mean(0)[:1], "shape"),
], ids=["stub", "max (seed)", "min", "mean over positions", "sum of |x|", "sum over problems", "wrong shape"])
def test_aggregate_rejects_and_names_the_mistake(wrong, mistake):
    with pytest.raises(CheckFailed, match=mistake):
        unit07.check_aggregate_positions(wrong)
