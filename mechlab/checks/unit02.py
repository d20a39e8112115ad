"""Checkers for unit 02 (attention patterns and head types): previous-token, duplicate-token and induction
scores on a repeated random sequence, and the repeated sequence itself.

The learner's score functions take one layer's patterns on ``[BOS, r_1..r_n, r_1..r_n]`` and ``n``; the
references are ``mechlab.methods.heads``' token-defined scores, which agree on such sequences::

    from mechlab.checks import unit02
    unit02.check_previous_token_scores(my_prev)         # fn(pattern [batch, head, q, k]) -> [head]
    unit02.check_duplicate_token_scores(my_dup)         # fn(pattern, seq_len) -> [head]
    unit02.check_induction_scores(my_induction)         # fn(pattern, seq_len) -> [head]
    unit02.check_repeated_tokens(my_generator, model)   # fn(model, seq_len, batch, seed) -> [batch, 1 + 2 seq_len]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.checks.core import Case, CheckFailed, run_cases
from mechlab.methods import heads


def _repeated(batch: int, seq_len: int, seed: int) -> Int[Tensor, "batch pos"]:
    gen = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(100, generator=gen)[:seq_len] + 1 for _ in range(batch)])
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), half, half], dim=1)


def _pattern(batch: int, n_heads: int, n_pos: int, seed: int) -> Float[Tensor, "batch head query_pos key_pos"]:
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(batch, n_heads, n_pos, n_pos, generator=gen)
    future = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _cases() -> list[Case]:
    out = []
    for i, (batch, n_heads, seq_len) in enumerate([(1, 3, 4), (2, 4, 7), (3, 2, 10)]):
        out.append(Case(f"batch {batch}, {n_heads} heads, seq_len {seq_len}",
                        (_pattern(batch, n_heads, 1 + 2 * seq_len, seed=i), seq_len)))
    return out


def _check_scores(fn: Callable, reference: Callable, name: str, *, takes_seq_len: bool = True) -> None:
    def ref(pattern, seq_len):
        return reference(pattern, _repeated(pattern.shape[0], seq_len, seed=0))

    learner = fn if takes_seq_len else (lambda pattern, seq_len: fn(pattern))
    run_cases(learner, ref, _cases(), name=name)


def check_previous_token_scores(fn: Callable) -> None:
    """``fn(pattern)`` with pattern ``[batch, head, query_pos, key_pos]`` must return ``[head]``: the mean over
    batch and query positions ``q >= 1`` of the attention from ``q`` to ``q - 1``."""
    _check_scores(fn, lambda pattern, tokens: heads.previous_token_score(pattern), "check_previous_token_scores",
                  takes_seq_len=False)


def check_duplicate_token_scores(fn: Callable) -> None:
    """``fn(pattern, seq_len)`` on ``[BOS, r_1..r_n, r_1..r_n]`` (``n = seq_len``) must return ``[head]``: the
    mean over batch and second-half queries ``q`` of the attention from ``q`` to ``q - seq_len``."""
    _check_scores(fn, heads.duplicate_token_score, "check_duplicate_token_scores")


def check_induction_scores(fn: Callable) -> None:
    """``fn(pattern, seq_len)`` on ``[BOS, r_1..r_n, r_1..r_n]`` must return ``[head]``: the mean over batch
    and second-half queries ``q`` of the attention from ``q`` to ``q - seq_len + 1``, the token that came
    after the query's token last time."""
    _check_scores(fn, heads.induction_score, "check_induction_scores")


def check_repeated_tokens(fn: Callable, model) -> None:
    """``fn(model, seq_len, batch, seed)`` must return ``[batch, 1 + 2 * seq_len]`` token ids: BOS, then
    ``seq_len`` distinct random non-special tokens, then the same ``seq_len`` again; rows differ, the seed
    reproduces."""
    bos = model.tokenizer.bos_token_id
    special = heads.special_token_ids(model)
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    for seq_len, batch, seed in ((5, 2, 0), (12, 3, 1)):
        where = f"check_repeated_tokens: case seq_len={seq_len}, batch={batch}, seed={seed}"
        try:
            toks = fn(model, seq_len, batch, seed)
        except NotImplementedError:
            raise CheckFailed("check_repeated_tokens: not implemented yet (still raises NotImplementedError).") \
                from None
        except Exception as err:
            raise CheckFailed(f"{where} raised {type(err).__name__}: {err}") from err
        if not isinstance(toks, Tensor):
            raise CheckFailed(f"{where}: returned a {type(toks).__name__}, expected a tensor of token ids.")
        toks = toks.cpu()
        problems = []
        if toks.shape != (batch, 1 + 2 * seq_len):
            problems.append(f"shape {tuple(toks.shape)}, expected {(batch, 1 + 2 * seq_len)} (BOS + 2 x seq_len)")
        elif toks.dtype != torch.long:
            problems.append(f"dtype {toks.dtype}, expected torch.long (token ids)")
        elif not bool((toks[:, 0] == bos).all()):
            problems.append(f"the first column is {toks[:, 0].tolist()}, expected the BOS id {bos} in every row")
        elif not torch.equal(toks[:, 1:1 + seq_len], toks[:, 1 + seq_len:]):
            problems.append("the second half does not repeat the first half")
        elif bool((toks < 0).any()) or bool((toks >= vocab).any()):
            problems.append(f"ids outside the vocabulary 0..{vocab - 1}")
        elif any(int(t) in special for t in toks[:, 1:].flatten()):
            problems.append("the random part contains special tokens (BOS/EOS/padding); leave them out")
        elif any(len(set(row.tolist())) < seq_len for row in toks[:, 1:1 + seq_len]):
            problems.append("a token repeats within the random half; draw seq_len *distinct* tokens per row "
                            "(torch.randperm), so that the only repeats are the deliberate second half")
        elif batch > 1 and torch.equal(toks[0], toks[1]):
            problems.append("every row is the same; draw each row separately")
        elif not torch.equal(toks, fn(model, seq_len, batch, seed).cpu()):
            problems.append("two calls with the same seed gave different tokens; use a seeded torch.Generator")
        if problems:
            raise CheckFailed(f"{where}: {problems[0]}.")
    print("check_repeated_tokens: passed 2 cases.")


__all__ = ["check_duplicate_token_scores", "check_induction_scores", "check_previous_token_scores",
           "check_repeated_tokens"]
