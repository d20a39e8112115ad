"""Checkers for unit 01 (tokens and logits): top-k next-token predictions, and the probability the model gave
each token that actually came next.

Each runs the learner's function and a reference on small random logits, every case, and raises
:class:`mechlab.checks.core.CheckFailed` naming the failing cases and, where it recognises one, the mistake
(no softmax, the wrong position, token ids returned as floats...)::

    from mechlab.checks import unit01
    unit01.check_top_k_next_tokens(my_top_k)          # fn(logits, k) -> (probs [batch, k], ids [batch, k])
    unit01.check_correct_token_probs(my_token_probs)  # fn(logits, tokens) -> [batch, pos - 1]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.checks.core import Case, compare_tensors, run_cases
from mechlab.core.tokens import token_log_probs


def _logits(batch: int, pos: int, d_vocab: int, seed: int) -> Tensor:
    return 3 * torch.randn(batch, pos, d_vocab, generator=torch.Generator().manual_seed(seed))


def _tokens(batch: int, pos: int, d_vocab: int, seed: int) -> Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# 1. top-k next-token predictions


def _top_k_reference(
    logits: Float[Tensor, "batch pos d_vocab"], k: int
) -> tuple[Float[Tensor, "batch k"], Int[Tensor, "batch k"]]:
    return logits[:, -1].softmax(-1).topk(k, dim=-1)[:]


def _compare_top_k(got, want) -> str:
    if not isinstance(got, tuple | list) or len(got) != 2:
        return f"expected a pair (probs, token_ids), got {type(got).__name__}"
    problem = compare_tensors(got[1], want[1], what="token ids")
    if problem:
        return problem
    return compare_tensors(got[0], want[0], what="probabilities")


def check_top_k_next_tokens(fn: Callable) -> None:
    """``fn(logits, k)`` with logits ``[batch, pos, d_vocab]`` must return the ``k`` most likely next tokens
    after the *last* position, as ``(probabilities [batch, k], token ids [batch, k])``, most likely first."""
    cases = [Case("batch 1, 4 positions, vocab 10, k=3", (_logits(1, 4, 10, seed=1), 3)),
             Case("batch 3, 6 positions, vocab 50, k=5", (_logits(3, 6, 50, seed=2), 5)),
             Case("one position, k=1", (_logits(2, 1, 7, seed=3), 1))]
    mistakes = {
        "no softmax: the values are logits, not probabilities": lambda logits, k: tuple(logits[:, -1].topk(k)),
        "read at the first position instead of the last": lambda logits, k: tuple(logits[:, 0].softmax(-1).topk(k)),
        "softmax over the position axis instead of the vocabulary":
            lambda logits, k: tuple(logits.softmax(1)[:, -1].topk(k)),
        "the k *least* likely tokens (largest=False)":
            lambda logits, k: tuple(logits[:, -1].softmax(-1).topk(k, largest=False)),
    }
    run_cases(fn, lambda logits, k: tuple(_top_k_reference(logits, k)), cases, name="check_top_k_next_tokens",
              compare=_compare_top_k, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# 2. how well was each actual token predicted


def _correct_token_probs_reference(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    return token_log_probs(logits, tokens).exp()


def check_correct_token_probs(fn: Callable) -> None:
    """``fn(logits, tokens)`` must return ``[batch, pos - 1]``: entry ``[b, p]`` is the probability the
    model gave, at position ``p``, to the token that actually came next, ``tokens[b, p + 1]``."""
    cases = []
    for i, (batch, pos, d_vocab) in enumerate([(1, 5, 11), (2, 7, 30), (3, 2, 5)]):
        cases.append(Case(f"batch {batch}, {pos} positions, vocab {d_vocab}",
                          (_logits(batch, pos, d_vocab, seed=10 + i), _tokens(batch, pos, d_vocab, seed=20 + i))))
    mistakes = {
        "no shift: the probability of the current token, not of the next one":
            lambda logits, tokens: logits[:, :-1].softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0],
        "shifted the wrong way (logits from position p + 1 for token p + 1)":
            lambda logits, tokens: logits[:, 1:].softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0],
        "log-probabilities instead of probabilities": lambda logits, tokens: token_log_probs(logits, tokens),
        "softmax over positions instead of the vocabulary":
            lambda logits, tokens: logits[:, :-1].softmax(1).gather(-1, tokens[:, 1:, None])[..., 0],
    }
    run_cases(fn, _correct_token_probs_reference, cases, name="check_correct_token_probs", mistakes=mistakes)


__all__ = ["check_correct_token_probs", "check_top_k_next_tokens"]
