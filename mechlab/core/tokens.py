"""Tokens, answers and per-token log-probs: the checks every method runs at the door.

Example::

    from mechlab.core.loading import load_model
    from mechlab.core.tokens import answer_token_ids, clean_corrupted_tokens
    model = load_model("tiny-gpt2", verbose=False)
    ids = answer_token_ids(model, [" a", " b"])          # one id per answer, or a ValueError
    clean, corrupted = clean_corrupted_tokens(model, ["x y"], ["x z"])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def answer_token_ids(model, answers: Sequence[str] | str, *, prepend_space: bool = False) -> Int[Tensor, " n"]:
    """Token ids of single-token answers; a ``ValueError`` for any answer that is several tokens.

    ``prepend_space=True`` adds the leading space that a word in the middle of a sentence carries
    (``"Mary"`` -> ``" Mary"``), the usual cause of a surprising split.
    """
    if isinstance(answers, str):
        answers = [answers]
    ids = []
    for word in answers:
        text = (" " + word) if prepend_space and not word.startswith(" ") else word
        toks = model.to_tokens(text, prepend_bos=False)[0]
        if toks.numel() != 1:
            pieces = model.to_str_tokens(text, prepend_bos=False)
            raise ValueError(
                f"answer {text!r} is {toks.numel()} tokens {pieces}, but this method needs a single-token answer. "
                "Choose a word that is one token (try it with and without a leading space), or score only its "
                "first token on purpose with answer_token_ids(model, [pieces[0]]).")
        ids.append(int(toks[0]))
    return torch.tensor(ids, dtype=torch.long)


def clean_corrupted_tokens(
    model, clean: Sequence[str] | str, corrupted: Sequence[str] | str, *, prepend_bos: bool = True
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokenize clean and corrupted prompts and check they line up position by position.

    Raises a ``ValueError`` that shows both tokenizations when any pair differs in length, or the
    batch sizes differ: patching position ``p`` only makes sense when ``p`` means the same in both runs.
    """
    clean = [clean] if isinstance(clean, str) else list(clean)
    corrupted = [corrupted] if isinstance(corrupted, str) else list(corrupted)
    if len(clean) != len(corrupted):
        raise ValueError(f"got {len(clean)} clean prompts but {len(corrupted)} corrupted ones; pass one corrupted "
                         "prompt per clean prompt.")
    for i, (c, r) in enumerate(zip(clean, corrupted, strict=True)):
        ct = model.to_str_tokens(c, prepend_bos=prepend_bos)
        rt = model.to_str_tokens(r, prepend_bos=prepend_bos)
        if len(ct) != len(rt):
            raise ValueError(
                f"prompt pair {i}: clean is {len(ct)} tokens but corrupted is {len(rt)} tokens; they must have the "
                f"same length so that positions line up.\n  clean:     {ct}\n  corrupted: {rt}\n"
                "Pick corrupting words that tokenize to as many tokens as the words they replace.")
    lengths = {len(model.to_str_tokens(c, prepend_bos=prepend_bos)) for c in clean}
    if len(lengths) > 1:
        raise ValueError(f"the clean prompts have different token lengths {sorted(lengths)}; batch prompts of one "
                         "length (or one template), or run them in separate batches.")
    return (model.to_tokens(clean, prepend_bos=prepend_bos), model.to_tokens(corrupted, prepend_bos=prepend_bos))


def check_same_shape(clean: Tensor, corrupted: Tensor, what: str = "tokens") -> None:
    """A ``ValueError`` when clean and corrupted tensors differ in shape (e.g. token ids of two lengths)."""
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean {what} have shape {tuple(clean.shape)} but corrupted {what} have "
                         f"{tuple(corrupted.shape)}; they must match so that positions line up.")


def token_log_probs(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Log-prob the model gave each actual next token: entry ``[b, p]`` scores ``tokens[b, p + 1]``."""
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits have batch x pos {tuple(logits.shape[:2])} but tokens have {tuple(tokens.shape)}; "
                         "pass the logits of a forward pass on exactly these tokens.")
    log_probs = logits[:, :-1].float().log_softmax(-1)
    return log_probs.gather(-1, tokens[:, 1:, None].to(log_probs.device))[..., 0]


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"] | Float[Tensor, "batch d_vocab"],
    correct: Int[Tensor, " batch"],
    incorrect: Int[Tensor, " batch"] | Int[Tensor, "batch k"],
    *,
    pos: int = -1,
) -> Float[Tensor, " batch"]:
    """logit[correct] - logit[incorrect] at position ``pos``; a 2-d ``incorrect`` is averaged over its set."""
    final = logits[:, pos] if logits.ndim == 3 else logits
    correct = correct.to(final.device)
    incorrect = incorrect.to(final.device)
    good = final.gather(-1, correct[:, None])[:, 0]
    bad = final.gather(-1, incorrect if incorrect.ndim == 2 else incorrect[:, None]).mean(-1)
    return good - bad
