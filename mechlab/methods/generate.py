"""Batched greedy generation with a KV cache, left padding and stop strings.

One forward pass over the (left-padded) prompts fills the key/value cache; every later step feeds only the
newest token of each unfinished row. Rows finish on their own (a stop string, the end-of-text token, or
``max_new_tokens``) and are dropped from the batch and the cache, so a long answer does not keep short
ones computing. Position ids are counted from each row's first real token, so left padding changes nothing
for learned positions (GPT-2) or rotary ones (Gemma): a prompt gets the same tokens alone or in a batch.

The forward passes go through the bridge, so hooks added with ``with model.hooks(...)`` act on every step.

transformers 5.24 renamed the key/value cache that each attention layer receives from ``past_key_values`` to
``cache``; TransformerLens 4.3's bridge attention reads only the old names, so under 5.24 the cache stayed empty
and every cached step attended to its own token alone (greedy output then repeats one token). While
``generate`` runs, a forward pre-hook on each bridge attention module hands it the cache under the name it reads
(``_cache_under_old_name``); nothing is changed on transformers < 5.24, and the hooks are removed afterwards.

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.generate import generate
    model = load_model("tiny-gpt2", verbose=False)
    out = generate(model, ["The cat", "Once upon a time"], max_new_tokens=8, stop=["\\n\\n"])
    out.texts        # the continuations, cut at the stop string
    out.finish       # "stop", "eos" or "length" for each prompt
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

FINISH_REASONS = ("stop", "eos", "length")


@dataclass
class Generation:
    """Greedy continuations, one per prompt, in the order the prompts were given."""

    prompts: list[str]
    texts: list[str]  # each continuation, cut at its stop string (kept or dropped as ``include_stop`` said)
    tokens: list[Int[Tensor, " new"]]  # generated ids of each row, up to the token that finished it (on the CPU)
    logprobs: list[Float[Tensor, " new"]]  # log-prob the model gave each generated token (on the CPU)
    finish: list[str]  # "stop" (a stop string), "eos" (end-of-text token) or "length" (max_new_tokens)
    stop_found: list[str | None]  # the stop string that ended the row, None when none did

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def full_texts(self) -> list[str]:
        """Prompt + continuation of each row (what the seed's ``generate_until_stop`` returned)."""
        return [p + t for p, t in zip(self.prompts, self.texts, strict=True)]

    def __repr__(self) -> str:
        counts = {r: self.finish.count(r) for r in FINISH_REASONS if r in self.finish}
        first = repr(self.texts[0][:40]) if self.texts else "-"
        return f"Generation({len(self)} prompts; finish {counts}; first continuation {first})"


def _find_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """Earliest occurrence of any stop string in ``text``: (index, string), or None."""
    best = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def _decode_continuation(tokenizer, last_prompt_id: int, new_ids: list[int]) -> str:
    # Decoded after the prompt's last token so that a SentencePiece decoder does not drop the leading space
    # of the first new token (it strips it at the start of a string).
    prefix = tokenizer.decode([last_prompt_id], skip_special_tokens=False)
    text = tokenizer.decode([last_prompt_id, *new_ids], skip_special_tokens=False)
    return text[len(prefix):] if text.startswith(prefix) else tokenizer.decode(new_ids, skip_special_tokens=False)


def _accepts(model, argument: str) -> bool:
    """Whether the wrapped HF model's forward takes ``argument``."""
    return argument in inspect.signature(model.original_model.forward).parameters


def _pass_cache_as_past_key_values(module, args, kwargs):
    """Forward pre-hook: copy ``cache`` (transformers >= 5.24) to ``past_key_values``, the name the bridge reads."""
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        return args, {**kwargs, "past_key_values": kwargs["cache"]}
    return None


@contextlib.contextmanager
def _cache_under_old_name(model) -> Iterator[None]:
    """While generating: each bridge attention module gets the KV cache as ``past_key_values`` again.

    Only when the wrapped HF model takes ``cache`` (transformers >= 5.24). Our calls still pass
    ``past_key_values`` at the top (the bridge's own argument; transformers renames it with a FutureWarning,
    which is silenced here only).
    """
    if not _accepts(model, "cache"):
        yield
        return
    handles = [block.attn.register_forward_pre_hook(_pass_cache_as_past_key_values, with_kwargs=True)
               for block in model.blocks]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
            yield
    finally:
        for handle in handles:
            handle.remove()


def _check_args(model, prompts, max_new_tokens: int, stop, batch_size: int) -> tuple[list[str], list[str]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise ValueError(f"prompts must be a string or a non-empty list of strings; got {type(prompts).__name__} "
                         f"{prompts!r:.60}. Pass e.g. 'The cat sat' or ['The cat sat', 'Once upon a time'] (to "
                         "continue token ids, decode them first with model.tokenizer.decode).")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings; got {type(prompts).__name__} of "
                         f"{sorted({type(p).__name__ for p in prompts})}. Pass e.g. ['The cat sat'].")
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop or [])
    if any(not isinstance(s, str) or s == "" for s in stop):
        raise ValueError(f"stop must be non-empty strings; got {stop!r}. Pass e.g. stop=['Answer:', '\\n\\n'].")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("this model has no tokenizer; generate() needs one to read prompts and stop strings. "
                         "Load it with mechlab.core.loading.load_model.")
    return prompts, stop


@torch.no_grad()
def _generate_chunk(model, ids: list[list[int]], *, max_new_tokens: int, stop: list[str], include_stop: bool,
                    eos_id: int | None, pad_id: int) -> list[tuple]:
    """Greedy-decode one chunk of tokenized prompts; per row: (new ids, log-probs, text, finish, stop string)."""
    device = model.cfg.device
    n, width = len(ids), max(len(x) for x in ids)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, row in enumerate(ids):  # left padding: the real tokens end at the last column
        tokens[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its own first real token

    # only the last position's logits: [batch, pos, d_vocab] at 1000 tokens x 256k vocab would be GiBs
    last_only = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    logits, cache = model(tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                          return_type="logits_and_cache", **last_only)
    next_pos = positions[:, -1:] + 1
    active = list(range(n))  # original row of each row still in the batch
    new_ids: list[list[int]] = [[] for _ in range(n)]
    new_logprobs: list[list[float]] = [[] for _ in range(n)]
    results: list[tuple | None] = [None] * n
    for step in range(max_new_tokens):
        last = logits[:, -1].float()
        chosen = last.argmax(-1)
        chosen_logprob = last.log_softmax(-1).gather(-1, chosen[:, None])[:, 0]
        keep = []
        for j, (row, tok, lp) in enumerate(zip(active, chosen.tolist(), chosen_logprob.tolist(), strict=True)):
            new_ids[row].append(tok)
            new_logprobs[row].append(lp)
            if eos_id is not None and tok == eos_id:
                # the end-of-text token ends the row but is not part of its text (its id stays in the tokens);
                # the text before it held no stop string, or the row would have stopped a step earlier
                text = _decode_continuation(model.tokenizer, ids[row][-1], new_ids[row][:-1])
                results[row] = (new_ids[row], new_logprobs[row], text, "eos", None)
                continue
            text = _decode_continuation(model.tokenizer, ids[row][-1], new_ids[row])
            hit = _find_stop(text, stop)
            if hit is not None:
                cut = hit[0] + (len(hit[1]) if include_stop else 0)
                results[row] = (new_ids[row], new_logprobs[row], text[:cut], "stop", hit[1])
            elif step == max_new_tokens - 1:
                results[row] = (new_ids[row], new_logprobs[row], text, "length", None)
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_pos, chosen = mask[index], next_pos[index], chosen[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = model(chosen[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                              use_cache=True, return_type="logits_and_cache")
        next_pos = next_pos + 1
    assert all(r is not None for r in results), "every row must finish within max_new_tokens"
    return results  # type: ignore[return-value]


def generate(
    model,
    prompts: Sequence[str] | str,
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] | str = (),
    include_stop: bool = True,
    stop_at_eos: bool = True,
    batch_size: int = 16,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> Generation:
    """Greedy continuations of ``prompts``, batched with a KV cache.

    ``stop``: strings that end a row as soon as its decoded continuation contains one (a stop string may span
    several tokens); the text is cut right after it (``include_stop=True``, as the seed's
    ``generate_until_stop``) or right before it. ``stop_at_eos``: the end-of-text token also ends a row (finish
``"eos"``); its id is the last of the row's ``tokens`` but it is not decoded into the row's text.
    Prompts are sorted by length and run ``batch_size`` at a time (a progress bar shows when there are several
    chunks, or with ``progress=True``). ``prepend_bos``: None uses the model's default.

    Returns a ``Generation`` whose ``texts[i]`` continues ``prompts[i]``.
    """
    prompts, stop = _check_args(model, prompts, max_new_tokens, stop, batch_size)
    tokenizer = model.tokenizer
    eos_id = tokenizer.eos_token_id if stop_at_eos else None
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    ids = [model.to_tokens(p, prepend_bos=prepend_bos)[0].tolist() for p in prompts]
    n_ctx = int(model.cfg.n_ctx)
    too_long = [(i, len(x)) for i, x in enumerate(ids) if len(x) + max_new_tokens > n_ctx]
    if too_long:
        i, length = too_long[0]
        raise ValueError(f"prompt {i} is {length} tokens and max_new_tokens={max_new_tokens}, more than the model's "
                         f"context of {n_ctx} positions ({len(too_long)} prompts in all). Shorten the prompt "
                         "(fewer shots) or lower max_new_tokens.")
    if any(len(x) == 0 for x in ids):
        raise ValueError("a prompt tokenized to no tokens (an empty string with prepend_bos=False); give every "
                         "prompt at least one token.")

    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))  # similar lengths share a chunk
    chunks = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(chunks) > 1
    results: dict[int, tuple] = {}
    with _cache_under_old_name(model), tqdm(total=len(prompts), desc="generating", unit="prompt",
                                            disable=not show) as bar:
        for chunk in chunks:
            out = _generate_chunk(model, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, stop=stop,
                                  include_stop=include_stop, eos_id=eos_id, pad_id=pad_id)
            results.update(zip(chunk, out, strict=True))
            bar.update(len(chunk))
    rows = [results[i] for i in range(len(prompts))]
    return Generation(prompts=prompts, texts=[r[2] for r in rows],
                      tokens=[torch.tensor(r[0], dtype=torch.long) for r in rows],
                      logprobs=[torch.tensor(r[1], dtype=torch.float32) for r in rows],
                      finish=[r[3] for r in rows], stop_found=[r[4] for r in rows])
