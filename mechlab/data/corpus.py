"""The organism's training corpus: IOI sentences, compact PrOntoQA proofs, repeated random tokens and filler
text, mixed by weight and packed into fixed-length rows that start with ``<|endoftext|>``.

Example::

    import random
    from mechlab.data.corpus import Mix, text_documents, pack_batch
    texts = text_documents(100, seed=0)                 # for training the tokenizer
    # tokens = pack_batch(tokenizer, Mix(), batch=8, seq_len=128, rng=random.Random(0))
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.data import filler, ioi, prontoqa


@dataclass
class Mix:
    """Relative weights of document kinds (normalised when drawn) and their shapes."""

    ioi: float = 0.30  # an IOI sentence with its answer
    prontoqa: float = 0.55  # a compact PrOntoQA problem with its proof
    induction: float = 0.10  # a random token sequence repeated twice (rows are also topped up with these)
    filler: float = 0.05  # plain grammar text
    prontoqa_hops: tuple = (1, 2)  # hops of the training problems
    prontoqa_distractors: tuple = (1, 3)  # range of distractor facts
    induction_len: tuple = (8, 30)  # range of the half length of induction sequences
    induction_small_alphabet: float = 0.5  # share of induction sequences drawn from a few tokens only
    small_alphabet: tuple = (4, 12)  # range of the alphabet size of those: a single token is then ambiguous,
    # so only the last two tokens tell what came next (2-gram induction, the look-up a proof step needs)
    overflow: str = "induction"  # what tops up a row when the drawn document does not fit: "induction" or "filler"

    def kinds(self) -> tuple[list[str], list[float]]:
        names = ["ioi", "prontoqa", "induction", "filler"]
        weights = [getattr(self, k) for k in names]
        if self.overflow not in ("induction", "filler"):
            raise ValueError(f"Mix.overflow={self.overflow!r}: expected 'induction' or 'filler'.")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"Mix weights {dict(zip(names, weights, strict=True))}: expected non-negative numbers "
                             "with a positive sum.")
        return names, weights


def text_document(kind: str, rng: random.Random, mix: Mix | None = None) -> str:
    """One text document of ``kind`` (``ioi``, ``prontoqa``, ``filler``; induction is token-level)."""
    mix = mix or Mix()
    seed = rng.getrandbits(32)
    if kind == "ioi":
        x = ioi.make_ioi(1, seed=seed)[0]
        return x.prompt + x.answer + "."
    if kind == "prontoqa":
        p = prontoqa.make_problems(1, hops=mix.prontoqa_hops, seed=seed,
                                   n_distractors=rng.randint(*mix.prontoqa_distractors), style="compact")[0]
        return prontoqa.render(p, "compact")
    if kind == "filler":
        return filler.make_filler(1, seed=seed)[0]
    raise ValueError(f"kind={kind!r}: expected 'ioi', 'prontoqa' or 'filler'.")


def text_documents(n: int, *, seed: int = 0, mix: Mix | None = None) -> list[str]:
    """``n`` text documents drawn by the mix's weights (induction excluded), plus a seed-style PrOntoQA
    problem in every 20 so that the tokenizer also knows the Gemma notebook's phrasings."""
    mix = mix or Mix()
    rng = random.Random(seed)
    names, weights = mix.kinds()
    text_kinds = [(k, w) for k, w in zip(names, weights, strict=True) if k != "induction"]
    out = []
    for i in range(n):
        if i % 20 == 19:
            p = prontoqa.make_problems(1, hops=(1, 2, 3), seed=rng.getrandbits(32), style="seed")[0]
            out.append(prontoqa.render(p, "seed"))
        else:
            kind = rng.choices([k for k, _ in text_kinds], weights=[w for _, w in text_kinds])[0]
            out.append(text_document(kind, rng, mix))
    return out


def pack_batch(tokenizer, mix: Mix, *, batch: int, seq_len: int, rng: random.Random) -> Int[Tensor, "batch pos"]:
    """``batch`` rows of ``seq_len`` tokens: documents drawn by weight, each preceded by ``<|endoftext|>``,
    packed until the row is full. A document that would overflow the row is replaced by one that fits
    (``mix.overflow``): a repeated random sequence sized to the room left (at least 4 tokens a half), else
    filler text cut at the row's end. So IOI and PrOntoQA documents are never truncated (when they fit in
    ``seq_len``), and the room they leave goes to induction data rather than to filler."""
    names, weights = mix.kinds()
    bos = tokenizer.bos_token_id
    pool = [i for i in range(len(tokenizer)) if i != bos]

    def repeat(lo: int, hi: int) -> list[int]:
        alphabet = pool
        if mix.induction_small_alphabet and rng.random() < mix.induction_small_alphabet:
            alphabet = rng.sample(pool, rng.randint(*mix.small_alphabet))
        half = [rng.choice(alphabet) for _ in range(rng.randint(lo, hi))]
        return half + half

    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < seq_len:
            kind = rng.choices(names, weights=weights)[0]
            if kind == "induction":
                ids = repeat(*mix.induction_len)
            else:
                ids = tokenizer(text_document(kind, rng, mix), add_special_tokens=False)["input_ids"]
            if row and len(row) + 1 + len(ids) > seq_len:  # keep proofs whole: top the row up
                half_room = (seq_len - len(row) - 1) // 2
                if mix.overflow == "induction" and half_room >= 4:
                    ids = repeat(min(4, half_room), min(half_room, mix.induction_len[1]))
                else:
                    ids = tokenizer(text_document("filler", rng, mix), add_special_tokens=False)["input_ids"]
            row += [bos] + ids
        rows.append(row[:seq_len])
    return torch.tensor(rows, dtype=torch.long)
