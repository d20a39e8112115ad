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

Example::

    from mechlab.hooks import hook_name, names_filter
    hook_name("z", 3)                      # 'blocks.3.attn.hook_z'
    f = names_filter(model, ["z"], layers=[0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
FINAL_NORM_SCALE = "ln_final.hook_scale"


def check_kind(kind: str) -> str:
    if kind not in HOOKS:
        raise ValueError(f"unknown activation kind {kind!r}; expected one of {sorted(HOOKS)}.")
    return kind


def check_layer(model, layer: int) -> int:
    n = model.cfg.n_layers
    if not isinstance(layer, int) or not (-n <= layer < n):
        raise ValueError(f"layer {layer!r} does not exist: this model has layers 0..{n - 1}.")
    return layer % n


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


def names_filter(model, kinds: Iterable[str], layers: Iterable[int] | None = None,
                 extra: Iterable[str] = ()) -> Callable[[str], bool]:
    """A ``names_filter`` for ``run_with_cache`` that keeps only ``kinds`` at ``layers`` (+ ``extra`` names)."""
    layers = range(model.cfg.n_layers) if layers is None else [check_layer(model, layer) for layer in layers]
    wanted = {hook_name(kind, layer) for kind in kinds for layer in layers} | set(extra)
    return lambda name: name in wanted
