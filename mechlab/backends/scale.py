"""What each method costs at scale: memory on the machine that runs the model, and what comes back over the network.

A rough, stated model (orders of magnitude, not a profiler). For ``batch`` sequences of ``n_pos`` tokens, with
activations and weights in ``bytes_per`` bytes (2 for bf16) and logits in fp32:

    weights             n_params x bytes_per
    full cache          every activation TransformerLens caches per layer (resid pre / mid / post, attn_out,
                        mlp_out, q, k, v, z, the MLP's hidden layer before and after its non-linearity, attention
                        scores and pattern [head, pos, pos]) plus the logits: what ``run_with_cache`` without a
                        names filter keeps, and what a remote run would have to download
    narrow cache        z of every layer and resid_pre of every layer (what DLA and patching read)
    exact patching      weights + one forward pass's live activations for ``batch`` copies: about two layers'
                        worth plus the logits (a forward frees each layer's activations as it goes)
    AtP                 weights + what a forward pass keeps for its backward (every layer's activations, attention
                        pattern included, as eager attention stores it) for the baseline and target rows
    IG (steps)          AtP's activations for ``steps`` copies in one batch

Downloads (what a trace saves) are listed separately: DLA [component, batch], AtP [layer x head, pos], a full cache.

Example::

    from mechlab.backends.scale import LLAMA_31_70B, memory_per_method
    memory_per_method(LLAMA_31_70B, batch=8, n_pos=128).top(3)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechlab.core.preflight import GIB
from mechlab.core.results import Labelled


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a model's memory (from its config)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int  # query heads
    n_kv_heads: int  # key / value heads (fewer in grouped-query attention)
    d_head: int
    d_mlp: int  # the MLP's hidden width
    d_vocab: int
    n_params: int


# Meta's published config of Llama-3.1-70B (80 layers, d_model 8192, 64 query / 8 KV heads of 128, MLP 28672,
# vocabulary 128256; 70.6B parameters)
LLAMA_31_70B = ModelShape("meta-llama/Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, 70_553_706_496)


def _per_token_layer(s: ModelShape, n_pos: int) -> int:
    """Elements one token keeps per layer in a full cache."""
    d_qkvz = (2 * s.n_heads + 2 * s.n_kv_heads) * s.d_head
    return 5 * s.d_model + d_qkvz + 2 * s.d_mlp + 2 * s.n_heads * n_pos


def memory_per_method(shape: ModelShape, *, batch: int, n_pos: int, bytes_per: int = 2, steps: int = 16) -> Labelled:
    """GiB each method needs on the machine that runs the model (rows in the module docstring's order)."""
    for what, v in (("batch", batch), ("n_pos", n_pos), ("bytes_per", bytes_per), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what}={v!r}; expected a positive integer.")
    s, tokens = shape, batch * n_pos
    weights = s.n_params * bytes_per
    logits = tokens * s.d_vocab * 4
    layer = tokens * _per_token_layer(s, n_pos) * bytes_per  # one layer's activations for the batch
    full = s.n_layers * layer + logits
    narrow = s.n_layers * tokens * (s.n_heads * s.d_head + s.d_model) * bytes_per
    patching = weights + 2 * layer + logits
    atp = weights + 2 * (s.n_layers * layer + logits)  # baseline and target rows
    ig = weights + steps * (s.n_layers * layer + logits)
    values = torch.tensor([weights, full, narrow, patching, atp, ig], dtype=torch.float64) / GIB
    labels = ["weights", "full cache", "narrow cache (z + resid_pre)", "exact patching (one pass)",
              "AtP (forward + backward)", f"IG ({steps} steps, one batch)"]
    return Labelled(values, labels, unit="GiB", meta={"model": s.name, "batch": batch, "n_pos": n_pos,
                                                     "bytes_per": bytes_per})


def download_per_method(shape: ModelShape, *, batch: int, n_pos: int, bytes_per: int = 2) -> Labelled:
    """Bytes each method's trace saves, i.e. what NDIF sends back, with mechlab's nnsight backend."""
    s = shape
    components = 2 + s.n_layers * (s.n_heads + 1)
    dla = (components + 1) * batch * 4
    atp = s.n_layers * (s.n_heads + 3) * n_pos * 4  # z per head, resid_pre / attn_out / mlp_out per layer
    patching_per_patch = batch * 4
    full = (s.n_layers * batch * n_pos * _per_token_layer(s, n_pos) * bytes_per + batch * n_pos * s.d_vocab * 4)
    values = torch.tensor([dla, atp, patching_per_patch, full], dtype=torch.float64)
    return Labelled(values, ["DLA", "AtP (all kinds)", "exact patching (per patch)", "full cache"], unit="bytes",
                    meta={"model": s.name, "batch": batch, "n_pos": n_pos})


__all__ = ["LLAMA_31_70B", "ModelShape", "download_per_method", "memory_per_method"]
