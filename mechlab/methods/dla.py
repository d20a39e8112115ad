"""Direct logit attribution (DLA): how much each residual-stream writer adds *directly* to a logit difference.

The final residual stream is a sum of writers: the token embedding, the positional embedding (GPT-2), every
head's output ``z_h @ W_O[h]``, every attention output bias ``b_O``, and every MLP's output. The logits are::

    logits = norm(resid_final) @ W_U + b_U,   norm(x) = centre(x) / scale * w + b

``centre`` subtracts the mean over ``d_model`` (LayerNorm only; RMSNorm does not centre), ``w`` is the norm's
weight (``1 + weight`` for Gemma's RMSNorm) and ``b`` its bias (LayerNorm only). ``scale`` depends on the whole
residual stream, so the logits are not linear in the writers. DLA makes them linear by **freezing the scale**:
it reads ``ln_final.hook_scale`` from the run being explained (the cache) and treats it as a constant. With
that one choice every term is exact: the contributions below sum to the model's own logit difference (up to
float rounding), and each writer's share is ``centre(writer) / scale * w . (W_U[:, correct] - W_U[:, wrong])``.
The frozen scale is *this run's*; an ablated run has another scale, and the contribution a head "would have"
there is a different number (unit 06 uses :func:`direct_effects` with a chosen run's scale for that reason).

Components (``mechlab`` names):

    embed        token embedding (``hook_embed``; Gemma's sqrt(d_model) multiplier is already in it)
    pos_embed    learned positional embedding (GPT-2 family only; rotary models have none)
    L{l}H{h}     head h of layer l: ``z @ W_O`` read from ``hook_z`` (works for multi-query Gemma)
    L{l} mlp     the MLP's output, its output bias included
    bias         every bias that is nobody's output: the attention output biases ``b_O`` of all layers (through
                 the frozen scale), the final norm's bias through ``W_U``, and the unembedding bias ``b_U``.
                 Each is counted exactly once.

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.dla import logit_diff_dla
    model = load_model("tiny-gpt2", verbose=False)
    tokens = model.to_tokens(["When a and b met, b gave it to"])
    result = logit_diff_dla(model, tokens, correct=[" a"], incorrect=[" b"])
    result.top(5)                       # the largest direct contributions
    result.meta["logit_diff"]           # the model's own logit difference; result.values.sum() equals it
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name
from mechlab.core.results import Labelled
from mechlab.core.runs import model_device
from mechlab.core.tokens import answer_token_ids

FROZEN_SCALE_NOTE = ("final norm scale frozen at this run's ln_final.hook_scale (read from the cache), so every "
                     "contribution is linear and they sum to the logit difference")
BIAS_NOTE = ("bias = attention output biases b_O of all layers (through the frozen scale) + final norm bias "
             "through W_U + unembedding bias b_U, each counted once; MLP output biases are inside 'L{l} mlp'")


# ---------------------------------------------------------------------------------------------------------
# the final norm and the unembedding


def final_norm_params(model) -> tuple[bool, Float[Tensor, " d_model"], Float[Tensor, " d_model"]]:
    """``(centres, weight, bias)`` of the final norm as it acts: LayerNorm centres, RMSNorm does not; the weight
    includes Gemma's ``1 +`` offset; a missing weight is ones and a missing bias zeros (fp32, model device)."""
    norm = model.ln_final
    d_model, device = model.cfg.d_model, model_device(model)
    centres = not bool(getattr(norm, "uses_rms_norm", False))
    weight = _param_or_none(norm, "weight")
    if weight is None:  # a parameter-free norm (weights folded into W_U)
        weight = torch.ones(d_model, device=device)
    else:
        offset = bool(getattr(norm, "uses_weight_offset", False))
        weight = weight.detach().float() + (1.0 if offset else 0.0)
    bias = _param_or_none(norm, "bias")
    bias = torch.zeros(d_model, device=device) if bias is None else bias.detach().float()
    return centres, weight, bias


def _param_or_none(module, name: str) -> Tensor | None:
    try:
        value = getattr(module, name)
    except AttributeError:
        return None
    return value if isinstance(value, Tensor) else None


def _unembed_bias(model) -> Float[Tensor, " d_vocab"]:
    b_u = _param_or_none(model, "b_U")
    return torch.zeros(model.cfg.d_vocab, device=model_device(model)) if b_u is None else b_u.detach().float()


def _attn_biases(model) -> Float[Tensor, "layer d_model"]:
    b_o = _param_or_none(model, "b_O")
    if b_o is None:
        return torch.zeros(model.cfg.n_layers, model.cfg.d_model, device=model_device(model))
    return b_o.detach().float()


def unembed_directions(model, ids: Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
    """The unembedding columns ``W_U[:, ids]`` as residual-space readout directions (fp32), any shape of ids.

    Pass them (or differences of them) to :func:`direct_effects`; the final norm's weight, centring and scale
    are applied there, not here.
    """
    ids = _check_ids(model, ids, "ids")
    return model.W_U.detach().float().T[ids.to(model_device(model))]


def _check_ids(model, ids, what: str) -> Tensor:
    ids = torch.as_tensor(ids)
    if ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"{what} must be integer token ids; got dtype {ids.dtype}. Use "
                         "mechlab.core.tokens.answer_token_ids(model, words) to turn words into ids.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab):
        raise ValueError(f"{what} holds ids outside 0..{model.cfg.d_vocab - 1} (min {int(ids.min())}, max "
                         f"{int(ids.max())}); are they from another tokenizer?")
    return ids.long()


# ---------------------------------------------------------------------------------------------------------
# inputs


def component_labels(model) -> list[str]:
    """``embed``, ``pos_embed`` (when the model has one), ``L{l}H{h}`` and ``L{l} mlp`` layer by layer, ``bias``."""
    labels = ["embed"] + (["pos_embed"] if _has_pos_embed(model) else [])
    for layer in range(model.cfg.n_layers):
        labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)] + [f"L{layer} mlp"]
    return labels + ["bias"]


def _has_pos_embed(model) -> bool:
    return getattr(model.cfg, "positional_embedding_type", "standard") == "standard"


def cache_names(model) -> set[str]:
    """The hook names DLA and :func:`direct_effects` read (pass them as a ``names_filter``)."""
    names = {"hook_embed", FINAL_NORM_SCALE}
    if _has_pos_embed(model):
        names.add("hook_pos_embed")
    for layer in range(model.cfg.n_layers):
        names |= {hook_name("z", layer), hook_name("mlp_out", layer), hook_name("resid_pre", layer)}
    return names | {"ln_final.hook_in"}


def _as_tokens(model, tokens) -> Int[Tensor, "batch pos"]:
    if isinstance(tokens, str) or (isinstance(tokens, Sequence) and tokens and isinstance(tokens[0], str)):
        tokens = model.to_tokens(list([tokens] if isinstance(tokens, str) else tokens))
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32):
        raise ValueError(f"tokens must be prompts (strings) or an integer tensor [batch, pos] from model.to_tokens; "
                         f"got {type(tokens).__name__} {getattr(tokens, 'dtype', '')} "
                         f"{tuple(getattr(tokens, 'shape', ()))}.")
    return tokens.to(model_device(model))


def _answer_ids(model, answers, batch: int, what: str) -> Int[Tensor, "batch k"]:
    """Answers as ids [batch, k]: a word or id (same for every prompt), one per prompt, or a set per prompt."""
    if isinstance(answers, str):
        ids = answer_token_ids(model, [answers])[None].expand(batch, 1)
    elif isinstance(answers, Tensor):
        ids = _check_ids(model, answers, what)
        ids = ids.reshape(1, 1).expand(batch, 1) if ids.ndim == 0 else ids
        ids = ids[:, None] if ids.ndim == 1 else ids
    elif isinstance(answers, Sequence) and answers and isinstance(answers[0], str):
        ids = answer_token_ids(model, list(answers))[:, None]
    elif isinstance(answers, Sequence) and answers and isinstance(answers[0], Sequence):
        ids = torch.stack([answer_token_ids(model, list(row)) for row in answers])
    else:
        raise ValueError(f"{what}={answers!r}: expected a word, a list of words (one per prompt), a list of lists "
                         "(a set per prompt, averaged) or a tensor of token ids [batch] / [batch, k].")
    if ids.ndim != 2 or ids.shape[0] not in (1, batch):
        raise ValueError(f"{what} gives ids of shape {tuple(ids.shape)} for {batch} prompts; pass one answer per "
                         f"prompt ([{batch}]) or a set per prompt ([{batch}, k]).")
    return ids.expand(batch, ids.shape[1]).to(model_device(model))


def _positions(pos, batch: int, n_pos: int, device) -> Int[Tensor, " batch"]:
    p = torch.as_tensor(pos)
    if p.dtype not in (torch.long, torch.int32, torch.int64) or p.ndim > 1 or (p.ndim == 1 and len(p) != batch):
        raise ValueError(f"pos={pos!r}: expected one integer position for every prompt, or a tensor of {batch} "
                         "positions (one per prompt, e.g. IOIBatch.end for right-padded prompts).")
    p = p.expand(batch) if p.ndim == 0 else p
    if bool(((p < -n_pos) | (p >= n_pos)).any()):
        raise ValueError(f"pos={pos!r} is out of range for prompts of {n_pos} positions (0..{n_pos - 1}, or "
                         "negative from the end).")
    return (p % n_pos).long().to(device)


def _check_cache(model, cache, names: set[str]) -> None:
    missing = sorted(n for n in names if n not in cache)
    if missing:
        raise ValueError(f"the cache lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}; run "
                         "model.run_with_cache(tokens, names_filter=lambda n: n in "
                         "mechlab.methods.dla.cache_names(model)) "
                         "or let the function run the model (cache=None).")
    device = model_device(model)
    for n in names:
        if cache[n].device != device:
            raise ValueError(f"cache[{n!r}] is on {cache[n].device} but the model is on {device}; keep the cache "
                             "on the model's device (do not call cache.to('cpu') before DLA).")


@torch.no_grad()
def _run_cache(model, tokens) -> dict[str, Tensor]:
    names = cache_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return cache


# ---------------------------------------------------------------------------------------------------------
# the decomposition


def _decompose(model, acts: dict[str, Tensor], readout: Float[Tensor, "batch pos d_model"],
               scale: Float[Tensor, "batch pos 1"], norm_bias_term: Tensor
               ) -> Float[Tensor, "component batch pos"]:
    """Every component's direct contribution along ``readout`` (before the norm), rows as in ``component_labels``.

    ``acts`` holds the writers at the same (batch, pos) as ``readout``. ``norm_bias_term`` [batch, pos] is added
    to the ``bias`` row (the final norm bias and b_U terms, whatever the caller reads out).
    """
    centres, weight, _ = final_norm_params(model)
    direction = readout * weight  # what the normalised residual is dotted with
    if centres:  # centring a writer == centring the direction it is read along
        direction = direction - direction.mean(-1, keepdim=True)
    direction = direction / scale.float()
    rows = [torch.einsum("bpm,bpm->bp", acts["hook_embed"].float(), direction)]
    if _has_pos_embed(model):
        rows.append(torch.einsum("bpm,bpm->bp", acts["hook_pos_embed"].float(), direction))
    w_o = model.W_O.detach().float()  # [layer, head, d_head, d_model]
    bias_row = norm_bias_term.float().clone()
    b_o = _attn_biases(model)
    for layer in range(model.cfg.n_layers):
        z = acts[hook_name("z", layer)].float()  # [batch, pos, head, d_head]
        per_head = torch.einsum("bphd,hdm,bpm->hbp", z, w_o[layer], direction)
        rows.extend(per_head.unbind(0))
        rows.append(torch.einsum("bpm,bpm->bp", acts[hook_name("mlp_out", layer)].float(), direction))
        bias_row = bias_row + torch.einsum("m,bpm->bp", b_o[layer], direction)
    rows.append(bias_row)
    return torch.stack(rows)


def _at(cache_tensor: Tensor, pos: Tensor) -> Tensor:
    """cache_tensor[b, pos[b]] kept with a pos axis of 1: [batch, 1, ...]."""
    index = pos.view(-1, 1, *([1] * (cache_tensor.ndim - 2))).expand(-1, 1, *cache_tensor.shape[2:])
    return cache_tensor.gather(1, index)


def _logit_diff_readout(model, correct: Tensor, incorrect: Tensor):
    """Readout direction [batch, d_model] and its bias term [batch] for logit[correct] - mean logit[incorrect]."""
    _, _, norm_bias = final_norm_params(model)
    w_u, b_u = model.W_U.detach().float(), _unembed_bias(model)
    readout = w_u.T[correct].mean(1) - w_u.T[incorrect].mean(1)  # [batch, d_model]
    bias_term = readout @ norm_bias + b_u[correct].mean(1) - b_u[incorrect].mean(1)
    return readout, bias_term


def logit_diff_dla(
    model,
    tokens: Int[Tensor, "batch pos"] | Sequence[str] | str,
    correct,
    incorrect,
    *,
    pos: int | Int[Tensor, " batch"] = -1,
    cache=None,
    per_prompt: bool = False,
) -> Labelled:
    """Each component's direct contribution to ``logit[correct] - mean(logit[incorrect])`` at ``pos``.

    Args:
        model: a ``TransformerBridge``.
        tokens: prompts, or token ids [batch, pos].
        correct: a word (same for all prompts), one word per prompt, or token ids [batch].
        incorrect: the same forms, or a set per prompt (list of lists / ids [batch, k]) whose mean logit is used.
        pos: the position read (default the last), or one position per prompt (``IOIBatch.end``).
        cache: a cache of this run holding :func:`cache_names` (on the model's device); None runs the model.
        per_prompt: False averages over prompts (values [component]); True keeps them ([component, batch]).

    Returns:
        ``Labelled`` over :func:`component_labels`, unit "logit diff". ``meta["logit_diff"]`` is the model's own
        (mean) logit difference, which the values sum to; ``meta["final_scale"]`` and ``meta["bias"]`` state the
        frozen-scale choice and where biases went.
    """
    tokens = _as_tokens(model, tokens)
    batch, n_pos = tokens.shape
    good = _answer_ids(model, correct, batch, "correct")
    bad = _answer_ids(model, incorrect, batch, "incorrect")
    cache = _run_cache(model, tokens) if cache is None else cache
    _check_cache(model, cache, cache_names(model))
    p = _positions(pos, batch, n_pos, tokens.device)
    acts = {name: _at(cache[name], p) for name in cache_names(model)}
    readout, bias_term = _logit_diff_readout(model, good, bad)
    values = _decompose(model, acts, readout[:, None], acts[FINAL_NORM_SCALE], bias_term[:, None])[:, :, 0]
    actual = _actual_logit_diff(model, acts, readout, bias_term)
    return Labelled(values.mean(1).cpu() if not per_prompt else values.cpu(), component_labels(model),
                    unit="logit diff", axes=("component",) if not per_prompt else ("component", "batch"),
                    meta={"method": "direct logit attribution", "final_scale": FROZEN_SCALE_NOTE, "bias": BIAS_NOTE,
                          "logit_diff": float(actual.mean()), "logit_diff_per_prompt": actual.cpu(),
                          "positions": p.cpu()})


def _actual_logit_diff(model, acts, readout, bias_term) -> Float[Tensor, " batch"]:
    """The logit difference computed from the final residual stream and its cached scale (not from writers)."""
    centres, weight, _ = final_norm_params(model)
    resid = acts["ln_final.hook_in"][:, 0].float()
    if centres:
        resid = resid - resid.mean(-1, keepdim=True)
    return (resid / acts[FINAL_NORM_SCALE][:, 0].float() * weight * readout).sum(-1) + bias_term


def accumulated_resid_dla(
    model,
    tokens: Int[Tensor, "batch pos"] | Sequence[str] | str,
    correct,
    incorrect,
    *,
    pos: int | Int[Tensor, " batch"] = -1,
    cache=None,
) -> Labelled:
    """The logit difference the residual stream would give if it were unembedded before each layer.

    Entry ``L{l} resid_pre`` reads the residual stream entering layer ``l`` through the final norm (its scale
    frozen at this run's value, bias and ``b_U`` included), ``final resid`` reads the stream the model unembeds
    and so equals the model's logit difference. Differences between consecutive entries are each layer's total
    direct contribution. Mean over prompts; unit "logit diff".
    """
    tokens = _as_tokens(model, tokens)
    batch, n_pos = tokens.shape
    good = _answer_ids(model, correct, batch, "correct")
    bad = _answer_ids(model, incorrect, batch, "incorrect")
    cache = _run_cache(model, tokens) if cache is None else cache
    _check_cache(model, cache, cache_names(model))
    p = _positions(pos, batch, n_pos, tokens.device)
    readout, bias_term = _logit_diff_readout(model, good, bad)
    centres, weight, _ = final_norm_params(model)
    scale = _at(cache[FINAL_NORM_SCALE], p)[:, 0].float()
    names = [hook_name("resid_pre", layer) for layer in range(model.cfg.n_layers)] + ["ln_final.hook_in"]
    rows = []
    for name in names:
        resid = _at(cache[name], p)[:, 0].float()
        if centres:
            resid = resid - resid.mean(-1, keepdim=True)
        rows.append(((resid / scale * weight * readout).sum(-1) + bias_term).mean())
    labels = [f"L{layer} resid_pre" for layer in range(model.cfg.n_layers)] + ["final resid"]
    return Labelled(torch.stack(rows).cpu(), labels, unit="logit diff",
                    meta={"method": "accumulated residual DLA (logit lens with the final scale frozen)",
                          "final_scale": FROZEN_SCALE_NOTE, "bias": "final norm bias and b_U included in every entry"})


def heads_grid(model, result: Labelled) -> Float[Tensor, "layer head"]:
    """The ``L{l}H{h}`` entries of a 1-d component result as a [layer, head] grid (for ``plot.layer_head_grid``)."""
    if result.values.ndim != 1:
        raise ValueError(f"heads_grid needs a 1-d result over components; this one has axes {result.axes}. "
                         "Average it first (per_prompt=False).")
    labels = [f"L{layer}H{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    return result[labels].reshape(model.cfg.n_layers, model.cfg.n_heads)


# ---------------------------------------------------------------------------------------------------------
# per-(batch, position) direct effects on arbitrary directions (unit 06)


def direct_effects(
    model,
    cache,
    directions: Float[Tensor, "batch pos_sel d_model"],
    *,
    positions: slice = slice(None),
    scale: Float[Tensor, "batch pos 1"] | None = None,
) -> Labelled:
    """Each component's direct effect along per-(prompt, position) readout ``directions``, for a chosen scale.

    ``directions[b, i]`` is a readout vector *before* the final norm, e.g. ``W_U[:, token]`` (see
    :func:`unembed_directions`): the effect of writer ``c`` is ``centre(c) / scale * w . direction``. ``positions``
    selects the cached positions the directions belong to (``slice(0, -1)`` with ``tokens[:, 1:]`` scores the
    correct next token at every position). ``scale`` is the final norm's scale to freeze, of the full positions
    ([batch, pos, 1]); default the cache's own ``ln_final.hook_scale``. Pass a clean run's scale to read an
    ablated run's writers the way the clean run would have scaled them, and say which you chose.

    Returns ``Labelled`` over :func:`component_labels` with axes (component, batch, pos). The ``bias`` row holds
    the attention output biases and the final norm bias along the direction; ``b_U`` is not a direction and is
    left out, so for ``direction = W_U[:, t]`` the rows sum to ``logits[..., t] - b_U[t]``.
    """
    names = cache_names(model)
    _check_cache(model, cache, names)
    if not isinstance(positions, slice):
        raise ValueError(f"positions={positions!r}: expected a slice of positions, e.g. slice(None) or slice(0, -1).")
    batch, n_pos = cache["hook_embed"].shape[:2]
    kept = len(range(n_pos)[positions])
    device = model_device(model)
    if not isinstance(directions, Tensor) or not directions.is_floating_point():
        raise ValueError(f"directions must be a float tensor [batch, pos, d_model]; got "
                         f"{type(directions).__name__} {getattr(directions, 'dtype', '')}.")
    if directions.shape != (batch, kept, model.cfg.d_model):
        raise ValueError(f"directions have shape {tuple(directions.shape)}; expected {(batch, kept, model.cfg.d_model)}"
                         f" (batch, the {kept} positions selected by positions={positions}, d_model).")
    if scale is None:
        scale = cache[FINAL_NORM_SCALE]
    for what, t in (("directions", directions), ("scale", scale)):
        if t.device != device:
            raise ValueError(f"{what} are on {t.device} but the model is on {device}; move them with "
                             f".to({str(device)!r}).")
    if scale.shape != (batch, n_pos, 1) or not scale.is_floating_point():
        raise ValueError(f"scale has shape {tuple(scale.shape)} and dtype {scale.dtype}; expected a float tensor "
                         f"{(batch, n_pos, 1)} such as cache['{FINAL_NORM_SCALE}'] of a run on the same prompts.")
    _, _, norm_bias = final_norm_params(model)
    acts = {name: cache[name][:, positions] for name in names}
    values = _decompose(model, acts, directions.float(), scale[:, positions], directions.float() @ norm_bias)
    return Labelled(values.cpu(), component_labels(model), unit="direct effect (logit)",
                    axes=("component", "batch", "pos"),
                    meta={"method": "direct effects", "positions": str(positions),
                          "final_scale": "frozen at the scale passed (default: this cache's own ln_final.hook_scale)",
                          "bias": "attention output biases + final norm bias along the direction; b_U left out"})


__all__ = ["accumulated_resid_dla", "cache_names", "component_labels", "direct_effects", "final_norm_params",
           "heads_grid", "logit_diff_dla", "unembed_directions"]
