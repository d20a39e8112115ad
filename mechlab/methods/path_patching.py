"""Path patching: the effect of one sender head on chosen receivers *through the direct path only*.

Activation patching a head's ``z`` changes everything downstream of it. Path patching asks a narrower question: how
much of the metric moves because the sender's output reaches the **receivers** directly, with every other path held
at its clean value. The receivers are

    "logits"               the unembedding, read through the residual stream (the sender's direct path to the output)
    heads + "q"/"k"/"v"    the query / key / value inputs of receiver heads in later layers

The algorithm (noising: corrupted sender values into the clean run; rows are senders, each patched alone):

    1. run the clean and the corrupted prompts once, caching only the head outputs ``z`` (and, if frozen, the MLP
       outputs and the final norm's scale);
    2. patched run on the clean prompts: the sender's ``z`` takes its corrupted value, **every other head's ``z`` is
       frozen at its clean value**, and the MLPs are frozen at their clean outputs (``freeze_mlps=True``, the
       default) or recomputed (``freeze_mlps=False``);
    3. receivers = "logits": the metric of that patched run is the answer (``freeze_final_scale=True`` also
       freezes the final norm's scale at the clean run's, which makes the result exactly the sender's DLA
       difference); receivers = heads: record the receivers' q / k / v inputs in the patched run, then run the
       clean prompts once more with **only** those inputs patched in and everything else recomputed, and read the
       metric.

Freezing a head's ``z`` freezes its output ``z @ W_O + b_O`` (linear), so step 2 holds every head-to-head path at
its clean value: the receivers see the clean residual stream plus the sender's change (plus what the recomputed MLPs
make of it, when they are not frozen).

What each convention measures. Wang et al. (2022, "Interpretability in the Wild") freeze the other *attention heads*
at their clean values; replications of their IOI work (ARENA's, TransformerLens demos) let the MLPs recompute.
``freeze_mlps=False`` is that: the edge sender -> receiver then includes every path sender -> MLP(s) -> receiver,
so an MLP that reads the sender (or repairs its loss) is counted inside the edge. ``freeze_mlps=True`` is the strict
edge of Goldowsky-Dill et al. (2023, "Localizing model behavior with path patching"): only the path sender ->
residual stream -> receiver carries the corrupted value, every other path (through MLPs too) sees clean inputs.
The norms before the receivers (and, for "logits", the final norm unless ``freeze_final_scale``) are recomputed in
both: their scale is a function of the whole residual stream, so it moves a little with the sender.

Multi-query / grouped-query models (Gemma has one K/V head per layer): a receiver's key and value come from the
K/V head its group shares, so a ``"k"`` or ``"v"`` receiver patches that shared K/V head, which changes every query
head of the group. The labels in ``meta["receiver_slots"]`` say which K/V heads were patched (``L{l}KV{g}``).
Queries are per head in every model.

Speed: senders are batched like ``mechlab.core.runs.run_patches``: copies of the clean batch, one per sender, are
stacked along the batch axis, ``max_batch`` sequences per forward pass, with a tqdm bar.

Example::

    from mechlab.core.loading import load_model
    from mechlab.core.runs import logit_diff_metric
    from mechlab.methods.path_patching import path_patching
    model = load_model("tiny-gpt2", verbose=False)
    clean, corrupted = model.to_tokens(["ab ab"]), model.to_tokens(["ab cd"])
    metric = logit_diff_metric(torch.tensor([98]), torch.tensor([99]))
    to_logits = path_patching(model, clean, corrupted, metric)                       # every head -> logits
    to_queries = path_patching(model, clean, corrupted, metric, senders=["L0H1", "L0H2"], receivers=["L1H0"],
                               receiver_input="q", effect=True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name, n_heads_for, parse_head
from mechlab.core.results import Labelled
from mechlab.core.runs import Metric, as_token_pair, auto_max_batch, cache_acts, metric_per_copy

LOGITS = "logits"
RECEIVER_INPUTS = ("q", "k", "v")
# TL4 warns once when a hook edits a norm's scale (its output is then rebuilt from the hooked values); expected here
_SCALE_WARNING = ".*edited hook_scale.*"

Head = tuple[int, int]

# GPT-2 small's IOI head classes as published (Wang et al. 2022, "Interpretability in the Wild"), L{layer}H{head}
GPT2_IOI_CLASSES = {"L9H6": "name mover", "L9H9": "name mover", "L10H0": "name mover",
                    "L10H7": "negative name mover", "L11H10": "negative name mover",
                    "L7H3": "S-inhibition", "L7H9": "S-inhibition", "L8H6": "S-inhibition", "L8H10": "S-inhibition",
                    "L5H5": "induction", "L6H9": "induction", "L0H1": "duplicate-token", "L3H0": "duplicate-token",
                    "L4H11": "previous-token"}


def _is_head(item) -> bool:
    return isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2
                                     and all(isinstance(x, int) for x in item))


def _parse_heads(model, items, what: str) -> list[Head]:
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    try:
        return [parse_head(item, n_layers, n_heads) for item in items]
    except ValueError as err:
        raise ValueError(f"{what}: {err} Pass heads as 'L{{l}}H{{h}}' labels (e.g. 'L1H0'), '1.0' or (1, 0), "
                         f"with layer < {n_layers} and head < {n_heads}.") from None


def _sender_groups(model, senders, earliest_receiver: int) -> list[list[Head]]:
    """Each row's senders: a head alone, or a list of heads patched together."""
    if senders is None:
        return [[(layer, h)] for layer in range(earliest_receiver) for h in range(model.cfg.n_heads)]
    if _is_head(senders):
        senders = [senders]
    if not isinstance(senders, Sequence) or len(senders) == 0:
        raise ValueError(f"senders={senders!r}: expected None (every head before the receivers), a list of heads "
                         "(each patched alone, e.g. ['L0H1', 'L1H2']), or a list of lists of heads (each list patched "
                         "together).")
    groups = []
    for item in senders:
        group = _parse_heads(model, [item] if _is_head(item) else list(item), "senders")
        if not group:
            raise ValueError("senders: an empty group of heads; every row needs at least one sender head.")
        groups.append(group)
    return groups


def _label(group: list[Head]) -> str:
    return "+".join(f"L{layer}H{h}" for layer, h in group)


def _receiver_slots(model, receivers: list[Head], inputs: tuple[str, ...]) -> dict[str, dict[int, list[int]]]:
    """``{kind: {layer: [index on the hook's head axis]}}``; K/V receivers map to the K/V head they read."""
    slots: dict[str, dict[int, list[int]]] = {}
    for kind in inputs:
        per_group = model.cfg.n_heads // n_heads_for(model, kind)
        for layer, h in receivers:
            idx = slots.setdefault(kind, {}).setdefault(layer, [])
            if h // per_group not in idx:
                idx.append(h // per_group)
    return slots


def _slot_labels(model, slots) -> list[str]:
    out = []
    for kind, layers in slots.items():
        shared = kind in ("k", "v") and n_heads_for(model, kind) != model.cfg.n_heads
        for layer, idx in sorted(layers.items()):
            out += [f"L{layer}{'KV' if shared else 'H'}{i} {kind}" for i in sorted(idx)]
    return out


def _check_inputs(receiver_input) -> tuple[str, ...]:
    inputs = (receiver_input,) if isinstance(receiver_input, str) else tuple(receiver_input)
    bad = [x for x in inputs if x not in RECEIVER_INPUTS]
    if not inputs or bad:
        raise ValueError(f"receiver_input={receiver_input!r}; expected one of {RECEIVER_INPUTS} or a tuple of them "
                         "(e.g. ('k', 'v')): the receiver heads' query, key or value inputs.")
    return inputs


def _freeze_z_hook(clean_z: Tensor, corr_z: Tensor, rows: list[list[int]], batch: int):
    """z := clean everywhere, except copy i's sender heads ``rows[i]`` := corrupted."""
    def hook(act, hook):
        out = clean_z.to(act.dtype).repeat(len(rows), 1, 1, 1)
        for i, heads in enumerate(rows):
            if heads:
                out[i * batch:(i + 1) * batch, :, heads] = corr_z[:, :, heads].to(act.dtype)
        return out
    return hook


def _constant_hook(value: Tensor, copies: int):
    def hook(act, hook):
        return value.to(act.dtype).repeat(copies, *([1] * (value.ndim - 1)))
    return hook


def _record_hook(store: dict, name: str):
    def hook(act, hook):
        store[name] = act.detach().clone()
    return hook


def _write_slots_hook(recorded: Tensor, idx: list[int]):
    def hook(act, hook):
        act = act.clone()
        act[:, :, idx] = recorded[:, :, idx].to(act.dtype)
        return act
    return hook


@torch.no_grad()
def path_patching(
    model,
    clean: Int[Tensor, "batch pos"] | Sequence[str],
    corrupted: Int[Tensor, "batch pos"] | Sequence[str],
    metric: Metric,
    *,
    senders=None,
    receivers: str | Sequence = LOGITS,
    receiver_input: str | Sequence[str] = "q",
    freeze_mlps: bool = True,
    freeze_final_scale: bool = False,
    effect: bool = False,
    max_batch: int | None = None,
    progress: bool = True,
) -> Labelled:
    """Path-patch each sender (corrupted ``z``) to ``receivers`` with every other path frozen; see the module doc.

    Args:
        model: a ``TransformerBridge``.
        clean, corrupted: prompts or token ids [batch, pos] that line up position by position.
        metric: ``metric(logits) -> [batch]``, e.g. ``logit_diff_metric``.
        senders: None (every head in a layer before the earliest receiver), a list of heads (``'L0H1'``, ``'0.1'``,
            ``(0, 1)``; one row each) or of lists of heads (patched together, labelled ``'L0H1+L0H2'``).
        receivers: ``"logits"`` or a list of receiver heads, all in layers after every sender.
        receiver_input: ``"q"``, ``"k"``, ``"v"`` or a tuple of them (head receivers only).
        freeze_mlps: True holds every MLP at its clean output (only the direct sender -> receiver path through the
            residual stream moves: Goldowsky-Dill et al.'s edge); False lets MLPs recompute (paths through MLPs
            count as part of the edge, as in common replications of Wang et al.).
        freeze_final_scale: ``"logits"`` only: hold the final norm's scale at the clean run's value.
        effect: subtract the clean run's metric (noising: an important path gives a negative value).

    Returns:
        ``Labelled`` over the senders, values [sender] (mean over prompts); ``meta["per_prompt"]`` is [sender,
        batch], and ``meta`` records the receivers, the freezing choices and the clean / corrupted metrics.
    """
    clean, corrupted = as_token_pair(model, clean, corrupted)
    batch, n_pos = clean.shape
    n_layers = model.cfg.n_layers
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != LOGITS:
        raise ValueError(f"receivers={receivers!r}; expected 'logits' or a list of receiver heads such as "
                         "['L2H0', 'L2H1'].")
    if not to_logits:
        if _is_head(receivers):
            receivers = [receivers]
        recv = _parse_heads(model, list(receivers), "receivers")
        if not recv:
            raise ValueError("receivers is an empty list; pass 'logits' or at least one receiver head.")
        inputs = _check_inputs(receiver_input)
        slots = _receiver_slots(model, recv, inputs)
        if freeze_final_scale:
            raise ValueError("freeze_final_scale=True only applies to receivers='logits'; the final run of a "
                             "head-receiver patch is a clean forward pass. Drop the flag.")
    groups = _sender_groups(model, senders, n_layers if to_logits else min(layer for layer, _ in recv))
    if not groups:
        raise ValueError("no senders: the receivers are in layer 0, which no head comes before. Choose receivers in "
                         "a later layer.")
    if not to_logits:
        first = min(layer for layer, _ in recv)
        late = [_label(g) for g in groups if max(layer for layer, _ in g) >= first]
        if late:
            raise ValueError(f"senders {late[:4]} are not earlier than every receiver (the earliest receiver is in "
                             f"layer {first}); a head can only reach heads of later layers. Choose senders in layers "
                             f"0..{first - 1} or receivers in later layers.")
    last = n_layers if to_logits else max(layer for layer, _ in recv)
    start = min(layer for g in groups for layer, _ in g)
    frozen = range(start, last)  # layers whose heads (and MLPs) are held; earlier ones are clean anyway
    z_names = {hook_name("z", layer) for layer in frozen}
    clean_names = set(z_names) | ({hook_name("mlp_out", layer) for layer in frozen} if freeze_mlps else set())
    if to_logits and freeze_final_scale:
        clean_names.add(FINAL_NORM_SCALE)
    sender_layers = {layer for g in groups for layer, _ in g}
    clean_cache, m_clean = cache_acts(model, clean, clean_names, metric)
    corr_cache, m_corr = cache_acts(model, corrupted, {hook_name("z", layer) for layer in sender_layers}, metric)

    max_batch = auto_max_batch(model, n_pos) if max_batch is None else max_batch
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected a positive integer (sequences per forward pass).")
    per_pass = max(1, max_batch // batch)
    chunks = [groups[i:i + per_pass] for i in range(0, len(groups), per_pass)]
    rows = []
    target = "logits" if to_logits else "/".join(inputs)
    desc = f"path patching -> {target} ({len(groups)} senders, {per_pass} per pass)"
    for chunk in tqdm(chunks, desc=desc, disable=not progress):
        copies = len(chunk)
        hooks = []
        for layer in frozen:
            name = hook_name("z", layer)
            heads = [[h for sl, h in g if sl == layer] for g in chunk]
            corr = corr_cache.get(name, clean_cache[name])
            hooks.append((name, _freeze_z_hook(clean_cache[name], corr, heads, batch)))
            if freeze_mlps:
                name = hook_name("mlp_out", layer)
                hooks.append((name, _constant_hook(clean_cache[name], copies)))
        tokens = clean.repeat(copies, 1)
        if to_logits:
            if freeze_final_scale:
                hooks.append((FINAL_NORM_SCALE, _constant_hook(clean_cache[FINAL_NORM_SCALE], copies)))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SCALE_WARNING)
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        else:
            store: dict[str, Tensor] = {}
            names = [hook_name(kind, layer) for kind, layers in slots.items() for layer in layers]
            model.run_with_hooks(tokens, fwd_hooks=hooks + [(n, _record_hook(store, n)) for n in names])
            writes = [(hook_name(kind, layer), _write_slots_hook(store[hook_name(kind, layer)], idx))
                      for kind, layers in slots.items() for layer, idx in layers.items()]
            logits = model.run_with_hooks(tokens, fwd_hooks=writes)
        rows.append(metric_per_copy(metric, logits, batch))
    per_prompt = torch.cat(rows)
    if effect:
        per_prompt = per_prompt - m_clean[None]
    meta = {"method": "path patching", "direction": "noising (corrupted senders into the clean run)",
            "receivers": LOGITS if to_logits else [f"L{layer}H{h}" for layer, h in recv],
            "receiver_input": None if to_logits else list(inputs),
            "receiver_slots": None if to_logits else _slot_labels(model, slots),
            "mlps": "frozen at clean" if freeze_mlps else "recomputed",
            "final_scale": ("frozen at clean" if freeze_final_scale else "recomputed") if to_logits else None,
            "metric_clean": float(m_clean.mean()), "metric_corrupted": float(m_corr.mean()),
            "per_prompt": per_prompt.cpu(),
            "normalisation": ("mean metric(patched) - mean metric(clean)" if effect
                              else "mean metric on the patched run")}
    unit = "metric change" if effect else "metric"
    return Labelled(per_prompt.mean(1).cpu(), [_label(g) for g in groups], unit=unit, axes=("component",), meta=meta)


__all__ = ["GPT2_IOI_CLASSES", "LOGITS", "RECEIVER_INPUTS", "path_patching"]
