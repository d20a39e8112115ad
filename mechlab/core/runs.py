"""The shared engine of every intervention: metrics, patches, narrow cached runs and batched patched runs.

Methods (``mechlab.methods``) build on these public pieces; nothing here knows about a particular method.

    Metric              ``metric(logits) -> [batch]``: one number per prompt (``logit_diff_metric``,
                        ``gap_fraction_metric``)
    Patch               one intervention: a hook name, an optional head and an optional position
    cache_acts          one forward pass that keeps only the named activations (and the metric)
    run_patches         the metric with each patch applied alone, many patches per forward pass
    patch_hook          the hook that writes a source activation into stacked copies of a batch
    auto_max_batch      sequences per forward pass that fit in memory
    check_tokens, as_token_pair   token checks at the door (shapes, dtypes, clean/corrupted alignment)

Example::

    from mechlab.core.loading import load_model
    from mechlab.core.runs import Patch, cache_acts, logit_diff_metric, run_patches
    model = load_model("tiny-gpt2", verbose=False)
    clean, corrupted = model.to_tokens(["ab ab"]), model.to_tokens(["ab cd"])
    metric = logit_diff_metric(torch.tensor([98]), torch.tensor([99]))
    cache, _ = cache_acts(model, corrupted, {"blocks.0.attn.hook_z"})
    run_patches(model, clean, [Patch("blocks.0.attn.hook_z", head=0)], cache, metric)   # [1 patch, 1 prompt]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import HEAD_KINDS, hook_name, n_heads_for
from mechlab.core.tokens import clean_corrupted_tokens, logit_diff

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, " batch"]]


# ---------------------------------------------------------------------------------------------------------
# metrics


def logit_diff_metric(
    correct: Int[Tensor, " batch"],
    incorrect: Int[Tensor, " batch"] | Int[Tensor, "batch k"],
    *,
    pos: int | Int[Tensor, " batch"] = -1,
) -> Metric:
    """Per-prompt ``logit[correct] - mean logit[incorrect]`` at ``pos`` (one position, or one per prompt such as
    ``IOIBatch.end`` for right-padded prompts), in fp32."""
    correct, incorrect = torch.as_tensor(correct), torch.as_tensor(incorrect)
    pos_t = torch.as_tensor(pos)
    for what, ids in (("correct", correct), ("incorrect", incorrect)):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"logit_diff_metric: {what} ids have dtype {ids.dtype}; expected integer token ids, e.g. "
                             "mechlab.core.tokens.answer_token_ids(model, [' Mary']).")
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"logit_diff_metric: {what} holds the negative id {int(ids.min())}; token ids are "
                             "0..d_vocab-1. Use the ids of answer_token_ids(model, words).")
    if pos_t.is_floating_point() or pos_t.dtype == torch.bool:
        raise ValueError(f"logit_diff_metric: pos={pos!r}; expected an int position (or one int per prompt).")
    if correct.ndim != 1 or incorrect.ndim not in (1, 2) or incorrect.shape[0] != correct.shape[0]:
        raise ValueError(f"logit_diff_metric: correct has shape {tuple(correct.shape)} and incorrect "
                         f"{tuple(incorrect.shape)}; pass one correct id per prompt and one incorrect id (or a row "
                         "of ids, averaged) per prompt.")
    if pos_t.ndim == 1 and pos_t.shape[0] != correct.shape[0]:
        raise ValueError(f"logit_diff_metric: {pos_t.shape[0]} positions for {correct.shape[0]} prompts; pass one "
                         "position, or one per prompt.")

    top = max(int(correct.max()), int(incorrect.max())) if correct.numel() else -1

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
        if top >= logits.shape[-1]:
            raise ValueError(f"logit_diff_metric: token id {top} is out of range for logits over {logits.shape[-1]} "
                             "tokens (ids 0..d_vocab-1); the ids come from another tokenizer or model. Use "
                             "answer_token_ids(model, words) with the model you run.")
        if logits.shape[0] != correct.shape[0]:
            raise ValueError(f"logit_diff_metric was built for {correct.shape[0]} prompts but got logits for "
                             f"{logits.shape[0]}; build the metric with one correct and incorrect id per prompt run.")
        if pos_t.ndim == 0:
            final = logits[:, int(pos_t)]
        else:
            final = logits[torch.arange(logits.shape[0], device=logits.device), pos_t.to(logits.device)]
        return logit_diff(final.float(), correct, incorrect)

    return metric


def gap_fraction_metric(metric: Metric, clean_value: float | Tensor, corrupted_value: float | Tensor) -> Metric:
    """``(metric - corrupted_value) / (clean_value - corrupted_value)``: 1 on clean behaviour, 0 on corrupted.

    Values may be numbers or per-prompt tensors (then each prompt is normalised by its own gap).
    """
    gap = torch.as_tensor(clean_value, dtype=torch.float32) - torch.as_tensor(corrupted_value, dtype=torch.float32)
    if bool((gap.abs() < 1e-6).any()):
        raise ValueError(f"gap_fraction_metric: clean - corrupted = {gap.tolist()}, (nearly) zero; the metric does "
                         "not tell the runs apart, so no fraction of the gap can be measured. Choose other prompts.")
    corrupted_value = torch.as_tensor(corrupted_value, dtype=torch.float32)

    def fraction(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
        value = metric(logits)
        return (value - corrupted_value.to(value.device)) / gap.to(value.device)

    return fraction


# ---------------------------------------------------------------------------------------------------------
# patches and labels


@dataclass(frozen=True)
class Patch:
    """One intervention: overwrite ``name``'s activation at ``pos`` (None: all) and ``head`` (None: all)."""

    name: str  # hook name, e.g. blocks.3.attn.hook_z
    head: int | None = None  # index on the head axis (query head, or K/V head for k and v)
    pos: int | None = None  # position, or None for every position


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_tokens(model, tokens, what: str) -> Int[Tensor, "batch pos"]:
    """``tokens`` moved to the model, or a ValueError: not an integer [batch, pos] tensor, no prompts or no
    positions, or ids outside the vocabulary ``0..d_vocab-1``."""
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int32) or tokens.ndim != 2:
        raise ValueError(f"{what} tokens must be an integer tensor of shape [batch, pos] (from model.to_tokens or "
                         f"mechlab.core.tokens.clean_corrupted_tokens); got {type(tokens).__name__} "
                         f"{getattr(tokens, 'dtype', '')} {tuple(getattr(tokens, 'shape', ()))}.")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        empty = "prompts" if tokens.shape[0] == 0 else "positions"
        raise ValueError(f"{what} tokens have shape {tuple(tokens.shape)}: no {empty}, so there is nothing to measure. "
                         "Pass at least one prompt of at least one token (e.g. model.to_tokens(['The cat sat'])).")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        raise ValueError(f"{what} tokens hold ids from {low} to {high}, but this model's vocabulary has ids "
                         f"0..{model.cfg.d_vocab - 1}; tokenize with this model's tokenizer (model.to_tokens).")
    return tokens.to(model_device(model))


def as_token_pair(model, clean, corrupted) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Clean and corrupted prompts (strings) or token tensors, checked to line up position by position.

    Strings go through ``mechlab.core.tokens.clean_corrupted_tokens`` (its error shows both tokenizations); tensors of
    different shapes raise a ``ValueError`` showing the first prompt of each. Tokens are moved to the model.
    """
    if isinstance(clean, (str, list, tuple)) or isinstance(corrupted, (str, list, tuple)):
        for what, prompts in (("clean", clean), ("corrupted", corrupted)):
            if isinstance(prompts, (list, tuple)) and not prompts:
                raise ValueError(f"{what} is an empty list: no prompts, so there is nothing to measure. Pass at least "
                                 "one prompt, e.g. ['When Mary and John went to the store, John gave a drink to'].")
        clean, corrupted = clean_corrupted_tokens(model, clean, corrupted)
    clean, corrupted = check_tokens(model, clean, "clean"), check_tokens(model, corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean tokens have shape {tuple(clean.shape)} but corrupted tokens have {tuple(corrupted.shape)}; they "
            "must match so that positions line up.\n"
            f"  clean[0]:     {model.to_str_tokens(clean[0])}\n  corrupted[0]: {model.to_str_tokens(corrupted[0])}\n"
            "Pick corrupting words that tokenize to as many tokens as the words they replace.")
    return clean, corrupted


def patches_for(model, kind: str, layers: Sequence[int], n_pos: int, per_position: bool) -> list[Patch]:
    """The patches behind a result's rows (and, per position, its columns), in row-major order."""
    out = []
    for layer in layers:
        heads = range(n_heads_for(model, kind)) if kind in HEAD_KINDS else [None]
        for head in heads:
            positions = range(n_pos) if per_position else [None]
            out.extend(Patch(hook_name(kind, layer), head, p) for p in positions)
    return out


# ---------------------------------------------------------------------------------------------------------
# the batched engine


def auto_max_batch(model, n_pos: int, budget_fraction: float = 0.4) -> int:
    """Sequences per forward pass that fit in ``budget_fraction`` of the free memory (rough, conservative).

    Per sequence it counts about 16 ``d_model``-sized activations per layer, the attention scores and pattern, and
    the logits, in the model's dtype. The CPU budget is 1 GiB.
    """
    cfg = model.cfg
    param = next(model.parameters())
    per_seq = n_pos * (16 * cfg.d_model * cfg.n_layers + 2 * cfg.n_heads * n_pos + 2 * cfg.d_vocab)
    per_seq *= max(param.element_size(), 4)  # logits and the metric go to fp32
    if param.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(param.device)
        budget = budget_fraction * free
    else:
        budget = 1 << 30
    return int(max(1, min(4096, budget // per_seq)))


@torch.no_grad()
def run_patches(
    model,
    tokens: Int[Tensor, "batch pos"],
    patches: Sequence[Patch],
    sources: dict[str, Tensor],
    metric: Metric,
    *,
    max_batch: int | None = None,
    progress: bool = True,
    desc: str = "patching",
) -> Float[Tensor, "patch batch"]:
    """``metric`` on ``tokens`` with each patch applied alone: row ``i`` has ``patches[i]``'s per-prompt values.

    ``sources[name]`` is the activation written in (shape [batch, pos, ...] like the hook's); each patch copies its
    (position, head) slice. Copies of the batch are stacked along the batch axis, ``max_batch`` sequences per pass.
    """
    batch = tokens.shape[0]
    if not patches:
        raise ValueError("no patches to run; check layers / heads.")
    missing = sorted({p.name for p in patches} - set(sources))
    if missing:
        raise ValueError(f"no source activation for {missing[:3]}; pass sources for every hook patched.")
    device = model_device(model)
    for name in {p.name for p in patches}:
        src = sources[name]
        if src.device != device:
            raise ValueError(f"the source activation for {name} is on {src.device} but the model is on {device}; "
                             f"keep sources on the model's device (.to({str(device)!r})).")
        if not src.is_floating_point():
            raise ValueError(f"the source activation for {name} has dtype {src.dtype}; expected a float tensor of "
                             "activations (from a cache of a run of the same model).")
    max_batch = auto_max_batch(model, tokens.shape[1]) if max_batch is None else max_batch
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected a positive integer (sequences per forward pass).")
    per_pass = max(1, max_batch // batch)
    chunks = [list(patches[i:i + per_pass]) for i in range(0, len(patches), per_pass)]
    out = []
    for chunk in tqdm(chunks, desc=f"{desc} ({len(patches)} patches, {per_pass} per pass)", disable=not progress):
        by_name: dict[str, list[tuple[int, Patch]]] = {}
        for i, patch in enumerate(chunk):
            by_name.setdefault(patch.name, []).append((i, patch))
        hooks = [(name, patch_hook(items, sources[name], batch)) for name, items in by_name.items()]
        logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        out.append(metric_per_copy(metric, logits, batch))
    return torch.cat(out)


def patch_hook(items: list[tuple[int, Patch]], source: Tensor, batch: int):
    def hook(act, hook):
        if source.shape != (batch, *act.shape[1:]):
            raise ValueError(f"the source activation for {hook.name} has shape {tuple(source.shape)}, but the run's "
                             f"is {(batch, *act.shape[1:])}; patch between runs of the same shape.")
        act = act.clone()
        src = source.to(act.dtype)
        for i, patch in items:
            rows = slice(i * batch, (i + 1) * batch)
            pos = slice(None) if patch.pos is None else patch.pos
            if patch.head is None:
                act[rows, pos] = src[:, pos]
            else:
                act[rows, pos, patch.head] = src[:, pos, patch.head]
        return act
    return hook


def metric_per_copy(metric: Metric, logits: Tensor, batch: int) -> Float[Tensor, "copy batch"]:
    rows = []
    for chunk in logits.split(batch):
        values = metric(chunk)
        if not isinstance(values, Tensor) or values.shape != (batch,):
            raise ValueError(f"metric returned {type(values).__name__} of shape {tuple(getattr(values, 'shape', ()))};"
                             f" expected one number per prompt, shape ({batch},) (e.g. logit_diff_metric(...)).")
        rows.append(values.float())
    return torch.stack(rows)


@torch.no_grad()
def cache_acts(model, tokens: Int[Tensor, "batch pos"], names: set[str], metric: Metric | None = None):
    """One forward pass keeping only ``names`` (detached, on the device) and, if given, the per-prompt metric."""
    cache: dict[str, Tensor] = {}

    def keeper(name):  # keyed by our name: TL4 may report a hook under its canonical alias
        def keep(act, hook):
            cache[name] = act.detach()
        return keep

    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, keeper(name)) for name in sorted(names)])
    values = metric_per_copy(metric, logits, tokens.shape[0])[0] if metric is not None else None
    return cache, values


__all__ = ["Metric", "Patch", "as_token_pair", "auto_max_batch", "cache_acts", "check_tokens", "gap_fraction_metric",
           "logit_diff_metric", "metric_per_copy", "model_device", "patch_hook", "patches_for", "run_patches"]
