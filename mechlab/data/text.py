"""Natural-ish text for the self-repair lessons: clean and resample prompts of a fixed length, BOS first.

Two sources: OpenWebText (the first 100k documents, streamed through ``datasets``; needs the hub), or the
organism's own training mix (IOI, PrOntoQA, repeated tokens and filler text; seeded, offline).

Example::

    from mechlab.core.loading import load_model
    from mechlab.data.text import text_tokens
    model = load_model("organism")
    clean, resample = text_tokens(model, n_prompts=4, n_pos=20, source="organism")
"""

from __future__ import annotations

import os
import random

import torch
from datasets import load_dataset
from jaxtyping import Int
from torch import Tensor

from mechlab.core.loading import hub_reachable
from mechlab.data.corpus import Mix, pack_batch

# The first 100k documents of OpenWebText (Skylion007's corpus, GPT-2's training distribution), stored on the hub as
# one parquet file (data/train-*.parquet) with a "text" column. Parquet needs no loading script, so `datasets` 4+
# (what Colab ships) loads it; the seed's `stas/openwebtext-10k` is a script dataset, which `datasets` 4 refuses
# ("Dataset scripts are no longer supported"). Streamed: only the first row groups are fetched, not the 300 MB file.
OWT_NAME = "Elriggs/openwebtext-100k"
OWT_SPLIT = "train"
OWT_COLUMN = "text"
SOURCES = ("auto", "openwebtext", "organism")
_OFF = {"", "0", "false", "False"}


def _datasets_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set, or the hub is unreachable."""
    return os.environ.get("HF_DATASETS_OFFLINE", "0") not in _OFF or not hub_reachable()


def text_tokens(
    model, n_prompts: int = 50, n_pos: int = 100, *, source: str = "auto", seed: int = 0
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Clean and resample prompts of ``n_pos`` tokens each (BOS first): two disjoint sets of ``n_prompts`` texts.

    ``source``: ``openwebtext`` (OpenWebText's first documents, ``OWT_NAME``, streamed through ``datasets``;
    needs the hub), ``organism`` (the organism's training mix: IOI, PrOntoQA, repeated tokens and filler text,
    seeded), or ``auto`` (OpenWebText when the hub is reachable, else the organism's text). Offline,
    ``openwebtext`` fails at once with a ``ValueError`` that says what to use instead.
    """

    if source not in SOURCES:
        raise ValueError(f"source={source!r}; expected one of {SOURCES}.")
    if n_prompts < 1 or n_pos < 2:
        raise ValueError(f"n_prompts={n_prompts}, n_pos={n_pos}: expected at least 1 prompt of at least 2 tokens.")
    if source == "auto":
        source = "organism" if _datasets_offline() else "openwebtext"
    if source == "openwebtext":
        if _datasets_offline():
            raise ValueError(
                f"source='openwebtext' needs the Hugging Face hub ({OWT_NAME} through `datasets`), and the hub is not "
                "reachable here (or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). Use source='organism' (the "
                "organism's own text, offline) or source='auto', which picks it for you.")
        tokens = _openwebtext_tokens(model, 2 * n_prompts, n_pos)
    else:
        body = pack_batch(model.tokenizer, Mix(), batch=2 * n_prompts, seq_len=n_pos - 1, rng=random.Random(seed))
        bos = torch.full((2 * n_prompts, 1), int(model.tokenizer.bos_token_id), dtype=torch.long)
        tokens = torch.cat([bos, body], dim=1)
    tokens = tokens.to(next(model.parameters()).device)
    return tokens[:n_prompts], tokens[n_prompts:]


def _openwebtext_tokens(model, n: int, n_pos: int) -> Int[Tensor, "n pos"]:
    """The first ``n`` documents of at least ``n_pos`` tokens, cut to ``n_pos`` (BOS first), in the file's order."""
    rows = []
    for doc in load_dataset(OWT_NAME, split=OWT_SPLIT, streaming=True):
        if OWT_COLUMN not in doc:
            raise ValueError(f"{OWT_NAME} rows have the columns {sorted(doc)}, not {OWT_COLUMN!r}: the dataset changed "
                             "on the hub. Use source='organism', or point OWT_NAME at another parquet text dataset.")
        toks = model.to_tokens(doc[OWT_COLUMN], truncate=True)[0]
        if toks.shape[0] >= n_pos:
            rows.append(toks[:n_pos].cpu())
        if len(rows) == n:
            return torch.stack(rows)
    raise ValueError(f"{OWT_NAME} has only {len(rows)} documents of at least {n_pos} tokens; ask for fewer.")


__all__ = ["OWT_COLUMN", "OWT_NAME", "OWT_SPLIT", "SOURCES", "text_tokens"]
