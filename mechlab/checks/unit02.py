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

from mechlab.checks.core import Case, run_cases
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


def _repeated_cases(model) -> list[Case]:
    """Two short cases and one long enough that drawing with replacement (``torch.randint``) or from the whole
    vocabulary (BOS included) shows up for certain: ``batch * seq_len`` far above the vocabulary size."""
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    allowed = vocab - len({i for i in heads.special_token_ids(model) if i < vocab})
    long_len = max(2, min(allowed, (model.cfg.n_ctx - 1) // 2))
    long_batch = max(2, min(-(-12 * vocab // long_len), 4_000_000 // (1 + 2 * long_len)))
    return [Case("seq_len=5, batch=2, seed=0", (model, 5, 2, 0)),
            Case("seq_len=12, batch=3, seed=1", (model, 12, 3, 1)),
            Case(f"seq_len={long_len}, batch={long_batch}, seed=2 (long rows)", (model, long_len, long_batch, 2),
                 hint="tokens drawn with replacement (torch.randint) repeat inside a row, and a draw from the whole "
                      "vocabulary hits BOS; draw distinct non-special ids with torch.randperm")]


def _repeated_problems(got, want) -> str:
    seq_len, batch, vocab, bos, special = want
    toks, again = got
    if not isinstance(toks, Tensor):
        return f"returned a {type(toks).__name__}, expected a tensor of token ids"
    toks = toks.detach().cpu()
    if toks.shape != (batch, 1 + 2 * seq_len):
        return f"shape {tuple(toks.shape)}, expected {(batch, 1 + 2 * seq_len)} (BOS + 2 x seq_len)"
    if toks.dtype != torch.long:
        return f"dtype {toks.dtype}, expected torch.long (token ids are integers)"
    first, second = toks[:, 1:1 + seq_len], toks[:, 1 + seq_len:]
    problems = []
    if not bool((toks[:, 0] == bos).all()):
        problems.append(f"the first column is {toks[:5, 0].tolist()}..., expected the BOS id {bos} in every row")
    if not torch.equal(first, second):
        row, pos = (first != second).nonzero()[0].tolist()
        problems.append(f"the second half does not repeat the first half exactly (row {row} differs at offset "
                        f"{pos}: {int(first[row, pos])} then {int(second[row, pos])})")
    if bool((toks < 0).any()) or bool((toks >= vocab).any()):
        problems.append(f"ids outside the vocabulary 0..{vocab - 1} (got {int(toks.min())}..{int(toks.max())}); draw "
                        "from range(min(len(model.tokenizer), model.cfg.d_vocab))")
    inside = toks[:, 1:]
    n_bos = int((inside == bos).sum())
    if n_bos:
        problems.append(f"the random halves contain the BOS id {bos} {n_bos} times; BOS belongs in the first column "
                        "only, so leave it (and the other special tokens) out of the draw")
    other = sorted({int(t) for t in inside.unique().tolist() if int(t) in special and int(t) != bos})
    if other:
        problems.append(f"the random halves contain special token ids {other[:5]}; leave them out of the draw")
    repeats = [i for i, row in enumerate(first) if row.unique().numel() < seq_len]
    if repeats:
        problems.append(f"a token repeats within the random half in {len(repeats)} of {batch} rows (row "
                        f"{repeats[0]}); draw seq_len *distinct* ids per row with torch.randperm, not torch.randint, "
                        "which draws with replacement, so that the only repeats are the deliberate second half")
    if batch > 1 and torch.equal(toks[0], toks[1]):
        problems.append("every row is the same; draw each row separately")
    if not isinstance(again, Tensor) or not torch.equal(toks, again.detach().cpu()):
        problems.append("two calls with the same seed gave different tokens; use a seeded torch.Generator")
    return "; ".join(problems)


def check_repeated_tokens(fn: Callable, model) -> None:
    """``fn(model, seq_len, batch, seed)`` must return ``[batch, 1 + 2 * seq_len]`` token ids: BOS, then
    ``seq_len`` distinct random non-special tokens, then the same ``seq_len`` again; rows differ, the seed
    reproduces. One case is long enough that ``torch.randint`` over the vocabulary cannot pass by luck."""
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    facts = (vocab, model.tokenizer.bos_token_id, heads.special_token_ids(model))

    def twice(model, seq_len, batch, seed):
        return fn(model, seq_len, batch, seed), fn(model, seq_len, batch, seed)

    def spec(model, seq_len, batch, seed):
        return (seq_len, batch, *facts)

    run_cases(twice, spec, _repeated_cases(model), name="check_repeated_tokens", compare=_repeated_problems)


__all__ = ["check_duplicate_token_scores", "check_induction_scores", "check_previous_token_scores",
           "check_repeated_tokens"]
