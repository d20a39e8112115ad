"""Hook names for the activations mechlab's methods read and patch, checked against the model.

Activation kinds and their TransformerLens 4 hook (``L`` is the layer) and per-layer shape:

    resid_pre   blocks.L.hook_resid_pre   [batch, pos, d_model]
    resid_mid   blocks.L.hook_resid_mid   [batch, pos, d_model]
    resid_post  blocks.L.hook_resid_post  [batch, pos, d_model]
    attn_out    blocks.L.hook_attn_out    [batch, pos, d_model]
    mlp_out     blocks.L.hook_mlp_out     [batch, pos, d_model]
    z           blocks.L.attn.hook_z      [batch, pos, head, d_head]
    q           blocks.L.attn.hook_q      [batch, pos, head, d_head]
    k, v        blocks.L.attn.hook_k/v    [batch, pos, kv_head, d_head]  (kv_head = 1 for multi-query Gemma)
    pattern     blocks.L.attn.hook_pattern [batch, head, query_pos, key_pos]

Labels: ``row_labels`` names the rows of a per-layer or per-head result (``L{l} resid_pre``, ``L{l} attn``,
``L{l} mlp``, ``L{l}H{h}``, ``L{l}KV{g}``); ``head_labels`` lists every head; ``parse_head`` reads one back.

Example::

    from mechlab.core.activations import hook_name, names_filter
    hook_name("z", 3)                      # 'blocks.3.attn.hook_z'
    f = names_filter(model, ["z"], layers=[0, 1])
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence

from torch import bool as torch_bool

HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "z": "blocks.{}.attn.hook_z",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "pattern": "blocks.{}.attn.hook_pattern",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
}
HEAD_KINDS = ("z", "q", "k", "v")  # per-head activations: [batch, pos, head, d_head]
# what exact patching, AtP and IG can intervene on: one row per layer, or one per (query or K/V) head
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v")
FINAL_NORM_SCALE = "ln_final.hook_scale"
_ROW_NAMES = {"resid_pre": "resid_pre", "attn_out": "attn", "mlp_out": "mlp"}


def check_kind(kind: str, kinds: Iterable[str] | None = None) -> str:
    """``kind`` if it is one of ``kinds`` (default: every kind with a hook), else a ValueError listing them."""
    allowed = list(HOOKS) if kinds is None else list(kinds)
    if kind not in allowed:
        raise ValueError(f"unknown activation kind {kind!r}; expected one of {allowed}.")
    return kind


def _as_index(x) -> int | None:
    """``x`` as a plain int when it is an integer (int, numpy or 0-d torch integer), else None; bools are not."""
    if isinstance(x, bool) or getattr(x, "dtype", None) == torch_bool:
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def check_layer(model, layer: int) -> int:
    """``layer`` as an index in 0..n_layers-1 (negative counts from the end); refuses floats and bools."""
    n = model.cfg.n_layers
    index = _as_index(layer)
    if index is None or not (-n <= index < n):
        raise ValueError(f"layer {layer!r} ({type(layer).__name__}) does not exist: this model has integer layers "
                         f"0..{n - 1}. Pass an int, e.g. layer=1.")
    return index % n


def layer_list(model, layers: Iterable[int] | None) -> list[int]:
    """Every layer when ``layers`` is None, else each one checked by ``check_layer``."""
    if layers is None:
        return list(range(model.cfg.n_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"layers={layers!r}: expected a list of layer indices such as [0, 1], or None for every "
                         f"layer (this model has layers 0..{model.cfg.n_layers - 1}).")
    out = [check_layer(model, x) for x in layers]
    if not out:
        raise ValueError("layers=[] selects no layer, so there is nothing to compute; pass None for every layer, "
                         "or a list such as [0, 1].")
    return out


def hook_name(kind: str, layer: int, model=None) -> str:
    """The hook name of ``kind`` at ``layer`` (checked against ``model`` when given)."""
    check_kind(kind)
    if model is not None:
        layer = check_layer(model, layer)
    return HOOKS[kind].format(layer)


def n_heads_for(model, kind: str) -> int:
    """Heads of this activation kind: K/V heads for k and v (1 in multi-query models), query heads otherwise."""
    if kind in ("k", "v"):
        return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    return int(model.cfg.n_heads)


def row_labels(model, kind: str, layers: Sequence[int]) -> list[str]:
    """Row labels of ``kind``: ``L{l} resid_pre`` / ``L{l} attn`` / ``L{l} mlp``, ``L{l}H{h}``, or ``L{l}KV{g}``
    for the K/V heads of a multi-query model (shared by exact patching, AtP and IG)."""
    check_kind(kind, PATCH_KINDS)
    if kind not in HEAD_KINDS:
        return [f"L{layer} {_ROW_NAMES[kind]}" for layer in layers]
    n = n_heads_for(model, kind)
    tag = "KV" if kind in ("k", "v") and n != model.cfg.n_heads else "H"
    return [f"L{layer}{tag}{h}" for layer in layers for h in range(n)]


def names_filter(model, kinds: Iterable[str], layers: Iterable[int] | None = None,
                 extra: Iterable[str] = ()) -> Callable[[str], bool]:
    """A ``names_filter`` for ``run_with_cache`` that keeps only ``kinds`` at ``layers`` (+ ``extra`` names)."""
    layers = range(model.cfg.n_layers) if layers is None else [check_layer(model, layer) for layer in layers]
    wanted = {hook_name(kind, layer) for kind in kinds for layer in layers} | set(extra)
    return lambda name: name in wanted


def head_labels(n_layers: int, n_heads: int) -> list[str]:
    """``['L0H0', 'L0H1', ..., 'L{n_layers-1}H{n_heads-1}']`` in layer-major order."""
    return [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]


def parse_head(label: str | tuple[int, int], n_layers: int, n_heads: int) -> tuple[int, int]:
    """``'L9H9'``, ``'9.9'`` or ``(9, 9)`` -> ``(9, 9)``, checked against the model's size."""
    if isinstance(label, tuple):
        parts = [_as_index(x) for x in label]
        if len(label) != 2 or None in parts:
            raise ValueError(f"head {label!r} is not a (layer, head) pair of integers; write it as (9, 9) with two "
                             "ints, or as 'L9H9'.")
        layer, head = parts
    elif not isinstance(label, str):
        raise ValueError(f"head {label!r} ({type(label).__name__}) is not understood; write it as 'L9H9', '9.9' or "
                         "(9, 9).")
    else:
        text = str(label).strip().upper()
        try:
            if text.startswith("L") and "H" in text:
                layer, head = (int(x) for x in text[1:].split("H"))
            else:
                layer, head = (int(x) for x in text.split("."))
        except ValueError:
            raise ValueError(f"head {label!r} is not understood; write it as 'L9H9', '9.9' or (9, 9).") from None
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(f"head {label!r} does not exist: this model has layers 0..{n_layers - 1} and heads "
                         f"0..{n_heads - 1} per layer.")
    return layer, head
