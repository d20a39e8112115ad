"""Checkers for unit 07 (chain-of-thought subtasks), each against mechlab's reference.

The learner writes:

    swap_words(text, a, b)                        -> str
        exchange two species names in a problem's text: whole words, plurals and capitals too, in one pass
        (the reference is :func:`mechlab.cot.pairs.swap_words`).
    decision_logit_diff(logits, pos, correct, incorrect) -> Float[Tensor, "batch"]
        the logit difference at each row's own decision position in a right-padded batch
        (:func:`mechlab.cot.pairs.decision_logit_diff`).
    aggregate_positions(maps)                     -> Float[Tensor, "component"]
        the aggregate of per-problem noising AtP maps [component, pos] of different lengths: the signed sum over
        each problem's positions, then the mean over problems (:func:`mechlab.cot.analysis.aggregate_positions`).

Each check runs small random cases and names the case that failed and by how much.

Example::

    from mechlab.checks import unit07
    unit07.check_swap_words(swap_words)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from mechlab.checks.core import Case, compare_tensors, run_cases
from mechlab.cot.analysis import aggregate_positions
from mechlab.cot.pairs import decision_logit_diff, swap_words
from mechlab.data.prontoqa import make_problems, render


def _compare_text(got, want) -> str:
    if not isinstance(got, str):
        return f"output is a {type(got).__name__}, expected a str"
    if got == want:
        return ""
    i = next((k for k, (x, y) in enumerate(zip(got, want, strict=False)) if x != y), min(len(got), len(want)))
    return (f"text differs from character {i} on: got {got[max(0, i - 20):i + 30]!r}, expected "
            f"{want[max(0, i - 20):i + 30]!r}")


def _text_cases() -> list[Case]:
    cases = [Case("substring trap (impus inside grimpus)",
                  ("Every grimpus is an impus. Impuses are grimpuses. Fae is a brimpus.", "impus", "grimpus")),
             Case("capitalised plural", ("Wumpuses are zumpuses. Each zumpus is hot.", "wumpus", "zumpus"))]
    rng = random.Random(7)
    for style in ("compact", "seed"):
        for k, p in enumerate(make_problems(3, hops=(1, 2, 3), seed=11, style=style)):
            a = p.chain[0]
            b = rng.choice([f.subject for f in p.facts if f.subject != a])
            cases.append(Case(f"{style} problem {k} ({a} <-> {b})", (render(p, style), a, b)))
    return cases


def _reference_swap(text, a, b):
    return swap_words(text, a, b)


def check_swap_words(fn: Callable) -> None:
    """``fn(text, a, b) -> str`` against :func:`mechlab.cot.pairs.swap_words`."""
    run_cases(fn, _reference_swap, _text_cases(), name="swap_words", compare=_compare_text)


def _logit_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (b, p, v) in {"batch 1": (1, 5, 11), "right-padded batch": (4, 9, 13), "wide vocab": (3, 6, 50)}.items():
        logits = torch.randn(b, p, v, generator=g)
        pos = torch.randint(1, p - 1, (b,), generator=g)  # never the last position: padding follows
        correct = torch.randint(0, v, (b,), generator=g)
        incorrect = (correct + torch.randint(1, v, (b,), generator=g)) % v
        cases.append(Case(name, (logits, pos, correct, incorrect)))
    return cases


def _reference_decision(logits, pos, correct, incorrect):
    return decision_logit_diff(logits, pos, correct, incorrect)


def check_decision_logit_diff(fn: Callable) -> None:
    """``fn(logits, pos, correct, incorrect) -> [batch]`` against :func:`mechlab.cot.pairs.decision_logit_diff`."""
    run_cases(fn, _reference_decision, _logit_cases(), name="decision_logit_diff",
              compare=lambda got, want: compare_tensors(got, want, what="logit difference per row"))


def _map_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    lengths = {"equal lengths": [6, 6, 6], "different lengths": [4, 9, 6, 12], "one problem": [7]}
    cases = [Case(name, ([torch.randn(5, n, generator=g) for n in ns],)) for name, ns in lengths.items()]
    # noising AtP: zeros before the first edit, important effects negative; a max would read 0 everywhere
    cases.append(Case("noising-like: zeros then negatives, different lengths",
                      ([torch.cat([torch.zeros(3, n), -torch.rand(3, 4, generator=g) - 0.1], 1) for n in (2, 7)],)))
    return cases


def _reference_aggregate(maps):
    return aggregate_positions(maps, "sum")


# what a wrong answer most likely did, tried in this order on the failing case
_MISTAKES = {
    "took the max over positions (the seed's aggregate, which hides negative noising effects)":
        lambda maps: torch.stack([m.max(-1).values for m in maps]).mean(0),
    "took the min over positions instead of the sum":
        lambda maps: torch.stack([m.min(-1).values for m in maps]).mean(0),
    "averaged over positions instead of summing (a long problem then counts less)":
        lambda maps: torch.stack([m.mean(-1) for m in maps]).mean(0),
    "summed |x| and lost the sign (in noising, important effects are negative)":
        lambda maps: torch.stack([m.abs().sum(-1) for m in maps]).mean(0),
    "summed over problems instead of averaging":
        lambda maps: torch.stack([m.sum(-1) for m in maps]).sum(0),
}


def _diagnose(got, maps) -> str:
    if not isinstance(got, torch.Tensor):
        return ""
    for why, wrong in _MISTAKES.items():
        w = wrong(maps)
        if got.shape == w.shape and torch.allclose(got.float(), w, atol=1e-5, rtol=1e-4):
            return f"; it looks like you {why}"
    return ""


def check_aggregate_positions(fn: Callable) -> None:
    """``fn(maps) -> [component]`` against :func:`mechlab.cot.analysis.aggregate_positions` (reduce="sum"); a failure
    names the likely mistake."""
    cases = _map_cases()
    for case in cases:
        maps = case.args[0]
        run_cases(fn, _reference_aggregate, [case], name="aggregate_positions", verbose=False,
                  compare=lambda got, want, maps=maps: (lambda msg: msg and msg + _diagnose(got, maps))(
                      compare_tensors(got, want, what="aggregate per component")))
    print(f"aggregate_positions: passed {len(cases)} cases.")


__all__ = ["check_aggregate_positions", "check_decision_logit_diff", "check_swap_words"]
