"""The logit lens and a per-layer decomposition of a logit difference.

**Logit lens.** The residual stream after ``l`` layers is decoded as if the model stopped there: through the
final norm and the unembedding, ``logits_l = norm(resid_l) @ W_U + b_U``. Whose scale? Here each partial stream
is normalised by **its own** size (the final norm applied to it as it is), which is what "the model's output if
it stopped here" means and gives proper probabilities; at the last entry it is exactly the model's own logits.
(``mechlab.methods.dla.accumulated_resid_dla`` freezes the final run's scale instead, which keeps the entries
linear but makes the early ones too small or too large to read as probabilities.)

**Per-layer decomposition.** With the final scale frozen at this run's value, the logit difference is a sum
over what each layer wrote: ``embed``, ``pos_embed``, ``L{l} attn`` (the whole attention output, its ``b_O``
included), ``L{l} mlp``, and ``bias`` (the final norm's bias and ``b_U``). The rows sum to the logit difference.

Example::

    import torch
    from mechlab.core.loading import load_model
    from mechlab.methods.logit_lens import answer_ranks, layer_decomposition, logit_lens
    model = load_model("tiny-gpt2", verbose=False)
    tokens = model.to_tokens(["When a and b met, b gave it to"])
    lens = logit_lens(model, tokens)                    # [row, batch, d_vocab] logits, rows L0 resid_pre .. final
    answer_ranks(lens, torch.tensor([5])).values        # [row, batch, 2]: rank (0 = top) and probability
    layer_decomposition(model, tokens, torch.tensor([5]), torch.tensor([6])).to_dict()
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name
from mechlab.core.results import Labelled
from mechlab.core.runs import check_tokens, model_device
from mechlab.methods.dla import final_norm_params

LENS_SCALE_NOTE = ("each partial residual stream normalised by its own size (the final norm applied to it as it "
                   "is), so the last row is the model's own logits")
DECOMPOSITION_NOTE = ("final norm scale frozen at this run's ln_final.hook_scale; rows are what each layer's "
                      "attention (b_O included) and MLP wrote, and bias = final norm bias + b_U")


def _has_pos_embed(model) -> bool:
    return getattr(model.cfg, "positional_embedding_type", "standard") == "standard"


def lens_cache_names(model) -> set[str]:
    """Hook names :func:`logit_lens` and :func:`layer_decomposition` read (a ``names_filter`` for a cache)."""
    names = {"hook_embed", "ln_final.hook_in", FINAL_NORM_SCALE} | ({"hook_pos_embed"} if _has_pos_embed(model)
                                                                   else set())
    for layer in range(model.cfg.n_layers):
        names |= {hook_name(k, layer) for k in ("resid_pre", "attn_out", "mlp_out")}
    return names


def _cached(model, tokens, cache) -> dict[str, Tensor]:
    names = lens_cache_names(model)
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    missing = sorted(n for n in names if n not in cache)
    if missing:
        raise ValueError(f"the cache lacks {missing[:4]}; run model.run_with_cache(tokens, names_filter=lambda n: n "
                         "in mechlab.methods.logit_lens.lens_cache_names(model)) or pass cache=None.")
    return cache


def _read_at(t: Tensor, pos, batch: int, n_pos: int) -> Tensor:
    """``t[b, pos[b]]`` for an int or per-prompt positions [batch]."""
    p = torch.as_tensor(pos)
    if p.dtype not in (torch.long, torch.int32, torch.int64) or p.ndim > 1 or (p.ndim == 1 and len(p) != batch):
        raise ValueError(f"pos={pos!r}: expected one integer position, or a tensor of {batch} positions (one per "
                         "prompt, e.g. IOIBatch.end for right-padded prompts).")
    if bool(((p < -n_pos) | (p >= n_pos)).any()):
        raise ValueError(f"pos={pos!r} is out of range for prompts of {n_pos} positions.")
    p = (p.expand(batch) % n_pos).long().to(t.device)
    return t[torch.arange(batch, device=t.device), p]


def _check_ids(model, ids, batch: int, what: str) -> Int[Tensor, " batch"]:
    ids = torch.as_tensor(ids)
    bad_shape = ids.ndim > 1 or (ids.ndim == 1 and len(ids) != batch)
    if ids.dtype not in (torch.long, torch.int32, torch.int64) or bad_shape or int(ids.min()) < 0 \
            or int(ids.max()) >= model.cfg.d_vocab:
        raise ValueError(f"{what} must be token ids in 0..{model.cfg.d_vocab - 1}, one per prompt ({batch}) or one "
                         f"for all; got {ids!r}. mechlab.core.tokens.answer_token_ids(model, words) makes them.")
    return ids.long().expand(batch)


@torch.no_grad()
def logit_lens(
    model, tokens: Int[Tensor, "batch pos"], *, pos: int | Int[Tensor, " batch"] = -1, cache=None
) -> Labelled:
    """The logits the residual stream would give before each layer and at the end, read at ``pos``.

    Rows ``L{l} resid_pre`` (the stream entering layer ``l``; ``L0 resid_pre`` is the embeddings) and ``final
    resid`` (the model's own logits). A model with ``cfg.output_logits_soft_cap`` (Gemma 2) has every row
    soft-capped as its own logits are. Returns ``Labelled`` with values [row, batch, d_vocab], unit "logit".
    """
    tokens = check_tokens(model, tokens, "logit_lens")
    batch, n_pos = tokens.shape
    cache = _cached(model, tokens, cache)
    centres, weight, bias = final_norm_params(model)
    w_u = model.W_U.detach().float()
    b_u = getattr(model, "b_U", None)
    b_u = b_u.detach().float() if isinstance(b_u, Tensor) else torch.zeros(model.cfg.d_vocab, device=w_u.device)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    names = [hook_name("resid_pre", layer) for layer in range(model.cfg.n_layers)] + ["ln_final.hook_in"]
    rows = []
    for name in names:
        resid = _read_at(cache[name].float(), pos, batch, n_pos)  # [batch, d_model]
        if centres:
            resid = resid - resid.mean(-1, keepdim=True)
        normed = resid / (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight + bias
        logits = normed @ w_u + b_u
        if cap > 0:  # Gemma 2: the model's own logits are cap * tanh(logits / cap)
            logits = cap * torch.tanh(logits / cap)
        rows.append(logits)
    labels = [f"L{layer} resid_pre" for layer in range(model.cfg.n_layers)] + ["final resid"]
    return Labelled(torch.stack(rows).cpu(), labels, unit="logit", axes=("layer", "batch", "d_vocab"),
                    meta={"method": "logit lens", "scale": LENS_SCALE_NOTE})


def answer_ranks(lens: Labelled, answer: Int[Tensor, " batch"]) -> Labelled:
    """For each row of a :func:`logit_lens` result, the answer's rank (0 = the top token) and probability.

    Returns ``Labelled`` with values [row, batch, 2] (``[..., 0]`` rank, ``[..., 1]`` probability)."""
    if not isinstance(lens, Labelled) or lens.values.ndim != 3:
        raise ValueError("answer_ranks needs the Labelled [row, batch, d_vocab] that logit_lens returns; got "
                         f"{type(lens).__name__} {tuple(getattr(getattr(lens, 'values', None), 'shape', ()))}.")
    _, batch, d_vocab = lens.values.shape
    ids = torch.as_tensor(answer)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"answer must be integer token ids; got dtype {ids.dtype}. Pass e.g. torch.tensor([5, 7]).")
    if ids.ndim > 1 or (ids.ndim == 1 and len(ids) != batch) or int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        raise ValueError(f"answer must hold one token id in 0..{d_vocab - 1} per prompt ({batch}); got {answer!r}.")
    ids = ids.long().expand(batch).cpu()
    logits = lens.values.float()
    mine = logits.gather(-1, ids.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # [row, batch, 1]
    rank = (logits > mine).sum(-1).float()
    prob = logits.softmax(-1).gather(-1, ids.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0]
    return Labelled(torch.stack([rank, prob], -1), lens.labels, unit="rank (0 = top), probability",
                    axes=("layer", "batch", "stat"), meta={"stats": ["rank", "prob"], **lens.meta})


@torch.no_grad()
def layer_decomposition(
    model,
    tokens: Int[Tensor, "batch pos"],
    correct: Int[Tensor, " batch"],
    incorrect: Int[Tensor, " batch"],
    *,
    pos: int | Int[Tensor, " batch"] = -1,
    cache=None,
) -> Labelled:
    """What each layer's attention and MLP add to ``logit[correct] - logit[incorrect]`` at ``pos``, with the final
    norm's scale frozen at this run's value. Rows ``embed``, ``pos_embed`` (learned positions only), ``L{l}
    attn``, ``L{l} mlp``, ``bias``; values [row, batch] summing to the model's logit difference
    (``meta["logit_diff"]``, per prompt)."""
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        raise ValueError(f"layer_decomposition: this model soft-caps its logits (cap * tanh(logits / cap), cap {cap}), "
                         "so the logit difference is not a sum over what each layer wrote. Decompose a model without "
                         "output_logits_soft_cap (GPT-2, the organism), or read the pre-cap difference yourself.")
    tokens = check_tokens(model, tokens, "layer_decomposition")
    batch, n_pos = tokens.shape
    good, bad = _check_ids(model, correct, batch, "correct"), _check_ids(model, incorrect, batch, "incorrect")
    cache = _cached(model, tokens, cache)
    device = model_device(model)
    centres, weight, bias = final_norm_params(model)
    w_u = model.W_U.detach().float()
    b_u = getattr(model, "b_U", None)
    b_u = b_u.detach().float() if isinstance(b_u, Tensor) else torch.zeros(model.cfg.d_vocab, device=device)
    readout = (w_u[:, good.to(device)] - w_u[:, bad.to(device)]).T  # [batch, d_model]
    direction = readout * weight
    if centres:
        direction = direction - direction.mean(-1, keepdim=True)
    scale = _read_at(cache[FINAL_NORM_SCALE].float(), pos, batch, n_pos)  # [batch, 1]
    direction = direction / scale

    def along(name: str) -> Float[Tensor, " batch"]:
        return (_read_at(cache[name].float(), pos, batch, n_pos) * direction).sum(-1)

    labels = ["embed"] + (["pos_embed"] if _has_pos_embed(model) else [])
    rows = [along(n) for n in ["hook_embed"] + (["hook_pos_embed"] if _has_pos_embed(model) else [])]
    for layer in range(model.cfg.n_layers):
        rows += [along(hook_name("attn_out", layer)), along(hook_name("mlp_out", layer))]
        labels += [f"L{layer} attn", f"L{layer} mlp"]
    rows.append(readout @ bias + b_u[good.to(device)] - b_u[bad.to(device)])
    labels.append("bias")
    final = _read_at(cache["ln_final.hook_in"].float(), pos, batch, n_pos)
    if centres:
        final = final - final.mean(-1, keepdim=True)
    actual = (final / scale * weight * readout).sum(-1) + rows[-1]
    return Labelled(torch.stack(rows).cpu(), labels, unit="logit diff", axes=("component", "batch"),
                    meta={"method": "per-layer decomposition", "final_scale": DECOMPOSITION_NOTE,
                          "logit_diff": actual.cpu()})


__all__ = ["answer_ranks", "layer_decomposition", "lens_cache_names", "logit_lens"]
