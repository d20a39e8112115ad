"""The shared engine of every intervention: metrics, patches, narrow cached runs and batched patched runs.

Methods (``mechlab.methods``) build on these public pieces; nothing here knows about a particular method.

    Metric              ``metric(logits) -> [batch]``: one number per prompt (``logit_diff_metric``,
                        ``gap_fraction_metric``)
    Patch               one intervention: a hook name, an optional head and an optional position
    cache_acts          one forward pass that keeps only the named activations (and the metric)
    run_patches         the metric with each patch applied alone, many patches per forward pass; given a
                        ``Resume`` it starts each pass at the patched layer instead of the embeddings
    cache_resume, Resume, run_from    resume a forward pass at block ``l`` from a cached residual stream
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

import inspect
import re
import warnings
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

    # what the engine may use to unembed only the positions read (see ``metric_on_final``)
    metric.positions = pos_t
    metric.on_final = lambda final: logit_diff(final.float(), correct, incorrect)
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

    if getattr(metric, "on_final", None) is not None:
        inner = metric.on_final
        fraction.positions = metric.positions
        fraction.on_final = lambda final: ((v := inner(final)) - corrupted_value.to(v.device)) / gap.to(v.device)
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
    resume: Resume | None = None,
) -> Float[Tensor, "patch batch"]:
    """``metric`` on ``tokens`` with each patch applied alone: row ``i`` has ``patches[i]``'s per-prompt values.

    ``sources[name]`` is the activation written in (shape [batch, pos, ...] like the hook's); each patch copies its
    (position, head) slice. Copies of the batch are stacked along the batch axis, ``max_batch`` sequences per pass.
    With ``resume`` (from :func:`cache_resume` on ``tokens``) patches run in layer order and each pass starts at its
    earliest patched layer from the cached residual stream; the unembedding runs only at the positions the metric
    reads when it says which. Same values as full passes (tested to 1e-5 in fp32).
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
    if resume is not None and (resume.tokens.shape != tokens.shape or not torch.equal(resume.tokens, tokens)):
        raise ValueError(f"the resume point was cached on other tokens ({tuple(resume.tokens.shape)}) than the run's "
                         f"({tuple(tokens.shape)}); build it with cache_resume(model, tokens, ...) on the same tokens.")
    layer_of = [hook_layer(p.name) for p in patches]
    order = list(range(len(patches)))
    if resume is not None:  # layer order, so that a pass's copies share their start
        order.sort(key=lambda i: -1 if layer_of[i] is None else layer_of[i])
    chunks = [order[i:i + per_pass] for i in range(0, len(order), per_pass)]
    out = torch.empty(len(patches), batch)
    for chunk in tqdm(chunks, desc=f"{desc} ({len(patches)} patches, {per_pass} per pass)", disable=not progress):
        by_name: dict[str, list[tuple[int, Patch]]] = {}
        for i, j in enumerate(chunk):
            by_name.setdefault(patches[j].name, []).append((i, patches[j]))
        hooks = [(name, patch_hook(items, sources[name], batch)) for name, items in by_name.items()]
        layers = [layer_of[j] for j in chunk]
        start = None if resume is None or None in layers else resume.start(min(layers))
        if start is None:
            logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
            values = metric_per_copy(metric, logits, batch)
        else:
            normed = run_from(model, resume, start, copies=len(chunk), fwd_hooks=hooks, logits=False)
            values = metric_from_normed(model, metric, normed, batch)
        out[chunk] = values.cpu()
    return out.to(device)


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


# ---------------------------------------------------------------------------------------------------------
# resuming a forward pass at a layer
#
# Patching, ablating or interpolating an activation of layer l leaves layers 0..l-1 as they were, so a patched run
# can start at block l from the residual stream the unpatched run cached there. TransformerLens 4.3's bridge has a
# ``start_at_layer`` argument, but it still runs blocks 0..l-1 and discards their output (its docstring says so),
# which saves nothing. ``run_from`` calls the bridge's blocks l..end itself, with the keyword arguments the model's
# own forward gave them (attention mask, position ids, rotary cos / sin: captured once, by ``cache_resume``), then
# ``ln_final`` and ``unembed``: every hook point of those modules fires as in a full forward.

_NOT_CARRIED = ("hidden_states", "past_key_values", "past_key_value", "layer_past", "use_cache")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Resume:
    """What a forward pass needs to start at block ``l``: the residual stream entering each kept layer
    (``blocks.{l}.hook_resid_pre`` of one run, detached) and the keyword arguments that run gave each block.

    ``exact`` says whether the self-check passed (resuming at the last kept layer reproduced the run's logits); when
    it is False the engine falls back to full forward passes.
    """

    tokens: Tensor
    resid: dict[int, Tensor]
    block_kwargs: list[dict]
    exact: bool = True

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def start(self, layer: int | None) -> int | None:
        """The latest kept layer at or before ``layer`` (None: no resumption possible)."""
        if layer is None or not self.exact:
            return None
        kept = [k for k in self.resid if k <= layer]
        return max(kept) if kept else None


def hook_layer(name: str) -> int | None:
    """The block a hook name fires in (``blocks.3.attn.hook_z`` -> 3); a number past every block for the final
    norm and the unembedding (any start runs them); None for hooks before the blocks (``hook_embed``, ...)."""
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(("ln_final.", "unembed.", "hook_unembed")):
        return 1 << 30
    return None


def _block_arguments(block, args, kwargs) -> dict:
    """The call's arguments by name (positional ones named from the HF block's signature), minus what a resumed
    run must not carry (the hidden states, the KV cache)."""
    try:
        bound = inspect.signature(block.original_component.forward).bind_partial(*args, **kwargs).arguments
    except (TypeError, AttributeError, ValueError):
        bound = dict(kwargs)
    out = {}
    for key, value in bound.items():
        if isinstance(value, dict) and key == "kwargs":
            out.update(value)
        else:
            out[key] = value
    return {k: v for k, v in out.items() if k not in _NOT_CARRIED}


def _expand(value, batch: int, copies: int):
    """Tensors with a batch axis repeated for ``copies`` stacked copies of the batch (broadcast ones kept)."""
    if copies == 1:
        return value
    if isinstance(value, Tensor):
        return value.repeat(copies, *([1] * (value.ndim - 1))) if value.ndim and value.shape[0] == batch > 1 else value
    if isinstance(value, tuple):
        return tuple(_expand(v, batch, copies) for v in value)
    return value


def _final_softcap(model) -> float | None:
    config = getattr(getattr(model, "original_model", None), "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembed_logits(model, normed: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """``model.unembed`` (its hooks fire) plus the model's final logit soft-capping, if it has one."""
    logits = model.unembed(normed)
    cap = _final_softcap(model)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def run_from(
    model,
    resume: Resume,
    layer: int,
    *,
    copies: int = 1,
    fwd_hooks: Sequence = (),
    logits: bool = True,
) -> Tensor:
    """Blocks ``layer``..end, ``ln_final`` and (``logits=True``) the unembedding, started from ``resume``'s residual
    stream entering ``layer``, repeated ``copies`` times along the batch, with ``fwd_hooks`` active.

    Returns the logits [copies * batch, pos, d_vocab], or with ``logits=False`` the final norm's output
    [copies * batch, pos, d_model]. Equal to the full forward pass (tested to 1e-5 in fp32 on GPT-2-like and
    Gemma-like models). A hook on an earlier layer, or before the blocks, would never fire: that is a ValueError.
    """
    if layer not in resume.resid:
        raise ValueError(f"run_from(layer={layer}): the resume point kept the residual stream only at layers "
                         f"{sorted(resume.resid)}; capture layer {layer} with cache_resume(model, tokens, layers=...).")
    for name, _ in fwd_hooks:
        at = hook_layer(name)
        if at is None or at < layer:
            raise ValueError(f"run_from(layer={layer}) never runs the hook {name!r} (it fires before block {layer}); "
                             "start at an earlier layer, or run the full forward pass.")
    x = resume.resid[layer].repeat(copies, 1, 1)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for i in range(layer, len(model.blocks)):
            kwargs = {k: _expand(v, resume.batch, copies) for k, v in resume.block_kwargs[i].items()}
            out = model.blocks[i](x, use_cache=False, **kwargs)
            x = out[0] if isinstance(out, tuple) else out
        normed = model.ln_final(x)
        return unembed_logits(model, normed) if logits else normed


def metric_from_normed(model, metric: Metric, normed: Tensor, batch: int) -> Float[Tensor, "copy batch"]:
    """The metric of every copy of the batch from the final norm's output, unembedding only the positions the
    metric reads when it says which (``logit_diff_metric`` and ``gap_fraction_metric`` do), else every position."""
    positions, on_final = getattr(metric, "positions", None), getattr(metric, "on_final", None)
    if positions is None or on_final is None:
        return metric_per_copy(metric, unembed_logits(model, normed), batch)
    copies = normed.shape[0] // batch
    if positions.ndim == 0:
        picked = normed[:, int(positions)]
    else:
        rows = torch.arange(normed.shape[0], device=normed.device)
        picked = normed[rows, positions.to(normed.device).repeat(copies)]
    final = unembed_logits(model, picked[:, None])[:, 0]
    return torch.stack([on_final(chunk).float() for chunk in final.split(batch)])


@torch.no_grad()
def cache_resume(
    model,
    tokens: Int[Tensor, "batch pos"],
    layers: Sequence[int],
    names: set[str] = frozenset(),
    metric: Metric | None = None,
) -> tuple[Resume, dict[str, Tensor], Tensor | None]:
    """One forward pass keeping ``names`` and the metric (like :func:`cache_acts`) plus a :class:`Resume` at
    ``layers``: the residual stream entering each and every block's keyword arguments.

    It then checks itself: the run resumed at the last of ``layers`` must reproduce the run's logits at the first,
    middle and last positions (1e-3 of their scale in fp32, 5e-2 in half precision). An architecture where it does
    not (a step between the blocks that ``run_from`` does not know) gets ``exact=False``, a warning, and full
    forward passes from the engine.
    """
    layers = sorted(set(int(x) for x in layers))
    resid_names = {f"blocks.{layer}.hook_resid_pre": layer for layer in layers}
    cache: dict[str, Tensor] = {}
    resid: dict[int, Tensor] = {}
    block_kwargs: list[dict] = [{} for _ in model.blocks]

    def keeper(name):
        def keep(act, hook):
            if name in names:
                cache[name] = act.detach()
            if name in resid_names:
                resid[resid_names[name]] = act.detach()
        return keep

    def grab(i):
        def pre(module, args, kwargs):
            block_kwargs[i] = _block_arguments(module, args, kwargs)
        return pre

    handles = [block.register_forward_pre_hook(grab(i), with_kwargs=True) for i, block in enumerate(model.blocks)]
    try:
        full = model.run_with_hooks(tokens, fwd_hooks=[(n, keeper(n)) for n in sorted(set(names) | set(resid_names))])
    finally:
        for handle in handles:
            handle.remove()
    resume = Resume(tokens=tokens, resid=resid, block_kwargs=block_kwargs)
    if layers:  # one block, and the unembedding at the first, middle and last positions (a lost mask shows there)
        n_pos = tokens.shape[1]
        at = sorted({0, n_pos // 2, n_pos - 1})
        again = unembed_logits(model, run_from(model, resume, layers[-1], logits=False)[:, at])
        want = full[:, at]
        tol = (1e-3 if full.dtype == torch.float32 else 5e-2) * max(1.0, float(want.abs().max()))
        if again.shape != want.shape or not bool(((again.float() - want.float()).abs() <= tol).all()):
            resume.exact = False
            warnings.warn("resuming a forward pass mid-model did not reproduce this model's logits; mechlab falls "
                          "back to full forward passes for it (slower, same results).", stacklevel=2)
    values = metric_per_copy(metric, full, tokens.shape[0])[0] if metric is not None else None
    return resume, cache, values


__all__ = ["Metric", "Patch", "Resume", "cache_resume", "hook_layer", "metric_from_normed", "run_from",
           "unembed_logits", "as_token_pair", "auto_max_batch", "cache_acts", "check_tokens", "gap_fraction_metric",
           "logit_diff_metric", "metric_per_copy", "model_device", "patch_hook", "patches_for", "run_patches"]
