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


def copying_argmax_dim0_batched(W_E, W_V, W_O, W_U, batch_size):
    hits = 0
    for start in range(0, W_E.shape[0], batch_size):
        rows = W_E[start:start + batch_size] @ W_V @ W_O @ W_U
        hits += int((rows.argmax(0) == torch.arange(start, start + rows.shape[0])).sum())
    return hits / W_E.shape[0]


def copying_no_offset(W_E, W_V, W_O, W_U, batch_size):
    hits = 0
    for start in range(0, W_E.shape[0], batch_size):
        rows = W_E[start:start + batch_size] @ W_V @ W_O @ W_U
        hits += int((rows.argmax(-1) == torch.arange(rows.shape[0])).sum())
    return hits / W_E.shape[0]


def qkv_loop(S, Q, V):
    return [float(unit03b.composition_score(S, M)) for M in (Q, Q.T, V)]


CASES = {
    "check_fold_norm": (fold_loop, {
        "norm weight not folded": lambda W, w, c: W - W.mean(0, keepdim=True) if c else W,
        "no centring": lambda W, w, c: w[:, None] * W,
        "centred before folding": lambda W, w, c: w[:, None] * (W - W.mean(0, keepdim=True)) if c else w[:, None] * W,
        "weight applied on the wrong axis": lambda W, w, c: (W * w) - (W * w).mean(0) if c else W * w,
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
        "offset of the batch forgotten": copying_no_offset,
    }),
    "check_composition_score": (lambda A, B: float(torch.linalg.matrix_norm(A @ B) / torch.linalg.matrix_norm(A)
                                                   / torch.linalg.matrix_norm(B)), {
        "not normalised": lambda A, B: (A @ B).norm(),
        "wrong order": lambda A, B: (B @ A).norm() / (A.norm() * B.norm()),
        "left matrix transposed": lambda A, B: (A.T @ B).norm() / (A.norm() * B.norm()),
    }),
    "check_qkv_composition": (qkv_loop, {
        "Q and K composition swapped": lambda S, Q, V: qkv_loop(S, Q.T, V),
        "QK not transposed for K-composition": lambda S, Q, V: qkv_loop(S, Q, V)[:1] * 2 + qkv_loop(S, Q, V)[2:],
        "receiver's matrix first": lambda S, Q, V: [float(unit03b.composition_score(M, S)) for M in (Q, Q.T, V)],
    }),
    "check_excess_over_baseline": (lambda s, b: (s - b.mean()) / b.std(unbiased=False), {  # the population sd
        "baseline not subtracted": lambda s, b: s / b.std(),
        "divided by the variance": lambda s, b: (s - b.mean()) / b.var(),
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


def test_copying_argmax_over_the_wrong_dim_fails_every_case():
    """Batched, the wrong dim cannot even be compared with the batch's ids; whole, it gives another accuracy."""
    with pytest.raises(CheckFailed, match="3 of 3 cases failed") as err:
        unit03b.check_copying_accuracy(copying_argmax_dim0_batched)
    assert "argmax over source tokens (dim 0)" in str(err.value)
    with pytest.raises(CheckFailed, match="3 of 3 cases failed"):
        unit03b.check_copying_accuracy(CASES["check_copying_accuracy"][1]["argmax over source tokens"])


def test_excess_over_baseline_accepts_the_sample_sd_and_names_neither_when_wrong():
    unit03b.check_excess_over_baseline(lambda s, b: (s - b.mean()) / b.std())
    with pytest.raises(CheckFailed, match="population sd is accepted too"):
        unit03b.check_excess_over_baseline(lambda s, b: (s - b.mean()) / (1.5 * b.std()))
