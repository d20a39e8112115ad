"""Checkers for unit 03b (reading the weights): folding, OV and QK, copying, composition, the random baseline.

Each runs the learner's function and a reference on small random cases and, when they disagree, also runs the
likely mistakes: if the learner's output equals one of them the message names it (e.g. "the transposed QK")::

    from mechlab.checks import unit03b
    unit03b.check_fold_norm(fn)            # fn(W, ln_weight, centre) -> W folded (and centred)
    unit03b.check_ov_matrix(fn)            # fn(W_V, W_O) -> [head, d_model, d_model]
    unit03b.check_qk_matrix(fn)            # fn(W_Q, W_K) -> [head, d_model, d_model]
    unit03b.check_copying_accuracy(fn)     # fn(W_E, W_V, W_O, W_U, batch_size) -> float in [0, 1]
    unit03b.check_composition_score(fn)    # fn(W_left, W_right) -> float
    unit03b.check_qkv_composition(fn)      # fn(OV_sender, QK_receiver, OV_receiver) -> [Q, K, V] scores
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


def _as_tensor(fn: Callable) -> Callable:
    """``fn`` with a float result turned into a 0-d tensor (the checkers accept a float or a tensor)."""
    def wrapped(*args):
        out = fn(*args)
        return torch.as_tensor(float(out)) if isinstance(out, (float, int)) or (
            isinstance(out, Tensor) and out.numel() == 1) else out
    return wrapped


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
             Case("a square matrix with a large mean (the axis of the weight and the order matter)",
                  (_randn(5, 5, seed=5) + 3, 2 + _randn(5, seed=6), True),
                  hint="ln_weight multiplies the rows of W (its d_model axis), and the centring comes after.")]
    run_cases(fn, fold_norm, cases, name="check_fold_norm", mistakes={
        "the norm weight not folded (only centred)": lambda W, w, c: W - W.mean(0, keepdim=True) if c else W,
        "no centring (LayerNorm removes the mean, so the folded matrix should too)":
            lambda W, w, c: w[:, None] * W,
        "centred before folding (centre after multiplying by the weight: w * centred W has a mean again)":
            lambda W, w, c: w[:, None] * (W - W.mean(0, keepdim=True)) if c else w[:, None] * W,
        "the weight applied on the wrong axis (it scales W's rows, the d_model axis, not its columns)":
            lambda W, w, c: fold_norm(W * w[None, :] / w[:, None], w, c),
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
    run_cases(fn, ov_matrix, cases, name="check_ov_matrix", mistakes={
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
    run_cases(fn, qk_matrix, cases, name="check_qk_matrix", mistakes={
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
    """Noisy copying heads whose source rows have very different norms: scaling a row of ``W_E`` does not change
    which output token it prefers (argmax over dim -1), but it does change which source token wins a column
    (argmax over dim 0), so the wrong dim gives a different accuracy in every case."""
    cases = []
    for name, (vocab, dm, dh, seed, bs) in {"vocab 30, batch 7 (7 does not divide 30)": (30, 8, 4, 1, 7),
                                            "vocab 25, batch 4 (the last batch has one row)": (25, 6, 4, 2, 4),
                                            "vocab 12, batch 12 (one batch)": (12, 6, 3, 3, 12)}.items():
        w_e = _randn(vocab, dm, seed=seed)
        basis = torch.linalg.qr(_randn(dm, dh, seed=seed + 1))[0]
        noise = 0.3 * _randn(dh, dm, seed=seed + 2)
        row_norms = torch.logspace(-1, 1, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(
            seed + 3))]
        cases.append(Case(name, (w_e * row_norms[:, None], basis, basis.T + noise, w_e.T.clone(), bs),
                          hint="the argmax is over the output tokens (the last dim), and each batch's tokens start "
                               "at that batch's offset"))
    return cases


def _argmax_dim0(E, V, O, U, b) -> Tensor:
    return torch.tensor(float(((E @ V @ O @ U).argmax(0) == torch.arange(E.shape[0])).float().mean()))


def _offset_forgotten(E, V, O, U, b) -> Tensor:
    hits = sum(int(((E[s:s + b] @ V @ O @ U).argmax(-1) == torch.arange(min(b, E.shape[0] - s))).sum())
               for s in range(0, E.shape[0], b))
    return torch.tensor(hits / E.shape[0])


def check_copying_accuracy(fn: Callable) -> None:
    """``fn(W_E, W_V, W_O, W_U, batch_size)`` -> the head's top-1 copying accuracy (a 0-d tensor or float), never
    forming the d_vocab x d_vocab matrix at once."""
    run_cases(_as_tensor(fn), copying_accuracy, _copying_cases(), name="check_copying_accuracy", mistakes={
        "the argmax over source tokens (dim 0) instead of over output tokens (dim -1)": _argmax_dim0,
        "the number of hits, not the fraction": lambda E, V, O, U, b: copying_accuracy(E, V, O, U, b) * E.shape[0],
        "each batch compared with tokens 0..batch-1 (the offset of the batch forgotten)": _offset_forgotten,
    })


# ---------------------------------------------------------------------------------------------------------
# 5-6. composition score and the baseline


def composition_score(W_left: Float[Tensor, "d_model d_model"], W_right: Float[Tensor, "d_model d_model"]) -> Tensor:
    """Reference: ``||W_left @ W_right||_F / (||W_left||_F ||W_right||_F)``."""
    return (W_left @ W_right).norm() / (W_left.norm() * W_right.norm())


def _pair(read: int, write: int, n: int) -> Tensor:
    """A [n, n] matrix that reads residual direction ``read`` and writes direction ``write`` (row vectors)."""
    return torch.outer(torch.eye(n)[read], torch.eye(n)[write])


def check_composition_score(fn: Callable) -> None:
    """``fn(W_left, W_right)`` -> the composition score of two [d_model, d_model] matrices (a number)."""
    cases = [Case("random 6 x 6 (rank 2 each)", (_randn(6, 2, seed=1) @ _randn(2, 6, seed=2),
                                                  _randn(6, 2, seed=3) @ _randn(2, 6, seed=4))),
             Case("large entries (normalisation matters)", (10 * _randn(5, 5, seed=5), 3 * _randn(5, 5, seed=6))),
             Case("left reads e0 and writes e1, right reads e1 and writes e2 (order and alignment matter)",
                  (_pair(0, 1, 5) + 0.1 * _randn(5, 5, seed=7), _pair(1, 2, 5) + 0.1 * _randn(5, 5, seed=8)),
                  hint="what the left matrix writes (its columns) must meet what the right one reads (its rows): "
                       "W_left @ W_right, neither transposed."),
             Case("one writes where the other reads", (torch.eye(4)[:, :2] @ torch.eye(4)[:2], torch.eye(4)))]
    run_cases(_as_tensor(fn), composition_score, cases, name="check_composition_score", mistakes={
        "the composition score not normalised (||AB|| without dividing by ||A|| ||B||)":
            lambda A, B: (A @ B).norm(),
        "the product in the wrong order (B @ A)": lambda A, B: (B @ A).norm() / (A.norm() * B.norm()),
        "the left matrix transposed (A.T @ B: its inputs, not its outputs, meet B)":
            lambda A, B: (A.T @ B).norm() / (A.norm() * B.norm()),
        "divided by the norm of the product's factors summed": lambda A, B: (A @ B).norm() / (A.norm() + B.norm()),
    })


def qkv_composition(OV_sender: Float[Tensor, "d_model d_model"], QK_receiver: Float[Tensor, "d_model d_model"],
                    OV_receiver: Float[Tensor, "d_model d_model"]) -> Float[Tensor, " 3"]:
    """Reference: the Q-, K- and V-composition scores ``[Q, K, V]`` of a sender head's OV circuit with a later
    head: its queries read ``x @ OV_s`` (``OV_s @ QK_r``), its keys do (the score is ``q @ QK_r @ (y @ OV_s).T``,
    so ``OV_s @ QK_r.T``), and its values do (``OV_s @ OV_r``)."""
    return torch.stack([composition_score(OV_sender, QK_receiver), composition_score(OV_sender, QK_receiver.T),
                        composition_score(OV_sender, OV_receiver)])


def check_qkv_composition(fn: Callable) -> None:
    """``fn(OV_sender, QK_receiver, OV_receiver)`` -> tensor ``[Q, K, V]`` of composition scores."""
    cases = []
    for name, (n, rank, seed) in {"d_model 6, rank 2": (6, 2, 1), "d_model 8, rank 3": (8, 3, 5)}.items():
        ov_s = _randn(n, rank, seed=seed) @ _randn(rank, n, seed=seed + 1)
        qk_r = _randn(n, rank, seed=seed + 2) @ _randn(rank, n, seed=seed + 3)  # not symmetric: Q and K differ
        ov_r = _randn(n, rank, seed=seed + 4) @ _randn(rank, n, seed=seed + 5)
        cases.append(Case(name, (ov_s, qk_r, ov_r)))
    score = composition_score

    def swapped(S, Q, V):
        return torch.stack([score(S, Q.T), score(S, Q), score(S, V)])

    def k_not_transposed(S, Q, V):
        return torch.stack([score(S, Q), score(S, Q), score(S, V)])

    def receiver_first(S, Q, V):
        return torch.stack([score(Q, S), score(Q.T, S), score(V, S)])

    def as_scores(*args):  # a list or tuple of three numbers is fine too
        out = fn(*args)
        return torch.stack([torch.as_tensor(v).float() for v in out]) if isinstance(out, (list, tuple)) else out

    run_cases(as_scores, qkv_composition, cases, name="check_qkv_composition", mistakes={
        "Q and K composition swapped (the QK transpose belongs to K-composition, the key side)": swapped,
        "QK not transposed for K-composition (Q and K come out equal)": k_not_transposed,
        "the receiver's matrix first (the sender writes first, so OV_sender is on the left)": receiver_first,
    })


def excess_over_baseline(scores: Float[Tensor, "..."], baseline: Float[Tensor, " n"]) -> Float[Tensor, "..."]:
    """Reference: ``(scores - baseline.mean()) / baseline.std()``: how many baseline sds above chance."""
    return (scores - baseline.mean()) / baseline.std()


def _both_sds(scores: Tensor, baseline: Tensor) -> tuple[Tensor, Tensor]:
    return excess_over_baseline(scores, baseline), (scores - baseline.mean()) / baseline.std(unbiased=False)


def _either_sd(got, want) -> str:
    """Accept the sample sd (``torch.std``'s default) or the population sd (``unbiased=False``, numpy's default)."""
    if isinstance(want, tuple):
        sample, population = want
        if not compare_tensors(got, population):
            return ""
        problem = compare_tensors(got, sample)
        return f"{problem} (the population sd is accepted too)" if problem else ""
    return compare_tensors(got, want)


def check_excess_over_baseline(fn: Callable) -> None:
    """``fn(scores, baseline)``: the scores in units of the baseline's standard deviation above its mean; the
    sample sd (``baseline.std()``) and the population sd (``baseline.std(unbiased=False)``) are both accepted."""
    cases = [Case("4 x 4 scores, 50 baseline samples", (0.1 + 0.05 * _randn(4, 4, seed=1).abs(),
                                                          0.09 + 0.003 * _randn(50, seed=2))),
             Case("one score, 5 baseline samples (sample and population sd differ by 12%)",
                  (torch.tensor([0.3]), 0.2 + 0.01 * _randn(5, seed=3)))]
    run_cases(fn, _both_sds, cases, name="check_excess_over_baseline", compare=_either_sd, mistakes={
        "the baseline not subtracted (scores / sd)": lambda s, b: s / b.std(),
        "divided by the mean instead of the sd": lambda s, b: (s - b.mean()) / b.mean(),
        "divided by the variance, not the sd": lambda s, b: (s - b.mean()) / b.var(),
        "not divided by the sd (scores - mean)": lambda s, b: s - b.mean(),
    })


__all__ = ["check_composition_score", "check_copying_accuracy", "check_excess_over_baseline", "check_fold_norm",
           "check_ov_matrix", "check_qk_matrix", "check_qkv_composition", "composition_score", "copying_accuracy",
           "excess_over_baseline", "fold_norm", "ov_matrix", "qk_matrix", "qkv_composition"]
