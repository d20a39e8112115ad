"""The organism's corpus packing: rows start with BOS, text documents are never cut, and the room a long
document leaves is topped up with a repeated random sequence (``Mix.overflow="induction"``)."""

from __future__ import annotations

import random

import pytest
import torch

from mechlab.data.corpus import Mix, pack_batch


class CharTokenizer:
    """A stand-in tokenizer: one id per character (ids 1-127), id 0 is BOS."""

    bos_token_id = 0

    def __len__(self) -> int:
        return 128

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [min(ord(c), 127) or 1 for c in text]}


def _documents(row: list[int]) -> list[list[int]]:
    assert row[0] == 0
    docs, cur = [], None
    for t in row:
        if t == 0:
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    return docs + [cur]


def _is_repeat(doc: list[int]) -> bool:
    n = len(doc) // 2
    return len(doc) % 2 == 0 and n >= 4 and doc[:n] == doc[n:]


def _is_ioi(doc: list[int]) -> bool:
    text = "".join(chr(t) for t in doc)
    return text.endswith(".") and " to " in text


def test_rows_start_with_bos_and_keep_documents_whole():
    tok, mix = CharTokenizer(), Mix(ioi=1.0, prontoqa=0.0, induction=0.0, filler=0.0)
    x = pack_batch(tok, mix, batch=16, seq_len=200, rng=random.Random(0))
    assert x.shape == (16, 200) and x.dtype == torch.long and (x[:, 0] == 0).all()
    repeats = 0
    for row in x.tolist():
        docs = _documents(row)
        for doc in docs[:-1]:  # only the last document of a row may be cut
            assert _is_ioi(doc) or _is_repeat(doc), "".join(chr(t) for t in doc)
            repeats += _is_repeat(doc)
    assert repeats > 0  # IOI sentences do not tile 200 characters: the room left went to induction data
    assert torch.equal(x, pack_batch(tok, mix, batch=16, seq_len=200, rng=random.Random(0)))


def test_overflow_filler_is_the_old_behaviour():
    tok = CharTokenizer()
    mix = Mix(ioi=1.0, prontoqa=0.0, induction=0.0, filler=0.0, overflow="filler")
    x = pack_batch(tok, mix, batch=8, seq_len=200, rng=random.Random(0))
    assert not any(_is_repeat(doc) for row in x.tolist() for doc in _documents(row))
    with pytest.raises(ValueError, match="overflow"):
        Mix(overflow="padding").kinds()


def test_small_alphabet_repeats_need_two_tokens_of_context():
    """``induction_small_alphabet=1``: every repeat is drawn from 4-12 tokens, so one token of context is
    ambiguous (it recurs with different successors) while the sequence still repeats exactly."""
    tok = CharTokenizer()
    small = Mix(ioi=0.0, prontoqa=0.0, induction=1.0, filler=0.0, induction_small_alphabet=1.0)
    wide = Mix(ioi=0.0, prontoqa=0.0, induction=1.0, filler=0.0)
    ambiguous = 0
    for row in pack_batch(tok, small, batch=16, seq_len=128, rng=random.Random(1)).tolist():
        for doc in _documents(row)[:-1]:
            assert _is_repeat(doc)
            half = doc[:len(doc) // 2]
            assert len(set(half)) <= 12
            successors: dict = {}
            for a, b in zip(half[:-1], half[1:], strict=True):
                successors.setdefault(a, set()).add(b)
            ambiguous += any(len(s) > 1 for s in successors.values())
    assert ambiguous > 10
    wide_sizes = [len(set(d[:len(d) // 2])) for row in pack_batch(tok, wide, batch=16, seq_len=128,
                                                                   rng=random.Random(1)).tolist()
                  for d in _documents(row)[:-1]]
    assert max(wide_sizes) > 12  # the default draws from the whole vocabulary
