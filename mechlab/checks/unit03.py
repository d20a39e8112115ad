"""Checkers for unit 03 (the toy attention model): causal attention, one training step, one head's logits.

Each runs the learner's function and a reference on small random cases and raises
:class:`mechlab.checks.core.CheckFailed` naming every failing case and the mistake it recognises::

    from mechlab.checks import unit03
    unit03.check_attention_pattern(my_attention_pattern)   # fn(q, k) -> [batch, head, query_pos, key_pos]
    unit03.check_train_step(my_train_step)                 # fn(model, optimizer, tokens, labels) -> float
    unit03.check_head_to_logits(my_head_to_logits)         # fn(z, W_O, W_U, head) -> [batch, pos, d_vocab]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.checks.core import Case, run_cases
from mechlab.data.skip_trigram import make_skip_trigram
from mechlab.models.toy import AttnOnlyTransformer, ToyConfig, attention_pattern, train_step


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# 1. causal-masked attention


def _pattern_cases() -> list[Case]:
    # keys that are exactly zero give scores of exactly zero: a mask built from the *values* of the scores
    # (``scores.triu(1).bool()``) leaves those future positions visible, a mask built from positions does not
    q, k = _randn(2, 5, 3, 4, seed=11), _randn(2, 5, 3, 4, seed=12)
    k[:, 3:] = 0.0
    return [
        Case("batch 2, 6 positions, 3 heads, d_head 4", (_randn(2, 6, 3, 4, seed=1), _randn(2, 6, 3, 4, seed=2))),
        Case("large scores, d_head 16", (3 * _randn(1, 4, 2, 16, seed=3), 3 * _randn(1, 4, 2, 16, seed=4)),
             hint="is the 1/sqrt(d_head) scale there?"),
        Case("one position", (_randn(3, 1, 2, 4, seed=5), _randn(3, 1, 2, 4, seed=6))),
        Case("future keys are zero vectors (scores exactly 0)", (q, k),
             hint="a mask built from the scores' values (`scores.triu(1).bool()`) leaves exact zeros visible; build "
                  "it from positions"),
    ]


def check_attention_pattern(fn: Callable) -> None:
    """``fn(q, k)`` with q, k ``[batch, pos, head, d_head]`` must return the causal attention pattern
    ``[batch, head, query_pos, key_pos]``: scores scaled by ``1/sqrt(d_head)``, positions after the query
    masked out, softmax over keys."""
    def scores(q, k):
        return torch.einsum("bqhd,bkhd->bhqk", q, k)

    def future(q, diagonal):
        return torch.ones(q.shape[1], q.shape[1], dtype=torch.bool, device=q.device).triu(diagonal)

    mistakes = {
        "the 1/sqrt(d_head) scale is missing": lambda q, k: scores(q, k).masked_fill(future(q, 1), -torch.inf)
        .softmax(-1),
        "the diagonal is masked too: a query may attend to itself": lambda q, k: (scores(q, k) / q.shape[-1] ** 0.5)
        .masked_fill(future(q, 0), -1e9).softmax(-1),
        "softmax over the query axis instead of the keys": lambda q, k: (scores(q, k) / q.shape[-1] ** 0.5)
        .masked_fill(future(q, 1), -torch.inf).softmax(-2),
    }
    run_cases(fn, attention_pattern, _pattern_cases(), name="check_attention_pattern", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# 2. one training step


def _two_steps(step_fn: Callable, seed: int, batch_size: int) -> Float[Tensor, " n"]:
    """Run ``step_fn`` on two consecutive batches of a fresh model; return both losses and every parameter
    after the second step, flattened (two steps catch a missing ``zero_grad``)."""
    model = AttnOnlyTransformer(ToyConfig(seed=seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = make_skip_trigram(2 * batch_size, seed=seed)
    losses = []
    for batch in (data[:batch_size], data[batch_size:]):
        loss = step_fn(model, optimizer, batch.tokens, batch.labels)
        if loss is None:
            raise ValueError("the function returned None; return the batch's loss as a float (loss.item()).")
        losses.append(float(loss))
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.cat([torch.tensor(losses), params])


def check_train_step(fn: Callable) -> None:
    """``fn(model, optimizer, tokens, labels)`` must take one optimiser step on the cross-entropy of the
    *last position's* logits and return that loss (computed before the step) as a float."""
    cases = [Case("seed 0, batch 64", (0, 64)), Case("seed 1, batch 5", (1, 5))]
    run_cases(lambda seed, bs: _two_steps(fn, seed, bs), lambda seed, bs: _two_steps(train_step, seed, bs),
              cases, name="check_train_step")


# ---------------------------------------------------------------------------------------------------------
# 3. one head's direct contribution to the logits


def _head_to_logits_reference(
    z: Float[Tensor, "batch pos head d_head"], W_O: Float[Tensor, "head d_head d_model"],
    W_U: Float[Tensor, "d_model d_vocab"], head: int,
) -> Float[Tensor, "batch pos d_vocab"]:
    return torch.einsum("bpd,dm,mv->bpv", z[:, :, head], W_O[head], W_U)


def check_head_to_logits(fn: Callable) -> None:
    """``fn(z, W_O, W_U, head)`` must return what head ``head`` alone adds to the logits at every position:
    ``z[:, :, head] @ W_O[head] @ W_U`` (no ``b_O``: it belongs to no head)."""
    cases = []
    for i, (batch, pos, heads, d_head, d_model, d_vocab, head) in enumerate(
            [(2, 4, 3, 1, 11, 11, 1), (3, 5, 4, 2, 6, 7, 3), (1, 3, 2, 3, 5, 9, 0)]):
        z = _randn(batch, pos, heads, d_head, seed=20 + i)
        W_O, W_U = _randn(heads, d_head, d_model, seed=30 + i), _randn(d_model, d_vocab, seed=40 + i)
        cases.append(Case(f"{heads} heads, head {head}, d_model {d_model}, d_vocab {d_vocab}", (z, W_O, W_U, head)))
    run_cases(fn, _head_to_logits_reference, cases, name="check_head_to_logits")


__all__ = ["check_attention_pattern", "check_head_to_logits", "check_train_step"]
