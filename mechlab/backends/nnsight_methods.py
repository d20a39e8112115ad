"""DLA, exact activation patching, AtP and IG on an ``nnsight.TransformersModel``, with the bridge's labelled results.

Each ``nnsight_*`` function mirrors the one of the same name without the prefix in ``mechlab.methods`` (same
arguments where they make sense, same labels, same units and conventions: noising / denoising, ``effect``,
``normalise``) and is tested against it to 1e-5 in fp32 (``tests/test_nnsight_backend.py``). What differs is how the
work is shipped:

- **One trace per batch of interventions.** Patches are not run one trace each. A trace's single invoke stacks the
  clean run, the corrupted run and one copy of the baseline run per patch along the batch axis; every patch reads its
  source rows from the same forward pass and writes its own copy. Only the metric per copy is saved.
- **Only small results travel.** DLA computes the per-component contributions inside the trace and saves
  [component, batch]; AtP and IG multiply differences by gradients inside the trace and save [batch, pos] (or
  [batch, pos, head]) per layer. With ``remote=True`` the saves are the download, so nothing of size
  [batch, pos, d_model] per layer comes back.
- **AtP in one forward and backward:** the baseline and target prompts share one batch; the metric is taken on the
  baseline rows only, so the gradient at the target rows is zero and rows never mix (attention stays within a row).

Kinds: ``resid_pre``, ``attn_out``, ``mlp_out`` (one row per layer) and ``z`` (one row per query head ``L{l}H{h}``);
see :mod:`mechlab.backends.nnsight_model` for the module behind each. AtP and IG keep the final norm's scale live
(the bridge path's default, ``freeze_final_scale=False``); DLA freezes it at this run's value, computed from the
final norm's input (LayerNorm: ``sqrt(var + eps)``; RMSNorm: ``sqrt(mean(x^2) + eps)``), which is what the bridge's
``ln_final.hook_scale`` holds.

``remote``: False (default) runs here; True sends every trace to NDIF (a key is needed:
:func:`mechlab.backends.nnsight_model.trace_kwargs`), and ``meta["ndif"]`` keeps what NDIF reported about the last
request (server runtime, peak memory); ``"local"`` is nnsight's offline dry run of the remote path.

Example::

    from mechlab.backends.nnsight_model import organism_language_model
    from mechlab.backends.nnsight_methods import activation_patching
    from mechlab.core.runs import logit_diff_metric
    lm = organism_language_model()
    ...  # clean, corrupted token ids and a metric, as for mechlab.methods.patching
    heads = nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", per_position=False)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.backends.nnsight_model import (
    attention,
    blocks,
    final_norm,
    final_norm_affine,
    lm_device,
    o_proj_bias,
    o_proj_weight,
    out_projection,
    sites,
    token_embedding,
    trace_kwargs,
    unembedding,
)
from mechlab.core.results import Labelled
from mechlab.core.runs import Metric, metric_per_copy
from mechlab.methods.attribution import ig_alphas
from mechlab.methods.dla import BIAS_NOTE, FROZEN_SCALE_NOTE
from mechlab.methods.patching import DIRECTIONS

NNSIGHT_KINDS = ("resid_pre", "attn_out", "mlp_out", "z")
ROW_NAMES = {"resid_pre": "resid_pre", "attn_out": "attn", "mlp_out": "mlp"}
DEFAULT_MAX_BATCH = 512  # sequences per trace when max_batch is not given


# ---------------------------------------------------------------------------------------------------------
# labels and input checks


def nnsight_component_labels(lm) -> list[str]:
    """DLA's rows: ``embed``, ``pos_embed`` (learned positions only), ``L{l}H{h}`` and ``L{l} mlp``, ``bias``."""
    s = sites(lm)
    labels = ["embed"] + (["pos_embed"] if s.has_pos_embed else [])
    for layer in range(s.n_layers):
        labels += [f"L{layer}H{h}" for h in range(s.n_heads)] + [f"L{layer} mlp"]
    return labels + ["bias"]


def nnsight_row_labels(lm, kind: str, layers: Sequence[int]) -> list[str]:
    """Rows of a patching / AtP / IG result: ``L{l} resid_pre``, ``L{l} attn``, ``L{l} mlp`` or ``L{l}H{h}``."""
    _check_kind(kind)
    if kind != "z":
        return [f"L{layer} {ROW_NAMES[kind]}" for layer in layers]
    return [f"L{layer}H{h}" for layer in layers for h in range(sites(lm).n_heads)]


def _check_kind(kind: str) -> str:
    if kind not in NNSIGHT_KINDS:
        raise ValueError(f"kind={kind!r}; the nnsight backend patches {list(NNSIGHT_KINDS)}. For q / k / v use the "
                         "bridge path (mechlab.methods.patching / attribution).")
    return kind


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected 'noising' (corrupted activations into the clean run) "
                         "or 'denoising' (clean activations into the corrupted run).")
    return direction


def _layers(lm, layers) -> list[int]:
    n = sites(lm).n_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer {layer!r} does not exist: this model has integer layers 0..{n - 1}.")
        out.append(layer % n)
    return sorted(set(out))


def _tokens(lm, tokens, what: str) -> Int[Tensor, "batch pos"]:
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int32) or tokens.ndim != 2:
        raise ValueError(f"{what} tokens must be an integer tensor [batch, pos] (e.g. lm.tokenizer(prompts, "
                         f"return_tensors='pt').input_ids); got {type(tokens).__name__} "
                         f"{getattr(tokens, 'dtype', '')} {tuple(getattr(tokens, 'shape', ()))}.")
    if tokens.numel() == 0:
        raise ValueError(f"{what} tokens have shape {tuple(tokens.shape)}: nothing to run. Pass at least one prompt.")
    vocab = lm.config.vocab_size
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"{what} tokens hold ids {int(tokens.min())}..{int(tokens.max())}, outside this model's "
                         f"vocabulary 0..{vocab - 1}; tokenize with this model's tokenizer.")
    return tokens.long().to(lm_device(lm))


def _pair(lm, clean, corrupted):
    clean, corrupted = _tokens(lm, clean, "clean"), _tokens(lm, corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean tokens have shape {tuple(clean.shape)} but corrupted tokens {tuple(corrupted.shape)}; "
                         "they must match so that positions line up.")
    return clean, corrupted


def _ids(ids, batch: int, what: str) -> Int[Tensor, "batch k"]:
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{what} must be integer token ids; got dtype {ids.dtype}.")
    ids = ids.reshape(1, 1) if ids.ndim == 0 else ids
    ids = ids[:, None] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[0] not in (1, batch):
        raise ValueError(f"{what} has shape {tuple(ids.shape)}; expected one id per prompt ([{batch}]) or a set per "
                         f"prompt ([{batch}, k]).")
    return ids.expand(batch, ids.shape[1]).long()


def _positions(pos, batch: int, n_pos: int) -> Int[Tensor, " batch"]:
    p = torch.as_tensor(pos)
    if p.is_floating_point() or p.dtype == torch.bool or p.ndim > 1 or (p.ndim == 1 and len(p) != batch):
        raise ValueError(f"pos={pos!r}: expected one integer position, or one per prompt ({batch}).")
    p = p.expand(batch) if p.ndim == 0 else p
    if bool(((p < -n_pos) | (p >= n_pos)).any()):
        raise ValueError(f"pos={pos!r} is out of range for prompts of {n_pos} positions.")
    return (p % n_pos).long()


# ---------------------------------------------------------------------------------------------------------
# sites inside a trace


def _read_raw(lm, kind: str, layer: int):
    """The tensor the model itself uses for ``kind`` at ``layer`` (z: [batch, pos, head * d_head]), inside a trace.

    Gradients must be taken with respect to this tensor: a view made afterwards is not on the forward graph.
    """
    s = sites(lm)
    block = blocks(lm)[layer]
    if kind == "resid_pre":
        return block.input
    if kind == "z":
        return out_projection(block, s.family).input
    if kind == "attn_out":
        return attention(block, s.family).output[0]
    return block.mlp.output


def _as_kind(lm, kind: str, t: Tensor) -> Tensor:
    """z's [batch, pos, head * d_head] as [batch, pos, head, d_head]; other kinds unchanged."""
    s = sites(lm)
    return t.view(*t.shape[:2], s.n_heads, s.d_head) if kind == "z" else t


def _read(lm, kind: str, layer: int):
    """The activation of ``kind`` at ``layer`` inside a trace: [batch, pos, d_model] or [batch, pos, head, d_head]."""
    return _as_kind(lm, kind, _read_raw(lm, kind, layer))


def _write(lm, kind: str, layer: int, value: Tensor) -> None:
    """Replace the activation of ``kind`` at ``layer`` by ``value`` (same shape as :func:`_read` returns)."""
    s = sites(lm)
    block = blocks(lm)[layer]
    if kind == "resid_pre":
        block.input = value
    elif kind == "z":
        out_projection(block, s.family).input = value.reshape(*value.shape[:2], s.n_heads * s.d_head)
    elif kind == "attn_out":
        attn = attention(block, s.family)
        attn.output = (value, *tuple(attn.output[1:]))
    else:
        block.mlp.output = value


def _logits(lm):
    return lm.output.logits


def _ndif_meta(kwargs: dict) -> dict:
    """What NDIF reported about the last request (server runtime, peak memory), when the call went to NDIF."""
    backend = kwargs.get("backend")
    return {} if backend is None else {"ndif": getattr(backend, "meta", None)}


# ---------------------------------------------------------------------------------------------------------
# DLA


def nnsight_logit_diff_dla(
    lm,
    tokens: Int[Tensor, "batch pos"],
    correct: Int[Tensor, " batch"],
    incorrect: Int[Tensor, " batch"] | Int[Tensor, "batch k"],
    *,
    pos: int | Int[Tensor, " batch"] = -1,
    per_prompt: bool = False,
    remote: bool | str = False,
    api_key: str | None = None,
) -> Labelled:
    """Each component's direct contribution to ``logit[correct] - mean logit[incorrect]`` at ``pos``, the final
    norm's scale frozen at this run's value: :func:`mechlab.methods.dla.logit_diff_dla` on nnsight.

    One trace; the contributions are computed inside it and only [component, batch] and the model's own logit
    difference [batch] are saved. Returns ``Labelled`` over :func:`nnsight_component_labels`, unit "logit diff";
    the values sum to ``meta["logit_diff"]``.
    """
    s = sites(lm)
    tokens = _tokens(lm, tokens, "DLA")
    batch, n_pos = tokens.shape
    good, bad = _ids(correct, batch, "correct"), _ids(incorrect, batch, "incorrect")
    p = _positions(pos, batch, n_pos)
    kwargs = trace_kwargs(lm, remote, api_key)
    rows = torch.arange(batch)
    with torch.no_grad(), lm.trace(tokens, **kwargs):
        writers = [token_embedding(lm).output[rows, p].float()]
        if s.has_pos_embed:
            pos_out = lm.transformer.wpe.output  # [1 or batch, pos, d_model]
            writers.append(pos_out.expand(batch, -1, -1)[rows, p].float())
        zs, mlps = [], []
        for layer in range(s.n_layers):
            zs.append(_read(lm, "z", layer)[rows, p].float())  # [batch, head, d_head]
            mlps.append(blocks(lm)[layer].mlp.output[rows, p].float())
        resid = final_norm(lm).input[rows, p].float()
        values, actual = _dla_rows(lm, writers, zs, mlps, resid, good, bad)
        values, actual = values.cpu().save(), actual.cpu().save()
    values, actual = torch.as_tensor(values), torch.as_tensor(actual)
    return Labelled(values if per_prompt else values.mean(1), nnsight_component_labels(lm), unit="logit diff",
                    axes=("component", "batch") if per_prompt else ("component",),
                    meta={"method": "direct logit attribution (nnsight)", "final_scale": FROZEN_SCALE_NOTE,
                          "bias": BIAS_NOTE, "logit_diff": float(actual.mean()), "logit_diff_per_prompt": actual,
                          "positions": p, **_ndif_meta(kwargs)})


def _dla_rows(lm, writers, zs, mlps, resid, good, bad):
    """Rows [component, batch] and the logit difference [batch] from the writers at the read position."""
    s = sites(lm)
    weight, norm_bias = final_norm_affine(lm)
    w_u, b_u = unembedding(lm)
    device = resid.device
    weight, norm_bias, w_u = weight.to(device), norm_bias.to(device), w_u.to(device)
    good, bad = good.to(device), bad.to(device)
    readout = w_u[good].mean(1) - w_u[bad].mean(1)  # [batch, d_model]
    bias_term = readout @ norm_bias
    if b_u is not None:
        b_u = b_u.to(device)
        bias_term = bias_term + b_u[good].mean(1) - b_u[bad].mean(1)
    centred = resid - resid.mean(-1, keepdim=True) if s.norm_centres else resid
    scale = (centred.pow(2).mean(-1, keepdim=True) + s.norm_eps).sqrt()  # the frozen final scale
    direction = readout * weight
    if s.norm_centres:
        direction = direction - direction.mean(-1, keepdim=True)
    direction = direction / scale
    out = [(w * direction).sum(-1) for w in writers]
    bias_row = bias_term.clone()
    for layer in range(s.n_layers):
        w_o = o_proj_weight(lm, layer).to(device)
        out.extend(torch.einsum("bhd,hdm,bm->hb", zs[layer], w_o, direction).unbind(0))
        out.append((mlps[layer] * direction).sum(-1))
        b_o = o_proj_bias(lm, layer)
        if b_o is not None:
            bias_row = bias_row + direction @ b_o.to(device)
    out.append(bias_row)
    actual = (centred / scale * weight * readout).sum(-1) + bias_term
    return torch.stack(out), actual


# ---------------------------------------------------------------------------------------------------------
# exact activation patching


def _patches(lm, kind: str, layers: list[int], n_pos: int, per_position: bool) -> list[tuple]:
    """(layer, head or None, position or None) for every patch, in the order of the result's rows."""
    heads = range(sites(lm).n_heads) if kind == "z" else [None]
    positions = range(n_pos) if per_position else [None]
    return [(layer, head, p) for layer in layers for head in heads for p in positions]


def nnsight_activation_patching(
    lm,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kind: str,
    direction: str = "noising",
    per_position: bool = True,
    layers: Sequence[int] | None = None,
    effect: bool = False,
    normalise: bool = False,
    max_batch: int | None = None,
    progress: bool = True,
    remote: bool | str = False,
    api_key: str | None = None,
) -> Labelled:
    """Exact activation patching on nnsight: :func:`mechlab.methods.patching.activation_patching`'s result.

    Each trace runs clean, corrupted and one baseline copy per patch in one batch (``max_batch`` sequences per
    trace); a patch copies its (position, head) slice from the source rows to its own copy. Only the per-copy
    metric is saved.
    """
    _check_kind(kind)
    _check_direction(direction)
    clean, corrupted = _pair(lm, clean, corrupted)
    layers = _layers(lm, layers)
    batch, n_pos = clean.shape
    max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    if not isinstance(max_batch, int) or max_batch < 3 * batch:
        raise ValueError(f"max_batch={max_batch!r}; expected an integer of at least {3 * batch} sequences per trace "
                         "(clean, corrupted and one patched copy of the batch).")
    kwargs = trace_kwargs(lm, remote, api_key)
    patches = _patches(lm, kind, layers, n_pos, per_position)
    per_trace = max_batch // batch - 2
    chunks = [patches[i:i + per_trace] for i in range(0, len(patches), per_trace)]
    values, m_clean, m_corr = [], None, None
    for chunk in tqdm(chunks, desc=f"{direction} {kind} ({len(patches)} patches, {per_trace} per trace)",
                      disable=not progress):
        per_copy = _patch_trace(lm, clean, corrupted, metric, kind, direction, chunk, kwargs)
        m_clean, m_corr = per_copy[0], per_copy[1]
        values.append(per_copy[2:])
    values = torch.cat(values).mean(1)
    m_base = m_clean if direction == "noising" else m_corr
    values, unit, how = _normalise(values, m_clean.mean(), m_corr.mean(), m_base.mean(), effect, normalise)
    labels = nnsight_row_labels(lm, kind, layers)
    if per_position:
        values = values.view(len(labels), n_pos)
    meta = {"method": "exact activation patching (nnsight)", "kind": kind, "direction": direction,
            "patched": "corrupted activations into the clean run" if direction == "noising"
            else "clean activations into the corrupted run",
            "metric_clean": float(m_clean.mean()), "metric_corrupted": float(m_corr.mean()),
            "metric_baseline": float(m_base.mean()), "normalisation": how, "layers": layers,
            "traces": len(chunks), **_ndif_meta(kwargs)}
    return Labelled(values.cpu(), labels, unit=unit, axes=("component", "pos") if per_position else ("component",),
                    meta=meta)


def _patch_trace(lm, clean, corrupted, metric, kind, direction, chunk, kwargs) -> Float[Tensor, "copy batch"]:
    """One trace: rows [clean, corrupted, baseline x len(chunk)]; returns the metric per copy [2 + n, batch]."""
    batch = clean.shape[0]
    baseline = clean if direction == "noising" else corrupted
    src = slice(batch, 2 * batch) if direction == "noising" else slice(0, batch)
    stacked = torch.cat([clean, corrupted, baseline.repeat(len(chunk), 1)])
    by_layer: dict[int, list[tuple[int, int | None, int | None]]] = {}
    for i, (layer, head, p) in enumerate(chunk):
        by_layer.setdefault(layer, []).append((i, head, p))
    with torch.no_grad(), lm.trace(stacked, **kwargs):
        for layer in sorted(by_layer):  # forward order
            act = _read(lm, kind, layer).clone()
            source = act[src].clone()
            for i, head, p in by_layer[layer]:
                rows = slice((2 + i) * batch, (3 + i) * batch)
                where = slice(None) if p is None else p
                if head is None:
                    act[rows, where] = source[:, where]
                else:
                    act[rows, where, head] = source[:, where, head]
            _write(lm, kind, layer, act)
        per_copy = metric_per_copy(metric, _logits(lm), batch).cpu().save()
    return torch.as_tensor(per_copy)


def _normalise(values, m_clean, m_corr, m_base, effect: bool, normalise: bool):
    if effect:
        values = values - m_base
    if not normalise:
        how = "mean metric(patched) - mean metric(baseline)" if effect else "mean metric on the patched run"
        return values, "metric" if not effect else "metric change", how
    gap = float(m_clean - m_corr)
    if abs(gap) < 1e-6:
        raise ValueError(f"normalise=True divides by mean metric(clean) - mean metric(corrupted) = {gap:.3g}; the "
                         "metric does not tell the runs apart. Choose other prompts, or pass normalise=False.")
    if effect:
        return values / gap, "fraction of clean-corrupted gap (change)", "(patched - baseline) / (clean - corrupted)"
    return (values - m_corr) / gap, "fraction of clean-corrupted gap", "(patched - corrupted) / (clean - corrupted)"


# ---------------------------------------------------------------------------------------------------------
# AtP and IG


def _check_kinds(kinds) -> list[str]:
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise ValueError(f"kinds is empty; pass some of {list(NNSIGHT_KINDS)}.")
    for kind in kinds:
        _check_kind(kind)
    return list(dict.fromkeys(kinds))


def _reduce(x: Tensor) -> Tensor:
    return x.sum(-1)  # [batch, pos, d] -> [batch, pos]; [batch, pos, head, d] -> [batch, pos, head]


def _site_order(kinds: list[str]) -> list[str]:
    """Kinds in the order a block computes them (resid_pre, then z inside attention, attn_out, mlp_out)."""
    return [k for k in ("resid_pre", "z", "attn_out", "mlp_out") if k in kinds]


def _assemble(lm, kind, layers, per_layer: dict[int, Tensor], scale: float, meta: dict, unit: str) -> Labelled:
    rows = [per_layer[layer][None] if per_layer[layer].ndim == 1 else per_layer[layer].T for layer in layers]
    values = (torch.cat(rows) / scale).cpu()
    return Labelled(values, nnsight_row_labels(lm, kind, layers), unit=unit, axes=("component", "pos"),
                    meta={**meta, "kind": kind, "layers": list(layers)})


def _normaliser(m_clean: Tensor, m_corr: Tensor, normalise: bool) -> tuple[float, str, str]:
    if not normalise:
        return 1.0, "none: mean over prompts, in the metric's unit", "metric"
    gap = float(m_clean.mean() - m_corr.mean())
    if abs(gap) < 1e-6:
        raise ValueError(f"normalise=True divides by the clean - corrupted metric gap, which is {gap:.3g} here; "
                         "choose prompts where the metric differs between the runs, or pass normalise=False.")
    return gap, "divided by mean metric(clean) - mean metric(corrupted)", "fraction of clean-corrupted gap"


def _meta(method, direction, norm_text, m_clean, m_corr, **extra) -> dict:
    return {"method": method, "direction": direction,
            "estimates": "metric(baseline run with target activation) - metric(baseline run); baseline = "
                         + ("clean, target = corrupted" if direction == "noising" else "corrupted, target = clean"),
            "normalisation": norm_text, "metric_clean": float(m_clean.mean()), "metric_corrupted": float(m_corr.mean()),
            "final_scale": "live (gradient flows through the norm)", "accumulation": "fp32", **extra}


def nnsight_attribution_patching(
    lm,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kinds: Sequence[str] = NNSIGHT_KINDS,
    direction: str = "noising",
    normalise: bool = False,
    layers: Sequence[int] | None = None,
    remote: bool | str = False,
    api_key: str | None = None,
) -> dict[str, Labelled]:
    """AtP on nnsight: ``{kind: Labelled[component, pos]}`` as :func:`mechlab.methods.attribution.attribution_patching`.

    One trace, one forward and one backward over the baseline and target prompts stacked in one batch; the products
    ``(a_target - a_baseline) . grad`` are reduced inside the trace and only they are saved.
    """
    requested = _check_kinds(kinds)
    kinds = _site_order(requested)  # the order the forward pass reaches them
    _check_direction(direction)
    clean, corrupted = _pair(lm, clean, corrupted)
    layers = _layers(lm, layers)
    batch = clean.shape[0]
    baseline, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    kwargs = trace_kwargs(lm, remote, api_key)
    base, targ = slice(0, batch), slice(batch, 2 * batch)
    keys = [(kind, layer) for layer in layers for kind in kinds]  # forward order
    with torch.enable_grad(), lm.trace(torch.cat([baseline, target]), **kwargs):
        acts = [_read_raw(lm, kind, layer) for kind, layer in keys]
        logits = _logits(lm)
        per_copy = metric_per_copy(metric, logits, batch)  # [2, batch]
        grads = torch.autograd.grad(per_copy[0].sum(), acts, allow_unused=True)
        scores = []
        for (kind, _), act, grad in zip(keys, acts, grads, strict=True):
            act = _as_kind(lm, kind, act)
            diff = (act[targ] - act[base]).detach().float()
            g = torch.zeros_like(diff) if grad is None else _as_kind(lm, kind, grad)[base].float()
            scores.append(_reduce(diff * g).mean(0).cpu())
        scores = scores.save()
        metrics = per_copy.detach().cpu().save()
    metric_base, metric_target = metrics[0], metrics[1]
    m_clean, m_corr = (metric_base, metric_target) if direction == "noising" else (metric_target, metric_base)
    scale, norm_text, unit = _normaliser(m_clean, m_corr, normalise)
    meta = _meta("attribution patching (AtP, nnsight)", direction, norm_text, m_clean, m_corr, **_ndif_meta(kwargs))
    per_kind: dict[str, dict[int, Tensor]] = {k: {} for k in kinds}
    for (kind, layer), score in zip(keys, scores, strict=True):
        per_kind[kind][layer] = score
    return {k: _assemble(lm, k, layers, per_kind[k], scale, meta, unit) for k in requested}


def nnsight_integrated_gradients(
    lm,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    kind: str,
    steps: int = 16,
    direction: str = "noising",
    normalise: bool = False,
    layers: Sequence[int] | None = None,
    max_batch: int = 64,
    progress: bool = True,
    remote: bool | str = False,
    api_key: str | None = None,
) -> Labelled:
    """AtP with integrated gradients, one layer at a time, on nnsight: as
    :func:`mechlab.methods.attribution.integrated_gradients` (trapezoidal alphas from :func:`ig_alphas`).

    Each trace stacks the baseline rows, the target rows and one copy per (layer, alpha) item; at its layer a copy's
    whole activation is set to ``a_baseline + alpha (a_target - a_baseline)`` (read from the same forward pass), and
    the gradient there, weighted, times ``a_target - a_baseline``, is reduced inside the trace.
    """
    _check_kind(kind)
    _check_direction(direction)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected an integer >= 1 (1 is plain AtP; 16-32 is typical).")
    clean, corrupted = _pair(lm, clean, corrupted)
    layers = _layers(lm, layers)
    batch = clean.shape[0]
    if not isinstance(max_batch, int) or max_batch < 3 * batch:
        raise ValueError(f"max_batch={max_batch!r}; expected an integer of at least {3 * batch} sequences per trace "
                         "(baseline, target and one interpolated copy of the batch).")
    baseline, target = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    kwargs = trace_kwargs(lm, remote, api_key)
    items = [(layer, alpha, weight) for layer in layers for alpha, weight in ig_alphas(steps)]
    per_trace = max_batch // batch - 2
    chunks = [items[i:i + per_trace] for i in range(0, len(items), per_trace)]
    total: dict[int, Tensor] = {}
    metrics = None
    for chunk in tqdm(chunks, desc=f"IG on {kind} ({steps} steps x {len(layers)} layers)", disable=not progress):
        partial, metrics = _ig_trace(lm, baseline, target, metric, kind, chunk, kwargs)
        for layer, score in partial.items():
            total[layer] = total.get(layer, 0) + score
    metric_base, metric_target = metrics[0], metrics[1]
    m_clean, m_corr = (metric_base, metric_target) if direction == "noising" else (metric_target, metric_base)
    scale, norm_text, unit = _normaliser(m_clean, m_corr, normalise)
    meta = _meta("AtP with integrated gradients (one layer at a time, nnsight)", direction, norm_text, m_clean,
                 m_corr, steps=steps, alphas="trapezoidal rule on [0, 1]", traces=len(chunks), **_ndif_meta(kwargs))
    return _assemble(lm, kind, layers, total, scale, meta, unit)


def _ig_trace(lm, baseline, target, metric, kind, chunk, kwargs):
    """One trace of IG items; returns ({layer: score [pos] or [pos, head]}, metric [2, batch])."""
    batch, n = baseline.shape[0], len(chunk)
    base, targ = slice(0, batch), slice(batch, 2 * batch)
    stacked = torch.cat([baseline, target, baseline.repeat(n, 1)])
    chunk_layers = sorted({layer for layer, _, _ in chunk})
    with torch.enable_grad(), lm.trace(stacked, **kwargs):
        injected = []
        for layer in chunk_layers:
            act = _read(lm, kind, layer)
            a0, a1 = act[base].detach(), act[targ].detach()
            delta = torch.zeros_like(act)
            for i, (item_layer, alpha, _) in enumerate(chunk):
                if item_layer == layer:
                    rows = slice((2 + i) * batch, (3 + i) * batch)
                    delta[rows] = a0 + alpha * (a1 - a0) - act[rows].detach()
            new = act + delta  # derived from the old value: the graph stays whole
            _write(lm, kind, layer, new)
            injected.append((layer, new, (a1 - a0).float()))
        per_copy = metric_per_copy(metric, _logits(lm), batch)  # [2 + n, batch]
        grads = torch.autograd.grad(per_copy[2:].sum(), [new for _, new, _ in injected], allow_unused=True)
        partial = {}
        for (layer, _, diff), grad in zip(injected, grads, strict=True):
            g_sum = torch.zeros_like(diff)
            for i, (item_layer, _, weight) in enumerate(chunk):
                if item_layer == layer and grad is not None:
                    g_sum = g_sum + weight * grad[(2 + i) * batch:(3 + i) * batch].float()
            partial[layer] = _reduce(diff * g_sum).mean(0).cpu()
        partial = partial.save()
        metrics = per_copy[:2].detach().cpu().save()
    return partial, metrics


__all__ = ["NNSIGHT_KINDS", "nnsight_activation_patching", "nnsight_attribution_patching",
           "nnsight_component_labels",
           "nnsight_integrated_gradients", "nnsight_logit_diff_dla", "nnsight_row_labels"]
