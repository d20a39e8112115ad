"""Weight-level circuits: what a head reads, writes and attends to, read from its weights alone (no prompt).

A head is two low-rank maps on the residual stream (row-vector convention, ``x @ W``)::

    OV  = W_V @ W_O     [d_model, d_model], rank <= d_head: what the head writes, given what it attends to
    QK  = W_Q @ W_K.T   [d_model, d_model], rank <= d_head: score(query x, key y) = x @ QK @ y.T / sqrt(d_head)

They are kept as ``transformer_lens.FactoredMatrix`` (the two factors, never the product), so that d_vocab-sized
circuits such as the full OV circuit ``W_E @ OV @ W_U`` are read in batches of rows.

**Weight processing.** Every head reads ``norm(x) = centre(x) / scale * w + b`` (LayerNorm; RMSNorm neither
centres nor has ``b``, and Gemma's weight is ``1 + w``). :func:`circuit_weights` folds ``w`` into the reading
weights (``W_Q``, ``W_K``, ``W_V`` and ``W_U``), ``b`` into their biases, and, for LayerNorm, centres the writing
weights (``W_E``, ``W_pos``, ``W_O``) and the reading weights along ``d_model``: the norm removes the mean
anyway, so this changes no output and leaves only the part of each matrix the model can use. ``W_U`` is also
centred over the vocabulary (a constant shift of a position's logits). The result equals the weights of
TransformerLens's ``model.enable_compatibility_mode()``, without changing the model in place. What stays out is
the ``scale``: it depends on the whole stream, so it is a per-row positive factor that top-1 readings ignore and
the functions below state where it matters. Multi-query / grouped K/V heads (Gemma) are repeated to their query
heads, so every array has one entry per query head.

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.circuits import circuit_weights, composition_scores, ov_copying_accuracy
    model = load_model("tiny-gpt2", verbose=False)
    w = circuit_weights(model)                      # print(w.notes) says what was folded and centred
    ov_copying_accuracy(w, layer=1).to_dict()       # fraction of tokens each head's OV circuit maps to itself
    composition_scores(w, "K", sender_layer=0, receiver_layer=1).values   # [sender head, receiver head]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import FactoredMatrix

from mechlab.core.activations import parse_head
from mechlab.core.results import Labelled
from mechlab.methods.heads import GPT2_KNOWN_HEADS

COMPOSITION_KINDS = ("Q", "K", "V")
# GPT-2 small's induction circuit as unit 03b reads it from the weights: the heads of mechlab.methods.heads'
# GPT2_KNOWN_HEADS (one source of truth, with its citations there), strongest previous-token head first.
GPT2_INDUCTION_CIRCUIT = {"induction": list(GPT2_KNOWN_HEADS["induction"]),
                          "previous_token": list(GPT2_KNOWN_HEADS["previous_token"])}
CITATIONS = {
    "circuits": "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits (OV/QK circuits, "
                "composition scores, the eigenvalue copying score)",
    "induction": "Olsson et al. 2022, In-context Learning and Induction Heads",
}
SCALE_NOTE = ("the norm's scale (one positive number per row) is left out: a top-1 reading of a row does not depend "
              "on it, but eigenvalues and Frobenius norms do (a per-row scale is diag(s) @ M, whose spectrum differs)")
COPYING_BIAS_NOTE = ("biases left out: they add the same vector for every source token, so they do not say what "
                     "is copied")


@dataclass
class CircuitWeights:
    """A model's attention weights with the norms folded in, one entry per query head (fp32, model device)."""

    W_E: Float[Tensor, "d_vocab d_model"]
    W_pos: Float[Tensor, "pos d_model"] | None  # None for models without learned positions (rotary)
    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]  # K/V heads repeated to query heads for multi-query models
    W_V: Float[Tensor, "layer head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    b_Q: Float[Tensor, "layer head d_head"]
    b_K: Float[Tensor, "layer head d_head"]
    W_U: Float[Tensor, "d_model d_vocab"]
    ln1: list[tuple[bool, Tensor, Tensor]]  # per layer: (centres, weight, bias) of the norm the heads read through
    eps: float  # the norms' epsilon
    notes: list[str] = field(default_factory=list)  # what was folded and centred, in words
    rotary: bool = False  # rotary positions: W_Q W_K^T is not the bilinear form the head applies

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[-1]

    def head(self, label: str | tuple[int, int]) -> tuple[int, int]:
        """``'L1H2'``, ``'1.2'`` or ``(1, 2)`` -> ``(1, 2)``; a head the model lacks is a ValueError."""
        return parse_head(label, self.n_layers, self.n_heads)


def norm_params(norm, d_model: int, device) -> tuple[bool, Float[Tensor, " d_model"], Float[Tensor, " d_model"]]:
    """``(centres, weight, bias)`` of a norm module as it acts: LayerNorm centres, RMSNorm does not; Gemma's
    ``1 +`` offset included; a missing weight is ones, a missing bias zeros."""
    centres = not bool(getattr(norm, "uses_rms_norm", False))
    weight = getattr(norm, "weight", None)
    weight = torch.ones(d_model, device=device) if not isinstance(weight, Tensor) else (
        weight.detach().float() + (1.0 if getattr(norm, "uses_weight_offset", False) else 0.0))
    bias = getattr(norm, "bias", None)
    bias = torch.zeros(d_model, device=device) if not isinstance(bias, Tensor) else bias.detach().float()
    return centres, weight, bias


def _bias(model, name: str, weight: Tensor) -> Float[Tensor, "layer head d_head"]:
    """A stacked attention bias, or zeros for a bias-free checkpoint (Gemma; the bridge raises AttributeError)."""
    try:
        return getattr(model, name).detach().float()
    except AttributeError:
        return torch.zeros(weight.shape[0], weight.shape[1], weight.shape[-1], device=weight.device)


def _per_query_head(w: Tensor, n_heads: int) -> Tensor:
    """[layer, kv_head, ...] -> [layer, head, ...]: each K/V head repeated for the query heads that share it."""
    return w.repeat_interleave(n_heads // w.shape[1], dim=1) if w.shape[1] != n_heads else w


def _centre(w: Tensor, dim: int) -> Tensor:
    return w - w.mean(dim, keepdim=True)


@torch.no_grad()
def circuit_weights(model) -> CircuitWeights:
    """Fold each layer's ``ln1`` into ``W_Q``/``W_K``/``W_V`` (weight; bias into ``b_Q``/``b_K``), ``ln_final``'s
    weight into ``W_U``, and for LayerNorm centre reading and writing weights along ``d_model``. ``notes`` says
    what was done. Reads the model's raw weights: call it on a model loaded without ``fold_weights``."""
    cfg = model.cfg
    if hasattr(model.blocks[0], "ln1_post") or getattr(cfg, "use_normalization_before_and_after", False):
        raise ValueError("circuit_weights: this model has post-attention norms (ln1_post, as Gemma 2 and 3 do): "
                         "each head's output is normalised again before it reaches the residual "
                         "stream, so W_O (and every composition through it) is not what the head writes. Use a "
                         "pre-norm model such as GPT-2 or the organism.")
    device = model.W_E.device
    n_heads = cfg.n_heads
    has_pos = getattr(cfg, "positional_embedding_type", "standard") == "standard"
    raw = {n: getattr(model, n).detach().float() for n in ("W_Q", "W_K", "W_V", "W_O")}
    raw["b_Q"], raw["b_K"] = _bias(model, "b_Q", raw["W_Q"]), _bias(model, "b_K", raw["W_K"])
    raw = {n: _per_query_head(t, n_heads) for n, t in raw.items()}
    ln1 = [norm_params(model.blocks[layer].ln1, cfg.d_model, device) for layer in range(cfg.n_layers)]
    centres = ln1[0][0]
    read_w = torch.stack([w for _, w, _ in ln1])[:, None, :, None]  # [layer, 1, d_model, 1]
    read_b = torch.stack([b for _, _, b in ln1])  # [layer, d_model]
    folded = {n: raw[n] * read_w for n in ("W_Q", "W_K", "W_V")}
    b_q = raw["b_Q"] + torch.einsum("lm,lhmd->lhd", read_b, raw["W_Q"])
    b_k = raw["b_K"] + torch.einsum("lm,lhmd->lhd", read_b, raw["W_K"])
    fcentres, fweight, _ = norm_params(model.ln_final, cfg.d_model, device)
    w_u = model.W_U.detach().float() * fweight[:, None]
    w_e, w_o = model.W_E.detach().float(), raw["W_O"]
    w_pos = model.W_pos.detach().float() if has_pos else None
    norm_name = "LayerNorm" if centres else "RMSNorm"
    notes = [f"{norm_name} weight of each block's ln1 folded into W_Q, W_K, W_V (its bias into b_Q, b_K); "
             "ln_final's weight folded into W_U"]
    if centres:
        folded = {n: _centre(t, -2) for n, t in folded.items()}
        w_u = _centre(w_u, 0)
        w_e, w_o = _centre(w_e, -1), _centre(w_o, -1)
        w_pos = _centre(w_pos, -1) if w_pos is not None else None
        notes.append("LayerNorm centres: W_E, W_pos, W_O centred along d_model (writing), W_Q, W_K, W_V, W_U "
                     "centred along d_model (reading); no output changes")
    else:
        notes.append("RMSNorm does not centre: nothing centred along d_model")
    w_u = _centre(w_u, 1)
    notes.append("W_U centred over the vocabulary (every logit of a position shifts by one number: softmax and "
                 "argmax unchanged), as TransformerLens's compatibility mode does")
    if model.W_K.shape[1] != n_heads:
        notes.append(f"multi-query: {model.W_K.shape[1]} K/V head(s) shared by {n_heads} query heads, repeated "
                     "to every query head")
    notes.append(SCALE_NOTE)
    return CircuitWeights(W_E=w_e, W_pos=w_pos, W_Q=folded["W_Q"], W_K=folded["W_K"], W_V=folded["W_V"], W_O=w_o,
                          b_Q=b_q, b_K=b_k, W_U=w_u, ln1=ln1, eps=float(getattr(cfg, "eps", 1e-5)), notes=notes,
                          rotary=getattr(cfg, "positional_embedding_type", "standard") == "rotary")


def _check_weights(weights) -> CircuitWeights:
    if not isinstance(weights, CircuitWeights):
        raise ValueError(f"expected the CircuitWeights from mechlab.methods.circuits.circuit_weights(model); got "
                         f"{type(weights).__name__}. Call w = circuit_weights(model) once and pass w.")
    return weights


# ---------------------------------------------------------------------------------------------------------
# one head's OV and QK circuits


def head_ov(weights: CircuitWeights, head: str | tuple[int, int]) -> FactoredMatrix:
    """``W_V[h] @ W_O[h]`` as a ``FactoredMatrix`` [d_model, d_model] (rank <= d_head): x -> what the head writes."""
    layer, h = _check_weights(weights).head(head)
    return FactoredMatrix(weights.W_V[layer, h], weights.W_O[layer, h])


def head_qk(weights: CircuitWeights, head: str | tuple[int, int]) -> FactoredMatrix:
    """``W_Q[h] @ W_K[h].T`` as a ``FactoredMatrix`` [d_model, d_model]: ``x_query @ QK @ x_key.T`` is the
    attention score before the ``1/sqrt(d_head)`` and the biases.

    **Rotary models (Gemma, Llama): this is not the score.** The query and key are rotated by their positions
    before the dot product, so the real bilinear form is ``W_Q R(p_q - p_k) W_K^T``; ``head_qk`` ignores ``R``.
    ``composition_scores`` (Q, K) and ``positional_pattern`` refuse rotary models for that reason."""
    layer, h = _check_weights(weights).head(head)
    return FactoredMatrix(weights.W_Q[layer, h], weights.W_K[layer, h].T)


def _heads_in(weights: CircuitWeights, layer: int | None, heads) -> list[tuple[int, int]]:
    if heads is not None:
        if layer is not None:
            raise ValueError(f"got both layer={layer} and heads={list(heads)}: pass one (layer for all of a layer's "
                             "heads, heads for a list such as ['L2H0']).")
        return [weights.head(h) for h in heads]
    layers = range(weights.n_layers) if layer is None else [weights.head((layer, 0))[0]]
    return [(la, h) for la in layers for h in range(weights.n_heads)]


# ---------------------------------------------------------------------------------------------------------
# the full OV circuit: W_E @ W_V @ W_O @ W_U


@torch.no_grad()
def ov_copying_accuracy(
    weights: CircuitWeights,
    *,
    layer: int | None = None,
    heads: list[str] | None = None,
    tokens: Int[Tensor, " n"] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Labelled:
    """For each head, the fraction of source tokens ``t`` whose full OV circuit row ``W_E[t] @ OV @ W_U`` is
    largest at ``t`` itself (top-1 copying), computed ``batch_size`` rows at a time (never d_vocab x d_vocab).

    ``layer`` picks one layer's heads (default all heads), or ``heads`` a list like ``["L2H0"]``; ``tokens``
    restricts the source tokens (default the whole vocabulary). Returns ``Labelled`` over heads, unit
    "top-1 copying accuracy".
    """
    w = _check_weights(weights)
    chosen = _heads_in(w, layer, heads)
    d_vocab = w.W_E.shape[0]
    tokens = torch.arange(d_vocab, device=w.W_E.device) if tokens is None else torch.as_tensor(tokens)
    if tokens.ndim != 1 or tokens.dtype not in (torch.long, torch.int32) or not len(tokens) or \
            int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise ValueError(f"tokens must be a non-empty 1-d integer tensor of ids in 0..{d_vocab - 1}; got "
                         f"{tuple(tokens.shape)} {tokens.dtype}. Leave it None for the whole vocabulary.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive number of rows per batch.")
    tokens = tokens.long().to(w.W_E.device)
    hits = torch.zeros(len(chosen))
    bar = tqdm(total=len(chosen) * len(tokens), desc="full OV circuit, head x rows", disable=not progress)
    for i, (la, h) in enumerate(chosen):
        ou = w.W_O[la, h] @ w.W_U  # [d_head, d_vocab], once per head
        ev = w.W_E[tokens] @ w.W_V[la, h]  # [n, d_head]
        for start in range(0, len(tokens), batch_size):
            rows = ev[start:start + batch_size] @ ou  # [batch, d_vocab]
            hits[i] += float((rows.argmax(-1) == tokens[start:start + batch_size]).sum())
            bar.update(len(rows))
    bar.close()
    return Labelled(hits / len(tokens), [f"L{la}H{h}" for la, h in chosen], unit="top-1 copying accuracy",
                    axes=("head",), meta={"circuit": "W_E @ W_V @ W_O @ W_U (norms folded)", "n_tokens": len(tokens),
                                          "norm": SCALE_NOTE, "bias": COPYING_BIAS_NOTE})


@torch.no_grad()
def ov_eigen_copying_score(
    weights: CircuitWeights, *, layer: int | None = None, heads: list[str] | None = None
) -> Labelled:
    """``sum(eigenvalues) / sum(|eigenvalues|)`` of each head's full OV circuit ``W_E @ OV @ W_U``: +1 when every
    eigenvalue is positive (the head copies), -1 when all are negative (it suppresses). The d_vocab x d_vocab
    circuit has at most d_head non-zero eigenvalues, the same as its d_head x d_head ``BA`` product's."""
    w = _check_weights(weights)
    chosen = _heads_in(w, layer, heads)
    scores = []
    for la, h in chosen:
        eig = FactoredMatrix(w.W_E @ w.W_V[la, h], w.W_O[la, h] @ w.W_U).eigenvalues
        scores.append(float(eig.sum().real / eig.abs().sum()))
    return Labelled(torch.tensor(scores), [f"L{la}H{h}" for la, h in chosen], unit="eigenvalue copying score",
                    axes=("head",), meta={"circuit": "W_E @ W_V @ W_O @ W_U (norms folded)", "norm": SCALE_NOTE})


# ---------------------------------------------------------------------------------------------------------
# the positional QK circuit


@torch.no_grad()
def positional_pattern(weights: CircuitWeights, head: str | tuple[int, int], *, n_pos: int | None = None) -> Labelled:
    """The attention pattern head ``head`` would have from the positional embeddings alone.

    Each query and key position is ``W_pos[p]`` put through the head's own ``ln1`` *on its own* (centred, divided
    by its own size, weight and bias applied), as if the token embedding and earlier layers had written nothing;
    scores are ``(q @ k.T) / sqrt(d_head)`` with the query/key biases, causally masked, softmaxed over keys. For a
    layer-0 head this is exactly the model's pattern with the token embedding zeroed. Returns ``Labelled`` over
    query positions, axes (pos, key_pos), unit "attention probability"; ``meta["scores"]`` holds the scores.
    """
    w = _check_weights(weights)
    layer, h = w.head(head)
    if w.W_pos is None:
        raise ValueError("positional_pattern needs learned absolute positions (W_pos); this model has none (rotary "
                         "positions live inside the attention, not in the residual stream). Use a GPT-2-style model.")
    n_ctx = w.W_pos.shape[0]
    n_pos = n_ctx if n_pos is None else n_pos
    if not 1 <= n_pos <= n_ctx:
        raise ValueError(f"n_pos={n_pos}: expected 1..{n_ctx}, the positions this model has embeddings for.")
    centres, ln_w, ln_b = w.ln1[layer]
    pos = w.W_pos[:n_pos]  # already centred for LayerNorm
    normed = pos / (pos.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()  # the norm of W_pos alone
    # folded weights already carry ln_w; the ln bias went into b_Q/b_K
    q = normed @ w.W_Q[layer, h] + w.b_Q[layer, h]
    k = normed @ w.W_K[layer, h] + w.b_K[layer, h]
    scores = (q @ k.T) / w.d_head ** 0.5
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return Labelled(pattern.cpu(), [str(p) for p in range(n_pos)], unit="attention probability",
                    axes=("pos", "key_pos"),
                    meta={"head": f"L{layer}H{h}", "scores": scores.masked_fill(~causal, float("nan")).cpu(),
                          "norm": f"each W_pos row through L{layer}'s ln1 on its own (token embedding and earlier "
                                  f"layers left out); {'centred, ' if centres else ''}divided by its own size"})


# ---------------------------------------------------------------------------------------------------------
# composition between heads


def _factors(w: CircuitWeights, layer: int, kind: str) -> tuple[Tensor, Tensor]:
    """Per head of ``layer``, the two factors (A [head, d_model, d_head], B [head, d_head, d_model]) of the matrix
    a sender's output is multiplied into: OV for V, QK for Q, QK.T for K."""
    if kind == "V":
        return w.W_V[layer], w.W_O[layer]
    if kind == "Q":
        return w.W_Q[layer], w.W_K[layer].transpose(-1, -2)
    return w.W_K[layer], w.W_Q[layer].transpose(-1, -2)


def frobenius_composition(
    A1: Float[Tensor, "s d_model d_head"], B1: Float[Tensor, "s d_head d_model"],
    A2: Float[Tensor, "r d_model e"], B2: Float[Tensor, "r e d_model"],
) -> Float[Tensor, "s r"]:
    """``||(A1 B1)(A2 B2)||_F / (||A1 B1||_F ||A2 B2||_F)`` for every (s, r), from d_head-sized Gram matrices:
    ``||A M B||_F^2 = tr(M^T (A^T A) M (B B^T))`` with ``M = B1 A2``, so no d_model x d_model product is formed."""
    shapes = [tuple(t.shape) for t in (A1, B1, A2, B2)]
    if any(t.ndim != 3 for t in (A1, B1, A2, B2)) or A1.shape[:1] + A1.shape[2:] != B1.shape[:2] or \
            A2.shape[:1] + A2.shape[2:] != B2.shape[:2] or B1.shape[-1] != A2.shape[1] or A1.shape[1] != B2.shape[-1]:
        raise ValueError(f"frobenius_composition got shapes {shapes}; expected A1 [s, d_model, d_head], B1 [s, d_head, "
                         "d_model], A2 [r, d_model, e], B2 [r, e, d_model] (one sender and one receiver factor pair "
                         "per head, the same d_model).")
    g_a1, g_b1 = A1.transpose(-1, -2) @ A1, B1 @ B1.transpose(-1, -2)  # [s, d, d]
    g_a2, g_b2 = A2.transpose(-1, -2) @ A2, B2 @ B2.transpose(-1, -2)  # [r, e, e]
    m = torch.einsum("sdm,rme->srde", B1, A2)
    both = torch.einsum("srde,sdf,srfg,rge->sr", m, g_a1, m, g_b2).clamp_min(0).sqrt()
    n1 = (g_a1 * g_b1).sum((-1, -2)).clamp_min(0).sqrt()
    n2 = (g_a2 * g_b2).sum((-1, -2)).clamp_min(0).sqrt()
    return both / (n1[:, None] * n2[None, :])


@torch.no_grad()
def composition_scores(weights: CircuitWeights, kind: str, *, sender_layer: int, receiver_layer: int) -> Labelled:
    """Q-, K- or V-composition of every head of ``sender_layer`` into every head of a later ``receiver_layer``.

    The sender writes ``x @ OV_s``; the receiver reads it through its query (Q: ``OV_s @ QK_r``), its key
    (K: ``OV_s @ QK_r.T``) or its value (V: ``OV_s @ OV_r``). The score is that product's Frobenius norm divided
    by the two factors' norms. It is at most 1 (Cauchy-Schwarz) and reaches 1 only when both products are rank 1
    and aligned; two aligned rank-k maps with flat spectra (all k singular values equal) score ``1/sqrt(k)``
    (``1/sqrt(d_head)`` for full-rank heads; uneven spectra can score higher). Unrelated random directions score
    about ``1/sqrt(d_model)`` (compare with :func:`composition_baseline`, and, for a null that keeps each
    matrix's spectrum, :func:`rotated_composition_null`). Layers need
    not be adjacent: the residual stream carries layer 0's output to every later layer. Returns ``Labelled``
    over sender heads, axes (sender head, receiver head).
    """
    w = _check_weights(weights)
    kind = str(kind).upper()
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {COMPOSITION_KINDS} (query, key or value composition).")
    if kind in ("Q", "K") and w.rotary:
        raise ValueError(f"{kind}-composition on a rotary model: the query and key are rotated by position before "
                         "they meet, so W_Q W_K^T is not the bilinear form the head applies and the score would "
                         "mislead. Use V-composition, or a model with learned absolute positions (GPT-2).")
    ls, lr = w.head((sender_layer, 0))[0], w.head((receiver_layer, 0))[0]
    if lr <= ls:
        raise ValueError(f"receiver_layer={receiver_layer} is not after sender_layer={sender_layer}: a head can only "
                         "read what earlier layers wrote. Pick a receiver layer greater than the sender layer.")
    a2, b2 = _factors(w, lr, kind)
    values = frobenius_composition(w.W_V[ls], w.W_O[ls], a2, b2)
    return Labelled(values.cpu(), [f"L{ls}H{h}" for h in range(w.n_heads)], unit=f"{kind}-composition score",
                    axes=("head", "receiver"),
                    meta={"kind": kind, "receivers": [f"L{lr}H{h}" for h in range(w.n_heads)],
                          "norm": "norms folded into the reading weights, writing weights centred (circuit_weights)"})


@torch.no_grad()
def composition_baseline(weights: CircuitWeights, *, n_seeds: int = 10, seed: int = 0) -> Labelled:
    """Composition scores of random matrices with the real factors' shapes ([d_model, d_head] and [d_head,
    d_model], iid Gaussian), one layer's worth of sender x receiver pairs per seed.

    The three kinds have factors of the same shapes, so one baseline serves Q, K and V. Returns ``Labelled`` over
    seeds (values [seed, sender * receiver]); ``meta["mean"]`` and ``meta["sd"]`` are over all pairs of all seeds:
    a real pair's score above ``mean + 3 sd`` is unlikely to be chance.
    """
    w = _check_weights(weights)
    if n_seeds < 2:
        raise ValueError(f"n_seeds={n_seeds}: need at least 2 seeds to measure a spread.")
    d_model, n_heads, d_head = w.W_Q.shape[2], w.n_heads, w.d_head
    rows = []
    for s in range(n_seeds):
        gen = torch.Generator().manual_seed(seed + s)
        a1, b1, a2, b2 = (torch.randn(n_heads, *shape, generator=gen) for shape in
                          [(d_model, d_head), (d_head, d_model)] * 2)
        rows.append(frobenius_composition(a1, b1, a2, b2).flatten())
    values = torch.stack(rows)
    return Labelled(values, [f"seed {seed + s}" for s in range(n_seeds)], unit="composition score",
                    axes=("seed", "pair"),
                    meta={"mean": float(values.mean()), "sd": float(values.std()),
                          "seed_means": values.mean(1), "shapes": f"[{d_model}, {d_head}] x [{d_head}, {d_model}]"})


def haar_orthogonal(n: int, generator: torch.Generator) -> Float[Tensor, "n n"]:
    """A Haar-random ``n x n`` orthogonal matrix: QR of a Gaussian matrix with the signs of R's diagonal fixed."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q * torch.sign(torch.diagonal(r))[None, :]


@torch.no_grad()
def rotated_composition_null(
    weights: CircuitWeights, kind: str, *, sender_layer: int, receiver_layer: int, n_seeds: int = 20, seed: int = 0
) -> Labelled:
    """A null for :func:`composition_scores` that keeps every matrix's spectrum: per seed, the sender's write
    factor ``W_O`` is rotated by one Haar-random orthogonal ``R`` in d_model (``OV_s -> OV_s @ R``: the same
    singular values and norm, the alignment with the receiver destroyed), and the scores recomputed.

    Unlike :func:`composition_baseline` (iid Gaussian factors, flat-ish spectra), this asks the question the
    score is meant to answer: does the sender write *where* the receiver reads, beyond what its spectrum alone
    gives? Returns ``Labelled`` over sender heads, axes (head, receiver), values the real scores in null sds
    (``(real - mean) / sd`` per pair, sample sd over seeds); ``meta`` holds ``real``, ``mean``, ``sd`` (each
    [sender, receiver]) and ``null`` [seed, sender, receiver].
    """
    w = _check_weights(weights)
    if n_seeds < 2:
        raise ValueError(f"n_seeds={n_seeds}: need at least 2 seeds to measure a spread.")
    real = composition_scores(w, kind, sender_layer=sender_layer, receiver_layer=receiver_layer)
    kind = real.meta["kind"]
    ls, lr = w.head((sender_layer, 0))[0], w.head((receiver_layer, 0))[0]
    a2, b2 = _factors(w, lr, kind)
    d_model = w.W_O.shape[-1]
    null = []
    for s in tqdm(range(n_seeds), desc=f"{kind}-composition null (rotations)", disable=n_seeds < 50):
        rot = haar_orthogonal(d_model, torch.Generator().manual_seed(seed + s)).to(w.W_O)
        null.append(frobenius_composition(w.W_V[ls], w.W_O[ls] @ rot, a2, b2).cpu())
    null = torch.stack(null)
    mean, sd = null.mean(0), null.std(0)
    return Labelled((real.values - mean) / sd, real.labels, unit=f"{kind}-composition, sds above the rotated null",
                    axes=("head", "receiver"),
                    meta={"kind": kind, "receivers": real.meta["receivers"], "real": real.values, "mean": mean,
                          "sd": sd, "null": null, "n_seeds": n_seeds,
                          "null_kind": "sender's W_O rotated by Haar-random orthogonal matrices in d_model"})


def all_compositions(weights: CircuitWeights, kind: str) -> dict[tuple[int, int], Labelled]:
    """:func:`composition_scores` for every (sender layer, later receiver layer) pair, keyed by the two layers."""
    w = _check_weights(weights)
    return {(ls, lr): composition_scores(w, kind, sender_layer=ls, receiver_layer=lr)
            for ls in range(w.n_layers) for lr in range(ls + 1, w.n_layers)}


__all__ = ["CITATIONS", "COMPOSITION_KINDS", "GPT2_INDUCTION_CIRCUIT", "CircuitWeights", "all_compositions",
           "circuit_weights", "composition_baseline", "composition_scores", "frobenius_composition",
           "haar_orthogonal", "head_ov", "head_qk", "norm_params", "ov_copying_accuracy", "ov_eigen_copying_score",
           "positional_pattern", "rotated_composition_null"]
