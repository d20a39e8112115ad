"""Checkers for unit 03b (reading the weights): folding, OV and QK, copying, composition, the random baseline.

Each runs the learner's function and a reference on small random cases and, when they disagree, also runs the
likely mistakes: if the learner's output equals one of them the message names it (e.g. "the transposed QK")::

    from mechlab.checks import unit03b
    unit03b.check_fold_norm(fn)            # fn(W, ln_weight, centre) -> W folded (and centred)
    unit03b.check_ov_matrix(fn)            # fn(W_V, W_O) -> [head, d_model, d_model]
    unit03b.check_qk_matrix(fn)            # fn(W_Q, W_K) -> [head, d_model, d_model]
    unit03b.check_copying_accuracy(fn)     # fn(W_E, W_V, W_O, W_U, batch_size) -> float in [0, 1]
    unit03b.check_composition_score(fn)    # fn(W_left, W_right) -> float
    unit03b.check_excess_over_baseline(fn) # fn(scores, baseline) -> scores in baseline standard deviations
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.checks.core import Case, compare_tensors, run_cases


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_naming_mistakes(fn: Callable, reference: Callable, cases: list[Case], *, name: str,
                          mistakes: dict[str, Callable]) -> None:
    """:func:`mechlab.checks.core.run_cases`, case by case, with a message naming the mistake the learner's output
    matches (``mistakes`` maps a description such as "the norm weight not folded" to a wrong version)."""
    for case in cases:
        wrong = {what: f(*case.args, **case.kwargs) for what, f in mistakes.items()}

        def compare(got, want, wrong=wrong) -> str:
            problem = compare_tensors(torch.as_tensor(got) if isinstance(got, float) else got, want)
            if not problem:
                return ""
            for what, w in wrong.items():
                g = torch.as_tensor(got) if isinstance(got, float) else got
                if isinstance(g, Tensor) and g.shape == w.shape and torch.allclose(g.float(), w.float(), atol=1e-5,
                                                                                    rtol=1e-4):
                    return f"{problem}. Your output is exactly what {what} gives"
            return problem

        run_cases(fn, reference, [case], name=name, compare=compare, verbose=False)
    print(f"{name}: passed {len(cases)} cases.")


# ---------------------------------------------------------------------------------------------------------
# 1. fold the norm's weight into a reading matrix


def fold_norm(W: Float[Tensor, "d_model d_out"], ln_weight: Float[Tensor, " d_model"], centre: bool
              ) -> Float[Tensor, "d_model d_out"]:
    """Reference: ``diag(ln_weight) @ W``, then (LayerNorm) the mean over ``d_model`` removed from every column."""
    folded = ln_weight[:, None] * W
    return folded - folded.mean(0, keepdim=True) if centre else folded


def check_fold_norm(fn: Callable) -> None:
    """``fn(W, ln_weight, centre)``: fold a norm's weight into the matrix ``W`` [d_model, d_out] that reads it;
    with ``centre`` (LayerNorm) also centre it along ``d_model``."""
    cases = [Case("LayerNorm, d_model 8 -> 4", (_randn(8, 4, seed=1), 1 + 0.5 * _randn(8, seed=2), True)),
             Case("RMSNorm (no centring)", (_randn(6, 3, seed=3), 1 + 0.5 * _randn(6, seed=4), False)),
             Case("a matrix with a large mean", (_randn(5, 5, seed=5) + 3, 2 + _randn(5, seed=6), True))]
    check_naming_mistakes(fn, fold_norm, cases, name="check_fold_norm", mistakes={
        "the norm weight not folded (only centred)": lambda W, w, c: W - W.mean(0, keepdim=True) if c else W,
        "no centring (LayerNorm removes the mean, so the folded matrix should too)": lambda W, w, c: w[:, None] * W,
        "centring along the output axis instead of d_model": lambda W, w, c: (w[:, None] * W) - (
            w[:, None] * W).mean(1, keepdim=True) if c else w[:, None] * W,
    })


# ---------------------------------------------------------------------------------------------------------
# 2-3. OV and QK


def ov_matrix(W_V: Float[Tensor, "head d_model d_head"], W_O: Float[Tensor, "head d_head d_model"]
              ) -> Float[Tensor, "head d_model d_model"]:
    """Reference: ``W_V[h] @ W_O[h]`` per head (row vectors: read with W_V, then write with W_O)."""
    return W_V @ W_O


def check_ov_matrix(fn: Callable) -> None:
    """``fn(W_V, W_O)`` -> each head's OV circuit ``[head, d_model, d_model]``."""
    cases = [Case("2 heads, d_model 8, d_head 3", (_randn(2, 8, 3, seed=1), _randn(2, 3, 8, seed=2))),
             Case("1 head, d_model 5, d_head 2", (_randn(1, 5, 2, seed=3), _randn(1, 2, 5, seed=4)))]
    check_naming_mistakes(fn, ov_matrix, cases, name="check_ov_matrix", mistakes={
        "OV in the wrong order (W_O @ W_V: a d_head x d_head matrix)": lambda V, O: O @ V,
        "OV transposed (W_O.T @ W_V.T)": lambda V, O: (V @ O).transpose(-1, -2),
    })


def qk_matrix(W_Q: Float[Tensor, "head d_model d_head"], W_K: Float[Tensor, "head d_model d_head"]
              ) -> Float[Tensor, "head d_model d_model"]:
    """Reference: ``W_Q[h] @ W_K[h].T``: rows index the query's residual direction, columns the key's."""
    return W_Q @ W_K.transpose(-1, -2)


def check_qk_matrix(fn: Callable) -> None:
    """``fn(W_Q, W_K)`` -> each head's QK circuit ``[head, d_model(query), d_model(key)]``."""
    cases = [Case("2 heads, d_model 6, d_head 3", (_randn(2, 6, 3, seed=1), _randn(2, 6, 3, seed=2))),
             Case("3 heads, d_model 4, d_head 2", (_randn(3, 4, 2, seed=3), _randn(3, 4, 2, seed=4)))]
    check_naming_mistakes(fn, qk_matrix, cases, name="check_qk_matrix", mistakes={
        "the transposed QK (W_K @ W_Q.T: rows would be keys, columns queries)": lambda Q, K: K @ Q.transpose(-1, -2),
        "W_Q.T @ W_K (a d_head x d_head matrix)": lambda Q, K: Q.transpose(-1, -2) @ K,
    })


# ---------------------------------------------------------------------------------------------------------
# 4. top-1 copying accuracy of the full OV circuit, in batches


def copying_accuracy(W_E: Float[Tensor, "d_vocab d_model"], W_V: Float[Tensor, "d_model d_head"],
                     W_O: Float[Tensor, "d_head d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                     batch_size: int) -> Tensor:
    """Reference: fraction of tokens t with argmax_j (W_E[t] @ W_V @ W_O @ W_U)[j] == t, rows in batches."""
    hits = 0
    for start in range(0, W_E.shape[0], batch_size):
        rows = W_E[start:start + batch_size] @ W_V @ W_O @ W_U
        hits += int((rows.argmax(-1) == torch.arange(start, start + rows.shape[0])).sum())
    return torch.tensor(hits / W_E.shape[0])


def _copying_cases() -> list[Case]:
    cases = []
    for name, (vocab, dm, dh, seed, bs) in {"vocab 30, batch 7 (last batch shorter)": (30, 8, 4, 1, 7),
                                            "vocab 12, batch 12": (12, 6, 3, 2, 12)}.items():
        w_e = _randn(vocab, dm, seed=seed)
        basis = torch.linalg.qr(_randn(dm, dh, seed=seed + 1))[0]
        noise = 0.3 * _randn(dh, dm, seed=seed + 2)
        cases.append(Case(name, (w_e, basis, basis.T + noise, w_e.T.clone(), bs)))  # a noisy copying head
    return cases


def check_copying_accuracy(fn: Callable) -> None:
    """``fn(W_E, W_V, W_O, W_U, batch_size)`` -> the head's top-1 copying accuracy (a 0-d tensor or float), never
    forming the d_vocab x d_vocab matrix at once."""
    run = lambda f: lambda *a: torch.as_tensor(float(f(*a)))  # noqa: E731  (floats and tensors alike)
    check_naming_mistakes(run(fn), copying_accuracy, _copying_cases(), name="check_copying_accuracy", mistakes={
        "the argmax over source tokens (dim 0) instead of over output tokens": lambda E, V, O, U, b: torch.tensor(
            float(((E @ V @ O @ U).argmax(0) == torch.arange(E.shape[0])).float().mean())),
        "the number of hits, not the fraction": lambda E, V, O, U, b: copying_accuracy(E, V, O, U, b) * E.shape[0],
        "each batch compared with tokens 0..batch-1 (the offset of the batch forgotten)":
            lambda E, V, O, U, b: torch.tensor(sum(int(((E[s:s + b] @ V @ O @ U).argmax(-1) == torch.arange(
                min(b, E.shape[0] - s))).sum()) for s in range(0, E.shape[0], b)) / E.shape[0]),
    })


# ---------------------------------------------------------------------------------------------------------
# 5-6. composition score and the baseline


def composition_score(W_left: Float[Tensor, "d_model d_model"], W_right: Float[Tensor, "d_model d_model"]) -> Tensor:
    """Reference: ``||W_left @ W_right||_F / (||W_left||_F ||W_right||_F)``."""
    return (W_left @ W_right).norm() / (W_left.norm() * W_right.norm())


def check_composition_score(fn: Callable) -> None:
    """``fn(W_left, W_right)`` -> the composition score of two [d_model, d_model] matrices (a number)."""
    cases = [Case("random 6 x 6 (rank 2 each)", (_randn(6, 2, seed=1) @ _randn(2, 6, seed=2),
                                                  _randn(6, 2, seed=3) @ _randn(2, 6, seed=4))),
             Case("large entries (normalisation matters)", (10 * _randn(5, 5, seed=5), 3 * _randn(5, 5, seed=6))),
             Case("one writes where the other reads", (torch.eye(4)[:, :2] @ torch.eye(4)[:2], torch.eye(4)))]
    run = lambda f: lambda *a: torch.as_tensor(float(f(*a)))  # noqa: E731
    check_naming_mistakes(run(fn), composition_score, cases, name="check_composition_score", mistakes={
        "the composition score not normalised (||AB|| without dividing by ||A|| ||B||)":
            lambda A, B: (A @ B).norm(),
        "the product in the wrong order (B @ A)": lambda A, B: (B @ A).norm() / (A.norm() * B.norm()),
        "divided by the norm of the product's factors summed": lambda A, B: (A @ B).norm() / (A.norm() + B.norm()),
    })


def excess_over_baseline(scores: Float[Tensor, "..."], baseline: Float[Tensor, " n"]) -> Float[Tensor, "..."]:
    """Reference: ``(scores - baseline.mean()) / baseline.std()``: how many baseline sds above chance."""
    return (scores - baseline.mean()) / baseline.std()


def check_excess_over_baseline(fn: Callable) -> None:
    """``fn(scores, baseline)``: the scores in units of the baseline's standard deviation above its mean."""
    cases = [Case("4 x 4 scores, 50 baseline samples", (0.1 + 0.05 * _randn(4, 4, seed=1).abs(),
                                                          0.09 + 0.003 * _randn(50, seed=2))),
             Case("one score", (torch.tensor([0.3]), 0.2 + 0.01 * _randn(20, seed=3)))]
    check_naming_mistakes(fn, excess_over_baseline, cases, name="check_excess_over_baseline", mistakes={
        "the baseline not subtracted (scores / sd)": lambda s, b: s / b.std(),
        "divided by the mean instead of the sd": lambda s, b: (s - b.mean()) / b.mean(),
        "not divided by the sd (scores - mean)": lambda s, b: s - b.mean(),
    })


__all__ = ["check_composition_score", "check_copying_accuracy", "check_excess_over_baseline", "check_fold_norm",
           "check_naming_mistakes", "check_ov_matrix", "check_qk_matrix", "composition_score", "copying_accuracy",
           "excess_over_baseline", "fold_norm", "ov_matrix", "qk_matrix"]
