"""Ablations: remove what a head or an MLP writes, three ways, and measure what the model loses.

Methods (``method``):

    zero      the head's ``z`` (or the MLP's output) is set to 0: simple, but 0 may be far from anything the model
              ever sees, so later layers can react to the oddity rather than to the missing information.
    mean      it is set to its mean over a ``reference`` batch, position by position (the reference must have the
              same number of positions as the ablated run; use prompts of one template).
    resample  it is set to its value on ``reference`` prompts, prompt by prompt (the reference has the ablated
              run's shape; e.g. the same prompts with other names, or the batch shuffled).

Components are head labels ``L{l}H{h}`` (the head's ``hook_z`` slice) or ``L{l} mlp`` (``hook_mlp_out``).
A head's ablation never touches the other heads of its layer.

Example::

    from mechlab.core.loading import load_model
    from mechlab.methods.ablation import ablation_hooks, ablation_scan
    model = load_model("tiny-gpt2", verbose=False)
    tokens = model.to_tokens(["ab ab ab"])
    with model.hooks(fwd_hooks=ablation_hooks(model, ["L1H2"], method="zero")):
        logits = model(tokens)
    scan = ablation_scan(model, tokens, lambda lg: lg[:, -1, 5], method="zero")   # every head and MLP alone
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.core.activations import check_layer, hook_name, parse_head
from mechlab.core.results import Labelled
from mechlab.core.runs import Metric, Patch, cache_acts, cache_resume, check_tokens, run_patches

METHODS = ("zero", "mean", "resample")


def parse_component(model, label: str | tuple[int, int]) -> Patch:
    """``'L1H2'`` or ``(1, 2)`` -> the patch of head 2's z at layer 1; ``'L1 mlp'`` -> layer 1's MLP output (all
    positions)."""
    if isinstance(label, tuple):
        try:
            layer, head = parse_head(label, model.cfg.n_layers, model.cfg.n_heads)
        except ValueError as err:
            raise ValueError(f"component {label!r}: {err} Components are heads 'L{{l}}H{{h}}' or (l, h), or MLPs "
                             "'L{l} mlp'.") from None
        return Patch(hook_name("z", layer), head)
    if not isinstance(label, str):
        raise ValueError(f"component {label!r} ({type(label).__name__}) is not understood; components are heads "
                         "'L{l}H{h}' or (l, h), or MLPs 'L{l} mlp', e.g. 'L1H2' or 'L3 mlp'.")
    text = label.strip()
    if text.lower().endswith("mlp"):
        layer_text = text[:-3].strip().upper().removeprefix("L")
        if not layer_text.isdigit():
            raise ValueError(f"component {label!r} is not understood; write an MLP as 'L{{layer}} mlp', e.g. 'L3 mlp'.")
        layer = int(layer_text)
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"component {label!r} does not exist: this model has layers 0..{model.cfg.n_layers - 1}.")
        return Patch(hook_name("mlp_out", check_layer(model, layer)))
    try:
        layer, head = parse_head(text, model.cfg.n_layers, model.cfg.n_heads)
    except ValueError as err:
        raise ValueError(f"component {label!r}: {err} Components are heads 'L{{l}}H{{h}}' or MLPs 'L{{l}} mlp'.") \
            from None
    return Patch(hook_name("z", layer), head)


def _component_list(components) -> list:
    """One label (a string or an (l, h) tuple) or a list (or tuple of strings) of them -> a non-empty list."""
    one_head = isinstance(components, tuple) and not any(isinstance(c, (str, tuple)) for c in components)
    out = [components] if isinstance(components, str) or one_head else list(components)
    if not out:
        raise ValueError("no components were given; pass labels such as ['L1H2', 'L0 mlp'], or None for all.")
    return out


def all_components(model) -> list[str]:
    """Every head and MLP, layer by layer: ``L0H0 ... L0H{n-1}, L0 mlp, L1H0, ...``."""
    out = []
    for layer in range(model.cfg.n_layers):
        out += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)] + [f"L{layer} mlp"]
    return out


def ablation_sources(model, components: Sequence[str], method: str, tokens: Int[Tensor, "batch pos"],
                     reference: Int[Tensor, "batch pos"] | None) -> dict[str, Tensor]:
    """What each ablated hook is overwritten with, as full activations of ``tokens``' shape (see module docs)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}.")
    names = {parse_component(model, c).name for c in components}
    if method == "zero":
        shapes, _ = cache_acts(model, tokens[:1], names)
        return {n: torch.zeros(tokens.shape[0], *a.shape[1:], dtype=a.dtype, device=a.device)
                for n, a in shapes.items()}
    if reference is None:
        raise ValueError(f"method={method!r} needs reference tokens (the prompts whose activations replace the "
                         "ablated ones); pass reference=...")
    reference = check_tokens(model, reference, "reference")
    if method == "resample" and reference.shape != tokens.shape:
        raise ValueError(f"resample ablation needs reference tokens of the run's shape {tuple(tokens.shape)} (one "
                         f"reference prompt per prompt); got {tuple(reference.shape)}.")
    if method == "mean" and reference.shape[1] != tokens.shape[1]:
        raise ValueError(f"mean ablation averages the reference over prompts position by position, so it needs "
                         f"{tokens.shape[1]} positions like the run; got {reference.shape[1]}. Use prompts of one "
                         "template (or one length).")
    acts, _ = cache_acts(model, reference, names)
    if method == "resample":
        return acts
    return {n: a.float().mean(0, keepdim=True).to(a.dtype).expand(tokens.shape[0], *a.shape[1:])
            for n, a in acts.items()}


def ablation_hooks(model, components: Sequence[str], *, method: str = "zero",
                   reference: Int[Tensor, "batch pos"] | None = None,
                   tokens: Int[Tensor, "batch pos"] | None = None) -> list:
    """Forward hooks that ablate all ``components`` together; use them inside ``model.hooks(fwd_hooks=...)``.

    ``tokens`` (the prompts that will be run) are needed for mean and resample ablation, to check shapes and to
    build the replacement; zero ablation needs nothing.
    """
    components = _component_list(components)
    by_name: dict[str, list[Patch]] = {}
    for p in (parse_component(model, c) for c in components):
        by_name.setdefault(p.name, []).append(p)
    if tokens is None:
        if method != "zero":
            raise ValueError(f"method={method!r}: pass tokens= (the prompts you will run) with the reference.")
        return [(name, _zero_hook(items)) for name, items in by_name.items()]
    tokens = check_tokens(model, tokens, "tokens")
    sources = ablation_sources(model, components, method, tokens, reference)
    return [(name, _source_hook(items, sources[name])) for name, items in by_name.items()]


def _zero_hook(items: list[Patch]):
    def hook(act, hook):
        act = act.clone()
        for p in items:
            if p.head is None:
                act.zero_()
            else:
                act[:, :, p.head] = 0
        return act
    return hook


def _source_hook(items: list[Patch], source: Tensor):
    def hook(act, hook):
        if source.shape != act.shape:
            raise ValueError(f"ablation hook on {hook.name}: the run has shape {tuple(act.shape)} but the replacement "
                             f"was built for {tuple(source.shape)}; build the hooks with the tokens you run.")
        act = act.clone()
        for p in items:
            if p.head is None:
                act[:] = source
            else:
                act[:, :, p.head] = source[:, :, p.head].to(act.dtype)
        return act
    return hook


def ablation_scan(
    model,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    components: Sequence[str] | None = None,
    method: str = "zero",
    reference: Int[Tensor, "batch pos"] | None = None,
    effect: bool = True,
    max_batch: int | None = None,
    progress: bool = True,
) -> Labelled:
    """Ablate each component alone (all positions) and measure ``metric``, batched like activation patching.

    ``effect=True`` (default) reports mean metric(ablated) - mean metric(unablated); False the ablated mean.
    Returns ``Labelled`` over the components (default every head and MLP), unit "metric change" / "metric".
    """
    tokens = check_tokens(model, tokens, "tokens")
    components = all_components(model) if components is None else _component_list(components)
    patches = [parse_component(model, c) for c in components]
    components = [f"L{c[0]}H{c[1]}" if isinstance(c, tuple) else c for c in components]  # labels are strings
    sources = ablation_sources(model, components, method, tokens, reference)
    resume, _, base = cache_resume(model, tokens, range(model.cfg.n_layers), set(), metric)
    values = run_patches(model, tokens, patches, sources, metric, max_batch=max_batch, progress=progress,
                         desc=f"{method}-ablating", resume=resume).mean(1)  # each pass starts at its layer
    if effect:
        values = values - base.mean()
    return Labelled(values.cpu(), components, unit="metric change" if effect else "metric",
                    meta={"method": f"{method} ablation, one component at a time, all positions",
                          "metric_unablated": float(base.mean()),
                          "reference": "none" if method == "zero" else f"{method} over the reference prompts"})


__all__ = ["METHODS", "ablation_hooks", "ablation_scan", "ablation_sources", "all_components", "parse_component"]
