"""mechlab: the library behind a hands-on course in mechanistic interpretability.

Axis names, fixed once for the whole package (used in every jaxtyping signature and result label):

    batch     prompts in a batch
    pos       token positions (query positions where it matters)
    d_model   residual-stream width
    layer     transformer block index
    head      attention head index (query heads; multi-query models have fewer K/V heads)
    d_head    width of one head
    d_vocab   vocabulary size
    component a labelled list of residual-stream writers: ``embed``, ``pos_embed``, ``L{l}H{h}``,
              ``L{l} mlp``, ``L{l} resid_pre``, ``bias``

Direction words: "clean", "corrupted", "patched". Noising patches corrupted activations into the
clean run; denoising patches clean activations into the corrupted run.

Layers, one folder each; imports point down only (``tests/test_layout.py`` checks it):

    core      loading + preflight, tokens, results (Labelled), activations (kinds, hook names, labels), runs
              (the shared engine: Patch, Metric, cached runs, batched patched runs, token checks)
    data      seeded prompt and text generators (IOI, induction, PrOntoQA, skip-trigram, filler, text)
    models    unit 03's toy model and the organism (tokenizer, training recipe, checkpoint)
    methods   dla, patching, attribution (AtP, IG), ablation, self_repair, heads, generate
    cot       the unit 07 study: experiment runner, clean/corrupted pairs, analysis
    plot      figures from tensors + labels; never computes, never shows
    checks    exercise checkers, one module per unit
    course    what builds the course: exercises, runner, setup cell, the organism's model card

Importing ``mechlab`` is cheap and has no side effects; heavy submodules (torch, TransformerLens)
load on first use::

    import mechlab as ml
    model = ml.load_model("tiny-gpt2")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it (imported lazily so that `import mechlab` stays fast)
_LAZY = {
    "load_model": "mechlab.core.loading",
    "course_model": "mechlab.core.loading",
    "resolve_model_name": "mechlab.core.loading",
    "default_device": "mechlab.core.loading",
    "Labelled": "mechlab.core.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mechlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
