"""Induction data: random token sequences repeated twice, ``[BOS] x_1 ... x_n x_1 ... x_n``.

On the first half nothing can be predicted (loss ~ log of the token pool); on the second half a model with
induction heads copies the token that followed the current one last time, and its loss falls to near zero.

Example::

    from mechlab.data.induction import repeated_tokens
    batch = repeated_tokens(n=4, half_len=20, token_ids=range(100, 1000), seed=0, bos_id=0)
    batch.tokens.shape                     # torch.Size([4, 41])
    batch.first_half, batch.second_half    # position slices of the targets of each half
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass
class InductionBatch:
    """Repeated random sequences. ``first_half`` / ``second_half`` slice the *predicting* positions of the
    logits: ``logits[:, second_half]`` predict the tokens of the repeat, which induction makes easy."""

    tokens: Int[Tensor, "batch pos"]  # [BOS] + seq + seq (or seq + seq without BOS)
    half_len: int  # n, the length of one copy
    has_bos: bool  # whether position 0 is BOS

    @property
    def first_half(self) -> slice:
        """Positions whose next token is in the first copy (excluding the first token, never predictable)."""
        b = int(self.has_bos)
        return slice(b, b + self.half_len - 1)

    @property
    def second_half(self) -> slice:
        """Positions whose next token is in the second copy (from the last token of the first copy on)."""
        b = int(self.has_bos)
        return slice(b + self.half_len - 1, b + 2 * self.half_len - 1)


def repeated_tokens(n: int, half_len: int, token_ids: Iterable[int], *, seed: int = 0,
                    bos_id: int | None = None) -> InductionBatch:
    """``n`` sequences of ``half_len`` tokens drawn uniformly (with a private generator) from ``token_ids``,
    each repeated twice, with ``bos_id`` in front when given."""
    pool = torch.as_tensor(list(token_ids), dtype=torch.long)
    if n < 1 or half_len < 2:
        raise ValueError(f"n={n}, half_len={half_len}: expected n >= 1 and half_len >= 2.")
    if pool.numel() < 2:
        raise ValueError(f"token_ids holds {pool.numel()} ids; pass a pool of at least 2 (e.g. range(100, 1000)).")
    gen = torch.Generator().manual_seed(seed)
    seq = pool[torch.randint(0, pool.numel(), (n, half_len), generator=gen)]
    parts = ([torch.full((n, 1), bos_id, dtype=torch.long)] if bos_id is not None else []) + [seq, seq]
    return InductionBatch(tokens=torch.cat(parts, dim=1), half_len=half_len, has_bos=bos_id is not None)


def ordinary_token_ids(tokenizer) -> list[int]:
    """Ids of a tokenizer's non-special tokens (the pool to draw induction sequences from)."""
    tok = getattr(tokenizer, "tokenizer", None) or tokenizer
    special = set(tok.all_special_ids)
    return [i for i in range(len(tok)) if i not in special]
