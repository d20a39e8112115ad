"""Unit 03b checkers: the reference passes, a correct solution written differently passes, the stub fails, and each
named wrong version fails with a message naming its mistake."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit03b
from mechlab.checks.core import CheckFailed


def stub(*args):
    raise NotImplementedError("write this function")


def fold_loop(W, ln_weight, centre):
    out = torch.stack([W[i] * ln_weight[i] for i in range(W.shape[0])])
    return out - out.mean(0) if centre else out


def copying_loop(W_E, W_V, W_O, W_U, batch_size):
    ov_u = W_V @ (W_O @ W_U)
    return sum(int((W_E[t] @ ov_u).argmax() == t) for t in range(W_E.shape[0])) / W_E.shape[0]


CASES = {
    "check_fold_norm": (fold_loop, {
        "norm weight not folded": lambda W, w, c: W - W.mean(0, keepdim=True) if c else W,
        "no centring": lambda W, w, c: w[:, None] * W,
    }),
    "check_ov_matrix": (lambda V, O: torch.einsum("hmd,hdn->hmn", V, O), {
        "wrong order": lambda V, O: O @ V,
        "OV transposed": lambda V, O: (V @ O).transpose(-1, -2),
    }),
    "check_qk_matrix": (lambda Q, K: torch.einsum("hmd,hnd->hmn", Q, K), {
        "transposed QK": lambda Q, K: K @ Q.transpose(-1, -2),
    }),
    "check_copying_accuracy": (copying_loop, {
        "argmax over source tokens": lambda E, V, O, U, b: float(((E @ V @ O @ U).argmax(0) == torch.arange(
            E.shape[0])).float().mean()),
        "number of hits": lambda E, V, O, U, b: float(((E @ V @ O @ U).argmax(-1) == torch.arange(E.shape[0])).sum()),
    }),
    "check_composition_score": (lambda A, B: float(torch.linalg.matrix_norm(A @ B) / torch.linalg.matrix_norm(A)
                                                   / torch.linalg.matrix_norm(B)), {
        "not normalised": lambda A, B: (A @ B).norm(),
        "wrong order": lambda A, B: (B @ A).norm() / (A.norm() * B.norm()),
    }),
    "check_excess_over_baseline": (lambda s, b: (s - b.mean()) / b.std(), {
        "baseline not subtracted": lambda s, b: s / b.std(),
        "not divided by the sd": lambda s, b: s - b.mean(),
    }),
}


@pytest.mark.parametrize("checker", sorted(CASES))
def test_reference_and_a_rewritten_solution_pass(checker, capsys):
    reference = getattr(unit03b, checker.removeprefix("check_"))
    getattr(unit03b, checker)(reference)
    getattr(unit03b, checker)(CASES[checker][0])
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("checker", sorted(CASES))
def test_the_stub_fails(checker):
    with pytest.raises(CheckFailed, match="not implemented"):
        getattr(unit03b, checker)(stub)


@pytest.mark.parametrize("checker,mistake", [(c, m) for c in sorted(CASES) for m in CASES[c][1]])
def test_each_named_mistake_fails_with_its_name(checker, mistake):
    with pytest.raises(CheckFailed, match=mistake):
        getattr(unit03b, checker)(CASES[checker][1][mistake])
