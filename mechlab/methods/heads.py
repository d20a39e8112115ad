"""Head-type scores from attention patterns: previous-token, duplicate-token and induction heads, all at once.

Each score is the attention mass a head puts on the key a head of that type would attend to, averaged over
the query positions that have such a key:

    previous-token   key ``q - 1``
    duplicate-token  every earlier key ``k < q`` holding the same token as the query
    induction        every key ``k = j + 1`` just after an earlier occurrence ``j < q`` of the query's token

The scores are defined from the tokens, not from offsets, so they mean the same on any text. On a repeated
random sequence ``[BOS, r_1..r_n, r_1..r_n]`` (``repeated_random_tokens``) the duplicate-token key is
``q - n`` and the induction key is ``q - n + 1``, and nothing else matches.

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.heads import head_scores
    model = load_model("tiny-gpt2", verbose=False)
    scores = head_scores(model, seq_len=20, batch=2)
    scores.induction.top(3)            # [('L1H2', 0.31), ...]  (labels L{l}H{h}; unit "attention mass")
    scores.detected(threshold=0.4)     # {'previous_token': [...], 'duplicate_token': [...], 'induction': [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlab.core.activations import head_labels, hook_name, names_filter
from mechlab.core.results import Labelled
from mechlab.core.runs import check_tokens
from mechlab.models.organism import HEADS_FILE

HEAD_TYPES = ("previous_token", "duplicate_token", "induction")

# GPT-2 small's heads of each type: the one source of truth (mechlab.methods.circuits.GPT2_INDUCTION_CIRCUIT reads
# it), strongest first. Two published lists of "induction heads" exist and measure different things:
#   - by induction score on repeated random tokens (Olsson et al. 2022's definition of an induction head; the ranking
#     the TransformerLens main demo and ARENA 1.2 show for GPT-2 small): L5H1, L5H5, L6H9, L7H2, L7H10. This is what
#     unit 02's head_scores measures, so it is the list notebooks compare against;
#   - the induction class of the IOI circuit (Wang et al. 2022, "Interpretability in the Wild", their circuit's head
#     classes as released with the paper's code): L5H5, L5H8, L5H9, L6H9, found by path patching on IOI prompts.
#     Kept apart as GPT2_IOI_INDUCTION_HEADS; L5H5 and L6H9 are in both.
# Previous-token (L4H11, L2H2) and duplicate-token (L0H1, L0H10, L3H0) heads: Wang et al. 2022's classes.
GPT2_KNOWN_HEADS = {
    "previous_token": ["L4H11", "L2H2"],
    "duplicate_token": ["L0H1", "L0H10", "L3H0"],
    "induction": ["L5H1", "L5H5", "L6H9", "L7H2", "L7H10"],
}
GPT2_IOI_INDUCTION_HEADS = ["L5H5", "L5H8", "L5H9", "L6H9"]
GPT2_HEAD_SOURCES = {
    "previous_token": "Wang et al. 2022, Interpretability in the Wild (IOI circuit head classes)",
    "duplicate_token": "Wang et al. 2022, Interpretability in the Wild (IOI circuit head classes)",
    "induction": "induction score on repeated random tokens (Olsson et al. 2022's definition), as ranked in the "
                 "TransformerLens main demo",
}
ORGANISM_HEADS_FILE = HEADS_FILE


# ---------------------------------------------------------------------------------------------------------
# patterns and prompts


def attention_patterns(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch layer head query_pos key_pos"]:
    """Every layer's attention pattern on ``tokens``, from one forward pass that caches only the patterns."""
    tokens = check_tokens(model, tokens, "head-scoring")  # integer ids [batch, pos] in the vocabulary
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names_filter(model, ["pattern"]))
    return torch.stack([cache[hook_name("pattern", layer)] for layer in range(model.cfg.n_layers)], dim=1)


def special_token_ids(model) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, padding...), never drawn as random tokens."""
    tok = model.tokenizer
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, name, None) is not None:
            ids.add(int(getattr(tok, name)))
    return ids


def repeated_random_tokens(model, seq_len: int, batch: int = 4, *, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``[BOS, r_1..r_n, r_1..r_n]`` per row: ``n = seq_len`` distinct random non-special tokens, said twice.

    The tokens within a row are distinct, so the only repeats are the deliberate ones: in the second half,
    the duplicate of position ``q`` is ``q - seq_len`` and the token after it is ``q - seq_len + 1``.
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r}: expected an int >= 2 (the length of the random half).")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r}: expected an int >= 1.")
    if 1 + 2 * seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={seq_len} makes {1 + 2 * seq_len} tokens, more than the model's context of "
                         f"{model.cfg.n_ctx}; use seq_len <= {(model.cfg.n_ctx - 1) // 2}.")
    vocab = min(len(model.tokenizer), model.cfg.d_vocab)
    special = special_token_ids(model)
    candidates = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    if len(candidates) < seq_len:
        raise ValueError(f"seq_len={seq_len} distinct tokens were asked for but the tokenizer has only "
                         f"{len(candidates)} non-special tokens; use a shorter seq_len.")
    bos = model.tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the model's tokenizer has no BOS token; repeated_random_tokens needs one to start rows.")
    gen = torch.Generator().manual_seed(seed)
    rows = [candidates[torch.randperm(len(candidates), generator=gen)[:seq_len]] for _ in range(batch)]
    half = torch.stack(rows)
    first = torch.full((batch, 1), int(bos), dtype=torch.long)
    return torch.cat([first, half, half], dim=1).to(model.cfg.device)


# ---------------------------------------------------------------------------------------------------------
# masks: which key a head of each type attends to, per query


def _check_pattern(pattern: Tensor, tokens: Tensor | None = None) -> None:
    if pattern.ndim < 3 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern has shape {tuple(pattern.shape)}; expected [batch, ..., query_pos, key_pos] "
                         "with as many keys as queries (e.g. the stack from attention_patterns).")
    if tokens is not None and (tokens.ndim != 2 or tokens.shape != (pattern.shape[0], pattern.shape[-1])):
        raise ValueError(f"tokens have shape {tuple(tokens.shape)} but the pattern has batch {pattern.shape[0]} and "
                         f"{pattern.shape[-1]} positions; pass the [batch, pos] tokens the pattern was computed on.")


def previous_token_mask(batch: int, n_pos: int) -> Bool[Tensor, "batch query_pos key_pos"]:
    """True at ``[b, q, q - 1]``."""
    return torch.ones(n_pos, n_pos, dtype=torch.bool).tril(-1).triu(-1).expand(batch, n_pos, n_pos)


def duplicate_token_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch query_pos key_pos"]:
    """True at ``[b, q, k]`` when ``k < q`` and ``tokens[b, k] == tokens[b, q]``."""
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.ones_like(same[0]).tril(-1)
    return same & earlier


def induction_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch query_pos key_pos"]:
    """True at ``[b, q, k]`` when ``tokens[b, k - 1] == tokens[b, q]`` for some ``k - 1 < q`` (so ``k <= q``)."""
    dup = duplicate_token_mask(tokens)  # [b, q, j]: j < q holds the query's token
    mask = torch.zeros_like(dup)
    mask[:, :, 1:] = dup[:, :, :-1]  # key k = j + 1
    return mask


def masked_score(
    pattern: Float[Tensor, "batch *heads query_pos key_pos"], mask: Bool[Tensor, "batch query_pos key_pos"]
) -> Float[Tensor, "*heads"]:
    """Attention mass on the ``mask`` keys, averaged over every (batch, query) that has at least one such key."""
    _check_pattern(pattern)
    if mask.shape != (pattern.shape[0], pattern.shape[-2], pattern.shape[-1]):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [batch, query_pos, key_pos] = "
                         f"{(pattern.shape[0], pattern.shape[-2], pattern.shape[-1])}.")
    has_target = mask.any(-1)  # [batch, query]
    if not bool(has_target.any()):
        raise ValueError("no query position has a key of this type in these tokens (nothing repeats?); score "
                         "heads on a sequence that repeats, e.g. repeated_random_tokens(model, seq_len).")
    extra = pattern.ndim - 3
    m = mask.to(pattern.device).view(mask.shape[0], *([1] * extra), *mask.shape[1:])
    mass = (pattern.float() * m).sum(-1)  # [batch, *heads, query]
    weight = has_target.to(pattern.device).float().view(mask.shape[0], *([1] * extra), mask.shape[1])
    total = (mass * weight).sum(dim=(0, -1))
    return total / weight.sum()


def previous_token_score(pattern: Float[Tensor, "batch *heads query_pos key_pos"]) -> Float[Tensor, "*heads"]:
    """Mean attention from each query ``q >= 1`` to ``q - 1``."""
    _check_pattern(pattern)
    return masked_score(pattern, previous_token_mask(pattern.shape[0], pattern.shape[-1]))


def duplicate_token_score(
    pattern: Float[Tensor, "batch *heads query_pos key_pos"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "*heads"]:
    """Mean attention from a repeated token to its earlier occurrences (queries that repeat something)."""
    _check_pattern(pattern, tokens)
    return masked_score(pattern, duplicate_token_mask(tokens))


def induction_score(
    pattern: Float[Tensor, "batch *heads query_pos key_pos"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "*heads"]:
    """Mean attention from a repeated token to the tokens that followed its earlier occurrences."""
    _check_pattern(pattern, tokens)
    return masked_score(pattern, induction_mask(tokens))


# ---------------------------------------------------------------------------------------------------------
# all heads at once


@dataclass
class HeadScores:
    """The three head-type scores for every head, each a ``Labelled`` over ``L{l}H{h}``."""

    previous_token: Labelled
    duplicate_token: Labelled
    induction: Labelled
    n_layers: int
    n_heads: int

    def __getitem__(self, kind: str) -> Labelled:
        if kind not in HEAD_TYPES:
            raise ValueError(f"unknown head type {kind!r}; expected one of {HEAD_TYPES}.")
        return getattr(self, kind)

    def grid(self, kind: str) -> Float[Tensor, "layer head"]:
        """One score as a [layer, head] grid (for ``mechlab.plot.layer_head_grid``)."""
        return self[kind].values.reshape(self.n_layers, self.n_heads)

    def detected(self, threshold: float = 0.4) -> dict[str, list[str]]:
        """Heads whose score is at least ``threshold``, per type, strongest first."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r}: a score is an attention mass, so pick a value in (0, 1].")
        out = {}
        for kind in HEAD_TYPES:
            ranked = self[kind].top(len(self[kind]), by_abs=False)
            out[kind] = [label for label, value in ranked if value >= threshold]
        return out


def scores_from_patterns(
    pattern: Float[Tensor, "batch layer head query_pos key_pos"], tokens: Int[Tensor, "batch pos"]
) -> HeadScores:
    """The three scores for every head, from a stack of patterns (``attention_patterns``) and its tokens."""
    if pattern.ndim != 5:
        raise ValueError(f"pattern has shape {tuple(pattern.shape)}; expected [batch, layer, head, query_pos, "
                         "key_pos] as returned by attention_patterns(model, tokens).")
    n_layers, n_heads = pattern.shape[1], pattern.shape[2]
    labels = head_labels(n_layers, n_heads)
    meta = {"batch": int(pattern.shape[0]), "positions": int(pattern.shape[-1])}

    def lab(values: Tensor, kind: str) -> Labelled:
        return Labelled(values.reshape(-1).cpu(), labels, unit="attention mass", axes=("head",),
                        meta={"score": kind, **meta})

    return HeadScores(
        previous_token=lab(previous_token_score(pattern), "previous_token"),
        duplicate_token=lab(duplicate_token_score(pattern, tokens), "duplicate_token"),
        induction=lab(induction_score(pattern, tokens), "induction"),
        n_layers=n_layers, n_heads=n_heads)


def head_scores(
    model, tokens: Int[Tensor, "batch pos"] | None = None, *, seq_len: int = 50, batch: int = 4, seed: int = 0
) -> HeadScores:
    """Score every head of ``model`` as previous-token, duplicate-token and induction head.

    By default on ``repeated_random_tokens(model, seq_len, batch, seed=seed)``: random tokens carry no
    meaning, so only heads that track positions and repeats score high. Pass ``tokens`` to score other text.
    """
    if tokens is None:
        tokens = repeated_random_tokens(model, seq_len, batch, seed=seed)
    tokens = check_tokens(model, tokens, "head-scoring")
    return scores_from_patterns(attention_patterns(model, tokens), tokens)


# ---------------------------------------------------------------------------------------------------------
# what others found


def known_heads(model_name: str) -> dict[str, list[str]] | None:
    """Heads of each type reported for ``model_name``: ``GPT2_KNOWN_HEADS`` for ``gpt2`` (sources in
    ``GPT2_HEAD_SOURCES``), the organism's own
    ``mechlab/models/organism/heads.json`` (written with its model card) for ``organism``; None when nothing is
    known."""
    if model_name in ("gpt2", "gpt2-small"):
        return {kind: list(heads) for kind, heads in GPT2_KNOWN_HEADS.items()}
    if model_name == "organism" and ORGANISM_HEADS_FILE.is_file():
        data = json.loads(ORGANISM_HEADS_FILE.read_text())
        return {kind: [str(h) for h in data.get(kind, [])] for kind in HEAD_TYPES}
    return None


def compare_heads(detected: dict[str, list[str]], known: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """Per head type: ``found`` (in both), ``missed`` (known, not detected), ``new`` (detected, not known)."""
    if known is None:
        raise ValueError("compare_heads got known=None: no heads are known for this model (known_heads returns None "
                         "for every model but 'gpt2' and 'organism'). Skip the comparison, or pass your own dict such "
                         "as {'induction': ['L1H2']}.")
    for what, value, source in (("detected", detected, "HeadScores.detected(threshold)"),
                                ("known", known, "known_heads(model_name)")):
        if not isinstance(value, dict) or not all(isinstance(v, (list, tuple, set)) for v in value.values()):
            raise ValueError(f"compare_heads: {what} must map head types {HEAD_TYPES} to lists of labels such as "
                             f"['L1H2'] (from {source}); got {type(value).__name__} {value!r:.80}.")
    out = {}
    for kind in HEAD_TYPES:
        got, ref = set(detected.get(kind, [])), set(known.get(kind, []))
        out[kind] = {"found": sorted(got & ref), "missed": sorted(ref - got), "new": sorted(got - ref)}
    return out


__all__ = ["GPT2_HEAD_SOURCES", "GPT2_IOI_INDUCTION_HEADS", "GPT2_KNOWN_HEADS", "HEAD_TYPES",
           "HeadScores", "attention_patterns", "compare_heads",
           "duplicate_token_mask", "duplicate_token_score", "head_scores", "induction_mask", "induction_score",
           "known_heads", "masked_score", "previous_token_mask", "previous_token_score", "repeated_random_tokens",
           "scores_from_patterns", "special_token_ids"]
