"""Self-repair: resample-ablate a head and split what happens to the correct token's logit into exact parts.

Definitions (Rushing & Nanda 2024, "Explorations of Self-Repair in Language Models"). At every (prompt, position)
with a target token ``t`` (by default the actual next token):

    direct effect of c   c's write to the residual stream read along ``W_U[:, t]`` through the final norm, its
                         scale frozen at the **clean** run's ``ln_final.hook_scale``
                         (``mechlab.methods.dla.direct_effects``)
    Δlogit               logit_t(ablated run) - logit_t(clean run)
    direct               DE of the ablated head(s) in the ablated run - their DE in the clean run
    self-repair          Δlogit - direct: how much of the head's lost direct effect the rest of the model made up

Self-repair splits exactly (up to float rounding) into

    heads   the change in every other head's direct effect (clean scale): only later heads can change
    mlps    the change in every MLP's direct effect (clean scale)
    fixed   the change of embeddings and biases (zero for a head ablation: they do not depend on any head)
    norm    the final-norm remainder ``A_abl * (1 / s_abl - 1 / s_clean)``, with ``A_abl`` the ablated run's
            final residual read along the target (centred, times the norm weight). When a head's output goes
            missing the residual stream shrinks, its scale ``s`` drops and every surviving writer is read louder.

Because every direct effect uses the same clean scale, ``Δlogit = direct + heads + mlps + fixed + norm`` holds by
algebra: ``logit = A / s + const``, so ``Δlogit = (A_abl - A_clean) / s_clean + A_abl (1 / s_abl - 1 / s_clean)``
and the first term is the sum of the per-component changes. A ``wrong`` token turns every logit into a logit
difference ``logit_t - logit_wrong`` (IOI); the decomposition is unchanged.

Resample ablation replaces a head's ``z`` at every position with its value on other prompts (``corrupted``,
prompt by prompt). Many ablations run in one forward pass: each on its own copy of the batch stacked along the
batch axis, chunked to fit memory, with a tqdm bar; the result equals one forward pass per ablation (tested).

Speed: an ablated run starts at the ablated layer from the clean run's cached residual stream
(``mechlab.core.runs.run_from``; the layers before it compute what they computed in the clean run, and their
direct effects are unchanged). Direct effects are read along the readout direction only: with
``u = centre(W_U[:, target] * w) / scale_clean`` (``w`` the final norm's weight), head ``h`` of layer ``l`` reads
``z . (W_O[l, h] u)`` and an MLP ``mlp_out . u``, so no [component, batch, pos, d_model] stack of head outputs is
ever built, and the target logit is ``ln_final(resid) . W_U[:, target] + b_U[target]`` (checked on the clean run
against the model's logits; where they differ, e.g. a soft-capped unembedding, the full unembedding is used).

Example::

    from mechlab.core.loading import load_model
    from mechlab.data.text import text_tokens
    from mechlab.methods.self_repair import self_repair_sweep, backup_slopes
    model = load_model("tiny-gpt2", verbose=False)
    clean, corrupted = text_tokens(model, n_prompts=4, n_pos=20, source="organism")
    result = self_repair_sweep(model, clean, corrupted)          # every head, one at a time
    result.self_repair["L1H0"].shape                             # [batch, pos - 1]
    backup_slopes(result, top_percent=10).top(3)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import FINAL_NORM_SCALE, head_labels, hook_name, parse_head
from mechlab.core.results import Labelled
from mechlab.core.runs import Patch, auto_max_batch, cache_resume, check_tokens, patch_hook, run_from, unembed_logits
from mechlab.data import ioi
from mechlab.methods.dla import component_labels, final_norm_params, unembed_directions

PARTS = ("delta_logit", "direct", "heads", "mlps", "fixed", "norm")


# ---------------------------------------------------------------------------------------------------------
# the result


@dataclass
class SelfRepair:
    """A sweep's parts, each ``Labelled`` over the ablated groups with axes (ablated, batch, pos).

    ``Δlogit = direct + heads + mlps + fixed + norm`` at every entry (see the module docstring).
    ``clean`` holds every component's clean direct effect (component, batch, pos); ``components`` (only with
    ``keep_components=True``) each component's change of direct effect (ablated, component, batch, pos).
    """

    delta_logit: Labelled
    direct: Labelled
    heads: Labelled
    mlps: Labelled
    fixed: Labelled
    norm: Labelled
    clean: Labelled
    groups: list[list[str]]  # the heads ablated together in each row
    components: Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return self.delta_logit.labels

    @property
    def self_repair(self) -> Labelled:
        """Δlogit - (ablated DE - clean DE) of the ablated heads."""
        return _like(self.delta_logit, self.delta_logit.values - self.direct.values, "self-repair (logit)")

    def compensation(self, which: str = "heads") -> Labelled:
        """Downstream compensation: ``heads`` (the seed's "accumulated backup"), ``heads+mlps``, or ``all``
        (= self-repair, the norm remainder included)."""
        parts = {"heads": ("heads",), "heads+mlps": ("heads", "mlps"), "all": ("heads", "mlps", "fixed", "norm")}
        if which not in parts:
            raise ValueError(f"which={which!r}; expected one of {sorted(parts)}.")
        values = sum(getattr(self, p).values for p in parts[which])
        return _like(self.delta_logit, values, f"compensation ({which})")

    def clean_direct_effect(self) -> Labelled:
        """Each group's clean direct effect (its heads' sum), axes (ablated, batch, pos): the x of a backup plot."""
        rows = torch.stack([self.clean[g].sum(0) for g in self.groups])
        return _like(self.delta_logit, rows, "clean direct effect (logit)")

    def component_changes(self, label: str) -> Labelled:
        """For one ablated group: every component's change of direct effect, mean over (batch, pos)."""
        if self.components is None:
            raise ValueError("this sweep did not keep per-component changes; rerun with keep_components=True "
                             "(for a few ablated heads: it stores ablated x component x batch x pos numbers).")
        values = self.components[self.delta_logit.index(label)].mean((1, 2))
        return Labelled(values, self.clean.labels, unit="change of direct effect (logit)",
                        meta={"ablated": label})


    def at(self, pos: Int[Tensor, " batch"]) -> SelfRepair:
        """The same sweep read at one position per prompt (e.g. ``IOIBatch.end``): the pos axis becomes length 1.

        ``pos`` indexes the swept positions (with ``positions=slice(None)`` they are the token positions)."""
        pos = torch.as_tensor(pos).long().cpu()
        n_batch, n_pos = self.delta_logit.values.shape[1:]
        if pos.shape != (n_batch,) or bool(((pos < 0) | (pos >= n_pos)).any()):
            raise ValueError(f"pos must hold one position in 0..{n_pos - 1} per prompt ({n_batch}); got "
                             f"{pos.tolist()}.")

        def pick(t: Tensor) -> Tensor:  # [..., batch, pos] -> [..., batch, 1]
            return t.gather(-1, pos.view(-1, 1).expand(*t.shape[:-1], 1))

        parts = {p: _like(getattr(self, p), pick(getattr(self, p).values), getattr(self, p).unit) for p in PARTS}
        clean = Labelled(pick(self.clean.values), self.clean.labels, unit=self.clean.unit, axes=self.clean.axes,
                         meta=dict(self.clean.meta))
        return SelfRepair(**parts, clean=clean, groups=self.groups,
                          components=None if self.components is None else pick(self.components),
                          meta={**self.meta, "read_at": pos.tolist()})


def _like(template: Labelled, values: Tensor, unit: str) -> Labelled:
    return Labelled(values, template.labels, unit=unit, axes=template.axes, meta=dict(template.meta))


# ---------------------------------------------------------------------------------------------------------
# the sweep


def _groups(model, heads) -> list[list[tuple[int, int]]]:
    if heads is None:
        return [[(layer, h)] for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    if isinstance(heads, (str, tuple)):
        heads = [heads]
    out = []
    for item in heads:
        members = [item] if isinstance(item, (str, tuple)) else list(item)
        if not members:
            raise ValueError("an empty group of heads was given; each group names at least one head.")
        out.append([parse_head(m, model.cfg.n_layers, model.cfg.n_heads) for m in members])
    return out


def _readout(model, tokens: Tensor, targets, wrong, positions: slice):
    """Readout directions [batch, pos_sel, d_model] and the ids behind them."""
    n_pos = tokens.shape[1]
    kept = len(range(n_pos)[positions])
    targets = tokens[:, 1:] if targets is None else torch.as_tensor(targets, device=tokens.device)
    if targets.shape != (tokens.shape[0], kept):
        raise ValueError(f"targets have shape {tuple(targets.shape)}; expected {(tokens.shape[0], kept)}: one token "
                         f"id per prompt and per position selected by positions={positions} (default: the next "
                         "token, tokens[:, 1:] with positions=slice(0, -1)).")
    readout = unembed_directions(model, targets)
    if wrong is not None:
        wrong = torch.as_tensor(wrong, device=tokens.device)
        if wrong.shape != targets.shape:
            raise ValueError(f"wrong has shape {tuple(wrong.shape)}; expected the targets' {tuple(targets.shape)}.")
        readout = readout - unembed_directions(model, wrong)
    else:
        wrong = None
    return readout, targets.long(), wrong


def _read_logits(logits: Tensor, targets: Tensor, wrong: Tensor | None, positions: slice) -> Tensor:
    sel = logits[:, positions].float()
    out = sel.gather(-1, targets[..., None])[..., 0]
    if wrong is not None:
        out = out - sel.gather(-1, wrong[..., None])[..., 0]
    return out


FINAL_NORM_OUT = "ln_final.hook_out"


def _param_vector(model, name: str, size: int) -> Tensor:
    """A bias-like parameter of the bridge (``b_U``, ``b_O``) in fp32, zeros where the model has none."""
    try:
        value = getattr(model, name)
    except AttributeError:
        value = None
    device = next(model.parameters()).device
    return value.detach().float() if isinstance(value, Tensor) else torch.zeros(size, device=device)


class _Readout:
    """Direct effects along one readout direction per (prompt, position), read while the runs go.

    ``u = centre(readout * w) / scale`` (the final norm's weight ``w``, its centring for LayerNorm, the clean
    run's scale) is what the final residual is dotted with; head ``h`` of layer ``l`` reads ``z . (W_O[l, h] u)``
    and an MLP reads ``mlp_out . u``. Nothing of shape [component, batch, pos, d_model] is ever built: per layer
    ``W_O u`` is [batch, pos, head, d_head] (d_model numbers per position), computed once for every run.
    """

    def __init__(self, model, readout: Tensor, scale_sel: Tensor, positions: slice, bias_read: Tensor):
        centres, weight, _ = final_norm_params(model)
        direction = readout.float() * weight
        if centres:
            direction = direction - direction.mean(-1, keepdim=True)
        self.readout, self.positions, self.bias_read = readout.float(), positions, bias_read
        self.u = direction / scale_sel.float()  # [batch, pos_sel, d_model]
        w_o = model.W_O.detach().float()  # [layer, head, d_head, d_model]
        self.u_heads = [torch.einsum("hdm,bpm->bphd", w_o[layer], self.u) for layer in range(model.cfg.n_layers)]
        b_o = _param_vector(model, "b_O", model.cfg.n_layers * model.cfg.d_model).view(model.cfg.n_layers, -1)
        self.b_o_read = (self.u @ b_o.T).sum(-1)  # every layer's attention output bias along u: [batch, pos_sel]
        self.clean_heads: dict[int, Tensor] = {}
        self.clean_mlps: dict[int, Tensor] = {}
        self.read_layers: list[int] = []

    def head_reads(self, layer: int, z: Tensor, copies: int) -> Tensor:
        """[copies, batch, pos_sel, head] from z [copies * batch, pos, head, d_head]."""
        z = z[:, self.positions].float()
        return (z.view(copies, *self.u_heads[layer].shape) * self.u_heads[layer][None]).sum(-1)

    def vector_reads(self, act: Tensor, copies: int) -> Tensor:
        """[copies, batch, pos_sel] from a residual-stream write [copies * batch, pos, d_model]."""
        act = act[:, self.positions].float()
        return (act.view(copies, *self.u.shape) * self.u[None]).sum(-1)

    def logits(self, normed: Tensor, copies: int = 1) -> Tensor:
        """The read logit (difference) [copies * batch, pos_sel] from the final norm's output: ``normed . readout``
        plus the unembedding bias along it, i.e. the model's own logits when its unembedding is ``W_U`` + ``b_U``."""
        sel = normed[:, self.positions].float().view(copies, *self.readout.shape)
        return ((sel * self.readout[None]).sum(-1) + self.bias_read[None]).flatten(0, 1)

    def clean_effects(self, model, cache: dict[str, Tensor], labels: list[str], const: Tensor) -> Labelled:
        """Every component's clean direct effect, rows as ``component_labels`` (the same numbers as
        ``mechlab.methods.dla.direct_effects`` with the clean scale)."""
        rows = [self.vector_reads(cache["hook_embed"], 1)[0]]
        if "pos_embed" in labels:
            rows.append(self.vector_reads(cache["hook_pos_embed"], 1)[0])
        for layer in range(model.cfg.n_layers):
            self.clean_heads[layer] = self.head_reads(layer, cache[hook_name("z", layer)], 1)[0]
            self.clean_mlps[layer] = self.vector_reads(cache[hook_name("mlp_out", layer)], 1)[0]
            rows.extend(self.clean_heads[layer].permute(2, 0, 1).unbind(0))
            rows.append(self.clean_mlps[layer])
        rows.append(const + self.b_o_read)
        return Labelled(torch.stack(rows).cpu(), labels, unit="direct effect (logit)",
                        axes=("component", "batch", "pos"),
                        meta={"method": "direct effects", "positions": str(self.positions),
                              "final_scale": "frozen at the clean run's ln_final.hook_scale",
                              "bias": "attention output biases + final norm bias along the direction; b_U left out"})

    def hooks(self, copies: int, layers) -> tuple[dict[str, Tensor], list]:
        """Hooks that read every head and MLP of ``layers`` and the final norm's scale into the returned dict."""
        reads: dict[str, Tensor] = {}
        self.read_layers = list(layers)

        def heads(layer):
            def hook(act, hook):
                reads[f"z{layer}"] = self.head_reads(layer, act.detach(), copies)
            return hook

        def mlp(layer):
            def hook(act, hook):
                reads[f"mlp{layer}"] = self.vector_reads(act.detach(), copies)
            return hook

        out = [(hook_name("z", layer), heads(layer)) for layer in self.read_layers]
        out += [(hook_name("mlp_out", layer), mlp(layer)) for layer in self.read_layers]
        out.append((FINAL_NORM_SCALE, lambda act, hook: reads.__setitem__("scale", act.detach())))
        return reads, out


@torch.no_grad()
def _run_capturing(model, tokens: Tensor, names: set[str], hooks: list) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the activations ``names`` of one run, ``hooks`` applied first (so captures see the patch)."""
    cache: dict[str, Tensor] = {}

    def keeper(name):  # keyed by our name: TL4 may report a hook under its canonical alias
        def keep(act, hook):
            cache[name] = act.detach()
        return keep

    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks) + [(n, keeper(n)) for n in sorted(names)])
    return logits, cache


@torch.no_grad()
def self_repair_sweep(
    model,
    tokens: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    *,
    heads: Sequence | None = None,
    targets: Int[Tensor, "batch pos_sel"] | None = None,
    wrong: Int[Tensor, "batch pos_sel"] | None = None,
    positions: slice = slice(0, -1),
    keep_components: bool = False,
    max_batch: int | None = None,
    progress: bool = True,
) -> SelfRepair:
    """Resample-ablate each group of ``heads`` (every head alone by default) and split the change of the target
    logit into direct / heads / mlps / fixed / norm (see the module docstring).

    Args:
        tokens, corrupted: clean prompts and the prompts whose ``z`` replaces the ablated heads' (same shape).
        heads: labels ``'L9H9'`` / ``'9.9'`` / ``(9, 9)`` each ablated alone, or lists of them ablated together.
        targets: token ids [batch, pos_sel] whose logit is read at ``positions``; default the next token
            (``tokens[:, 1:]`` with ``positions=slice(0, -1)``).
        wrong: optional ids of the same shape: read ``logit_target - logit_wrong`` instead (e.g. IO - S in IOI).
        keep_components: also keep every component's change (ablated x component x batch x pos numbers).
        max_batch: sequences per forward pass (default from free memory); copies of the batch per pass follow.

    Returns:
        :class:`SelfRepair`, values on the CPU in fp32.
    """
    tokens = check_tokens(model, tokens, "tokens")
    corrupted = check_tokens(model, corrupted, "corrupted")
    if corrupted.shape != tokens.shape:
        raise ValueError(f"corrupted tokens have shape {tuple(corrupted.shape)} but tokens have {tuple(tokens.shape)};"
                         " resample ablation takes each prompt's replacement from the prompt in the same row.")
    if not isinstance(positions, slice):
        raise ValueError(f"positions={positions!r}: expected a slice, e.g. slice(0, -1) (every position but the last).")
    groups = _groups(model, heads)
    batch = tokens.shape[0]
    readout, targets, wrong = _readout(model, tokens, targets, wrong, positions)
    labels = component_labels(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    head_row = {(layer, h): labels.index(f"L{layer}H{h}") for layer in range(n_layers) for h in range(n_heads)}
    mlp_row = [labels.index(f"L{layer} mlp") for layer in range(n_layers)]
    z_names = {hook_name("z", layer) for g in groups for layer, _ in g}

    # the clean run: its residual stream entering every layer (each ablated run resumes at its earliest ablated
    # layer: the layers before it compute exactly what they did here) and what the direct effects read
    clean_names = {"hook_embed", FINAL_NORM_SCALE, FINAL_NORM_OUT}
    clean_names |= {"hook_pos_embed"} if "pos_embed" in labels else set()
    clean_names |= {hook_name(k, layer) for k in ("z", "mlp_out") for layer in range(n_layers)}
    resume, clean_cache, _ = cache_resume(model, tokens, range(n_layers), clean_names)
    clean_scale = clean_cache[FINAL_NORM_SCALE]
    b_u = _param_vector(model, "b_U", model.cfg.d_vocab)
    bias_read = b_u[targets] - (0 if wrong is None else b_u[wrong])
    reader = _Readout(model, readout, clean_scale[:, positions], positions, bias_read)
    _, _, norm_bias = final_norm_params(model)
    const = readout.float() @ norm_bias  # the final norm's bias along the readout (in the bias row)
    clean_de = reader.clean_effects(model, clean_cache, labels, const)
    # the target logits of the ablated runs are read through W_U[:, target] + b_U alone (not the whole
    # vocabulary) where that reproduces the clean run's logits; else through the unembedding
    full_read = _read_logits(unembed_logits(model, clean_cache[FINAL_NORM_OUT]), targets, wrong, positions)
    tol = 1e-3 * max(1.0, float(full_read.abs().max()))
    direct_logits = bool(((reader.logits(clean_cache[FINAL_NORM_OUT]) - full_read).abs() <= tol).all())
    clean_read = full_read.cpu()
    const = const.cpu()
    _, corr_cache = _run_capturing(model, corrupted, z_names, [])
    clean_total = clean_de.values.sum(0)  # every writer's direct effect: A_clean / s_clean + the bias terms
    del clean_cache

    s_clean = clean_scale[:, positions, 0].float().cpu()

    max_batch = auto_max_batch(model, tokens.shape[1], budget_fraction=0.2) if max_batch is None else max_batch
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected a positive integer (sequences per forward pass).")
    per_pass = max(1, max_batch // batch)
    first = [min(layer for layer, _ in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda g: first[g])  # layer order: a pass's copies share their start
    chunks = [order[i:i + per_pass] for i in range(0, len(order), per_pass)]
    n_sel = clean_de.values.shape[-1]
    parts = {p: torch.zeros(len(groups), batch, n_sel) for p in PARTS}
    kept = torch.zeros(len(groups), len(labels), batch, n_sel) if keep_components else None
    start = time.perf_counter()
    for chunk in tqdm(chunks, desc=f"resample-ablating ({len(groups)} ablations, {per_pass} per pass)",
                      disable=not progress):
        k = len(chunk)
        by_name: dict[str, list[tuple[int, Patch]]] = {}
        for i, g in enumerate(chunk):
            for layer, h in groups[g]:
                by_name.setdefault(hook_name("z", layer), []).append((i, Patch(hook_name("z", layer), h)))
        hooks = [(name, patch_hook(items, corr_cache[name], batch)) for name, items in by_name.items()]
        begin = resume.start(min(first[g] for g in chunk))
        reads, read_hooks = reader.hooks(k, range(0 if begin is None else begin, n_layers))
        if begin is None:  # the model's blocks cannot be resumed: a full forward pass, read the same way
            out: dict[str, Tensor] = {}
            model.run_with_hooks(tokens.repeat(k, 1), fwd_hooks=hooks + read_hooks + [
                (FINAL_NORM_OUT, lambda act, hook, out=out: out.__setitem__("normed", act))])
            normed = out["normed"]
        else:
            normed = run_from(model, resume, begin, copies=k, fwd_hooks=hooks + read_hooks, logits=False)
        t_rep, w_rep = targets.repeat(k, 1), None if wrong is None else wrong.repeat(k, 1)
        if direct_logits:
            read = reader.logits(normed, copies=k)
        else:
            read = _read_logits(unembed_logits(model, normed), t_rep, w_rep, positions)
        read = read.cpu().view(k, batch, -1)
        # change of each read writer's direct effect (clean scale); unread layers did not change
        head_change = {layer: (reads[f"z{layer}"].view(k, batch, n_sel, n_heads) - reader.clean_heads[layer][None])
                       for layer in reader.read_layers}
        mlp_change = {layer: reads[f"mlp{layer}"].view(k, batch, n_sel) - reader.clean_mlps[layer][None]
                      for layer in reader.read_layers}
        heads_total = sum(c.sum(-1) for c in head_change.values())
        mlps_total = sum(mlp_change.values())
        s_abl = reads["scale"][:, positions, 0].float().cpu().view(k, batch, -1)
        for i, g in enumerate(chunk):
            direct = sum(head_change[layer][i, ..., h] for layer, h in groups[g]).cpu()
            parts["direct"][g] = direct
            parts["heads"][g] = heads_total[i].cpu() - direct
            parts["mlps"][g] = mlps_total[i].cpu()
            # embeddings and biases do not depend on any head: their change is exactly 0 ("fixed" stays 0)
            total = clean_total + heads_total[i].cpu() + mlps_total[i].cpu()
            parts["norm"][g] = (total - const) * (s_clean / s_abl[i] - 1)
            parts["delta_logit"][g] = read[i] - clean_read
            if kept is not None:
                for layer in reader.read_layers:
                    for h in range(n_heads):
                        kept[g, head_row[(layer, h)]] = head_change[layer][i, ..., h].cpu()
                    kept[g, mlp_row[layer]] = mlp_change[layer][i].cpu()
        del reads, normed
    seconds = time.perf_counter() - start

    group_labels = ["+".join(f"L{layer}H{h}" for layer, h in g) for g in groups]
    meta = {"method": "resample ablation of z at every position, one copy of the batch per ablation",
            "final_scale": "every direct effect uses the clean run's ln_final.hook_scale",
            "readout": "logit[target] - logit[wrong]" if wrong is not None else "logit[target]",
            "positions": str(positions), "seconds": seconds, "per_pass": per_pass}
    units = {"delta_logit": "Δ logit", "direct": "Δ direct effect of the ablated heads (logit)",
             "heads": "Δ direct effect of the other heads (logit)", "mlps": "Δ direct effect of the MLPs (logit)",
             "fixed": "Δ embeddings and biases (logit)", "norm": "final-norm remainder (logit)"}
    out = {p: Labelled(parts[p], group_labels, unit=units[p], axes=("ablated", "batch", "pos"), meta=meta)
           for p in PARTS}
    return SelfRepair(**out, clean=clean_de, groups=[[f"L{layer}H{h}" for layer, h in g] for g in groups],
                      components=kept, meta=meta)


def ioi_self_repair(
    model, n: int = 50, *, seed: int = 0, heads: Sequence | None = None, keep_components: bool = False,
    max_batch: int | None = None, progress: bool = True,
) -> SelfRepair:
    """The sweep on IOI prompts (``mechlab.data.ioi``), read at each prompt's final position on the logit difference
    IO - S. Each head is resample-ablated with its ``z`` on the ABC-corrupted prompt (S2 replaced by a third name).

    ``-direct`` is then each head's direct effect on the logit difference (clean minus resampled output, clean
    scale): the largest is the top name mover, and ``self_repair`` says how much of its loss the model made up.
    """

    samples = ioi.make_ioi(n, seed=seed)
    clean = ioi.ioi_batch(model, samples)
    corrupted = ioi.ioi_batch(model, ioi.corrupt(samples, "abc", seed=seed))
    if not torch.equal(clean.end, corrupted.end):
        raise ValueError("the ABC-corrupted IOI prompts do not line up with the clean ones in this tokenizer; "
                         "choose another seed.")
    width = clean.tokens.shape[1]
    targets = clean.answer[:, None].expand(-1, width)
    wrong = clean.wrong[:, None].expand(-1, width)
    device = next(model.parameters()).device
    result = self_repair_sweep(model, clean.tokens.to(device), corrupted.tokens.to(device), heads=heads,
                               targets=targets.to(device), wrong=wrong.to(device), positions=slice(None),
                               keep_components=keep_components, max_batch=max_batch, progress=progress)
    return result.at(clean.end)


# ---------------------------------------------------------------------------------------------------------
# backup slopes


def select_points(
    x: Float[Tensor, " n"], *, threshold: float | None = None, top_percent: float | None = None
) -> Tensor:
    """Boolean mask of the points kept for a fit: ``x >= threshold`` and/or the ``top_percent`` % largest x.

    Both filters act on the signed direct effect: a backup head compensates where the ablated head *helped*.
    """
    x = torch.as_tensor(x).flatten()
    keep = torch.ones_like(x, dtype=torch.bool)
    if threshold is not None:
        keep &= x >= threshold
    if top_percent is not None:
        if not 0 < top_percent <= 100:
            raise ValueError(f"top_percent={top_percent}; expected a percentage in (0, 100].")
        k = max(1, int(round(x.numel() * top_percent / 100)))
        top = torch.zeros_like(keep)
        top[torch.topk(x, k).indices] = True
        keep &= top
    return keep


def fit_slope(
    x: Float[Tensor, " n"],
    y: Float[Tensor, " n"],
    *,
    intercept: bool = True,
    threshold: float | None = None,
    top_percent: float | None = None,
) -> tuple[float, float, int]:
    """Least-squares line ``y = slope * x (+ intercept)`` on the points :func:`select_points` keeps.

    Points where x or y is NaN or infinite are left out before filtering (``top_percent`` counts the finite
    points). Returns ``(slope, intercept, n_points)``; the intercept is 0.0 when ``intercept=False`` (through the
    origin). Raises ``ValueError`` when too few points are left to fit, saying how many were not finite.
    """
    x, y = torch.as_tensor(x).flatten().double().cpu(), torch.as_tensor(y).flatten().double().cpu()
    if x.shape != y.shape:
        raise ValueError(f"x has {x.numel()} points but y has {y.numel()}; pass one y per x.")
    finite = torch.isfinite(x) & torch.isfinite(y)
    n_bad = int((~finite).sum())
    x, y = x[finite], y[finite]
    keep = select_points(x, threshold=threshold, top_percent=top_percent) if x.numel() else finite[:0]
    x, y = x[keep], y[keep]
    need = 2 if intercept else 1
    if x.numel() < need or (intercept and float(x.max() - x.min()) == 0.0):
        dropped = f" ({n_bad} of {finite.numel()} points were NaN or infinite and left out)" if n_bad else ""
        raise ValueError(f"only {x.numel()} distinct point(s) pass the filters (threshold={threshold}, "
                         f"top_percent={top_percent}){dropped}; a line needs {need}. Loosen the filters"
                         + (", or find where the non-finite values come from." if n_bad else "."))
    design = torch.stack([x, torch.ones_like(x)], 1) if intercept else x[:, None]
    coef = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution[:, 0]
    return float(coef[0]), float(coef[1]) if intercept else 0.0, int(x.numel())


def backup_slopes(
    result: SelfRepair,
    *,
    which: str = "heads",
    intercept: bool = True,
    threshold: float | None = None,
    top_percent: float | None = None,
) -> Labelled:
    """One backup slope per ablated group: compensation (``which``, see :meth:`SelfRepair.compensation`) against
    the group's clean direct effect over all (batch, pos). Negative: later heads got *worse* when it was ablated.

    NaN or infinite points are left out of a group's fit. A group with too few points left gets NaN: its count
    (0 or 1) is in ``meta["n_points"]`` and the reason in ``meta["reasons"]`` (None for a fitted group).
    """
    x_all = result.clean_direct_effect().values
    y_all = result.compensation(which).values
    slopes, intercepts, counts, reasons = [], [], [], []
    for x, y in zip(x_all, y_all, strict=True):
        try:
            s, c, n = fit_slope(x, y, intercept=intercept, threshold=threshold, top_percent=top_percent)
            reason = None
        except ValueError as err:  # too few points for this head: no slope, and the count and reason say why
            finite = torch.isfinite(x.flatten()) & torch.isfinite(y.flatten())
            kept = x.flatten()[finite]
            s, c, reason = float("nan"), float("nan"), str(err)
            n = int(select_points(kept, threshold=threshold, top_percent=top_percent).sum()) if kept.numel() else 0
        slopes.append(s)
        intercepts.append(c)
        counts.append(n)
        reasons.append(reason)
    return Labelled(torch.tensor(slopes), result.labels, unit="compensation per unit of clean direct effect",
                    axes=("ablated",), meta={"which": which, "intercept": intercept, "threshold": threshold,
                                             "top_percent": top_percent, "intercepts": intercepts,
                                             "n_points": counts, "reasons": reasons})


def slopes_grid(model, slopes: Labelled) -> Float[Tensor, "layer head"]:
    """Slopes of single-head ablations as a [layer, head] grid (NaN for heads not swept), for a heatmap."""
    grid = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for label, value in zip(slopes.labels, slopes.values.tolist(), strict=True):
        if "+" not in label:
            layer, h = parse_head(label, model.cfg.n_layers, model.cfg.n_heads)
            grid[layer, h] = value
    return grid


def norm_share(result: SelfRepair, label: str, *, top_percent: float | None = None) -> float:
    """The share of self-repair the final-norm remainder accounts for: ``sum(norm) / sum(self-repair)`` over the
    ablated group's (batch, pos), or over its ``top_percent`` % of points by clean direct effect."""
    i = result.delta_logit.index(label)
    keep = select_points(result.clean_direct_effect().values[i], top_percent=top_percent)
    repair = float(result.self_repair.values[i].flatten()[keep].sum())
    if abs(repair) < 1e-9:
        raise ValueError(f"{label}: the self-repair sums to {repair:.3g} on these points; no share can be taken.")
    return float(result.norm.values[i].flatten()[keep].sum()) / repair


def point_labels(batch: int, n_pos: int) -> list[str]:
    """Hover labels ``batch b, pos p`` for the flattened (batch, pos) points of a backup scatter."""
    return [f"batch {b}, pos {p}" for b in range(batch) for p in range(n_pos)]


# ---------------------------------------------------------------------------------------------------------
# speed


def time_sweep(model, n_prompts: int, n_pos: int, *, loop_heads: int | None = None,
               max_batch: int | None = None, seed: int = 0) -> dict[str, float]:
    """Seconds for the batched all-heads sweep vs one forward pass with a full cache per head (the seed's way).

    The loop is timed on ``loop_heads`` heads (default all) and scaled to all heads. Random tokens, so it runs on
    any model offline. Returns ``{"batched_s", "loop_s", "speedup", "heads"}``.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = torch.randint(0, model.cfg.d_vocab, (2 * n_prompts, n_pos), generator=gen).to(device)
    clean, corrupted = tokens[:n_prompts], tokens[n_prompts:]
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    self_repair_sweep(model, clean[:1], corrupted[:1], heads=["L0H0"], progress=False)  # warm-up
    sync()
    start = time.perf_counter()
    self_repair_sweep(model, clean, corrupted, max_batch=max_batch, progress=False)
    sync()
    batched = time.perf_counter() - start
    loop_heads = n_heads if loop_heads is None else min(loop_heads, n_heads)
    labels = head_labels(model.cfg.n_layers, model.cfg.n_heads)[:loop_heads]
    _, corr = model.run_with_cache(corrupted)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for label in labels:
            layer, h = parse_head(label, model.cfg.n_layers, model.cfg.n_heads)
            name = hook_name("z", layer)

            def ablate(z, hook, h=h, name=name):
                z = z.clone()
                z[:, :, h] = corr[name][:, :, h]
                return z

            with model.hooks(fwd_hooks=[(name, ablate)]):
                model.run_with_cache(clean)
    sync()
    loop = (time.perf_counter() - start) * n_heads / loop_heads
    return {"batched_s": batched, "loop_s": loop, "speedup": loop / batched, "heads": n_heads}


__all__ = ["SelfRepair", "backup_slopes", "fit_slope", "ioi_self_repair", "norm_share", "point_labels", "select_points",
           "self_repair_sweep", "slopes_grid", "time_sweep"]


# ---------------------------------------------------------------------------------------------------------
# the seed's figures: every head's direct effect, one head's fitted line, the later heads that get worse


def mean_direct_effects(result: SelfRepair) -> Labelled:
    """Every swept group's clean direct effect, mean over (batch, pos): one number per head, for a layer x head
    heatmap (:func:`slopes_grid` arranges any per-head ``Labelled``). Summed over one layer's heads it is the
    direct effect of that layer's attention output less its output bias ``b_O``."""
    values = result.clean_direct_effect().values.mean((1, 2))
    return Labelled(values, result.labels, unit="mean clean direct effect (logit)", axes=("ablated",),
                    meta={"readout": result.meta.get("readout")})


def top_token_effects(result: SelfRepair, *, top_percent: float) -> Labelled:
    """Each group's mean clean direct effect on the points a ``top_percent`` backup fit keeps (its top tokens).

    This is the x-range a backup slope is fitted on: where it is close to zero, the slope divides noise by almost
    nothing and says nothing about backup."""
    x_all = result.clean_direct_effect().values
    values = torch.stack([x.flatten()[select_points(x, top_percent=top_percent)].mean() for x in x_all])
    return Labelled(values, result.labels, unit=f"mean clean direct effect on the top {top_percent} % tokens (logit)",
                    axes=("ablated",), meta={"top_percent": top_percent})


def reliable_slopes(slopes: Labelled, effects: Labelled, *, min_effect: float) -> Labelled:
    """The slopes (:func:`backup_slopes`) of the groups whose top-token direct effect (:func:`top_token_effects`)
    is at least ``min_effect`` logits; NaN slopes are dropped too. ``meta["dropped"]`` lists what was left out."""
    if list(effects.labels) != list(slopes.labels):
        raise ValueError("slopes and effects name different heads; compute both from the same sweep "
                         f"(slopes: {slopes.labels[:4]}..., effects: {effects.labels[:4]}...).")
    pairs = list(zip(slopes.values.tolist(), effects.values.tolist(), strict=True))
    keep = [i for i, (s, e) in enumerate(pairs) if e >= min_effect and s == s]  # s == s: not NaN
    if not keep:
        raise ValueError(f"no head has a top-token direct effect of at least min_effect={min_effect} logits (the "
                         f"largest is {max(e for _, e in pairs):.3g}); lower min_effect.")
    dropped = [lab for i, lab in enumerate(slopes.labels) if i not in keep]
    return Labelled(slopes.values[keep], [slopes.labels[i] for i in keep], unit=slopes.unit, axes=slopes.axes,
                    meta={**slopes.meta, "min_effect": min_effect, "dropped": dropped})


@dataclass
class SlopeReliability:
    """Per group: the evidence behind its backup slope and the tests it failed (:func:`slope_reliability`)."""

    labels: list[str]
    effect: Tensor  # [group] mean clean direct effect on the fitted points (top tokens)
    slope: Tensor  # [group] least-squares slope with an intercept
    slope_origin: Tensor  # [group] the same fit through the origin
    ci_low: Tensor  # [group] bootstrap confidence interval of ``slope``
    ci_high: Tensor
    reasons: dict[str, list[str]]  # label -> the tests it failed (empty: reliable)
    rule: dict  # min_effect, max_abs, level, n_boot, seed, top_percent

    @property
    def reliable(self) -> list[str]:
        return [lab for lab in self.labels if not self.reasons[lab]]

    def line(self, label: str) -> str:
        """One printable line: the numbers and, if it failed, why."""
        i = self.labels.index(label)
        why = "; ".join(self.reasons[label]) or "reliable"
        return (f"{label}: top-token direct effect {float(self.effect[i]):.3f}, slope {float(self.slope[i]):+.2f} "
                f"({100 * self.rule['level']:.0f} % CI [{float(self.ci_low[i]):+.2f}, {float(self.ci_high[i]):+.2f}]"
                f", through the origin {float(self.slope_origin[i]):+.2f}): {why}")


def slope_reliability(result: SelfRepair, *, top_percent: float, min_effect: float, max_abs: float = 1.0,
                      level: float = 0.95, n_boot: int = 1000, seed: int = 0, which: str = "heads",
                      ) -> SlopeReliability:
    """Which backup slopes (:func:`backup_slopes` with ``top_percent``) the data can support.

    A slope is reliable only if all four tests pass:

    - **effect**: the head's mean direct effect on its fitted points is at least ``min_effect`` logits (else the
      fit divides noise by almost nothing);
    - **range**: ``|slope| <= max_abs`` (a slope of +1 means the later components make up the whole loss);
    - **sign settled**: the ``level`` bootstrap interval of the slope (``n_boot`` resamples of the fitted points,
      generator seeded with ``seed``) excludes 0;
    - **intercept-free**: the fit through the origin has the same sign (else the line fits an offset, not a trend).

    A group whose fitted points all share one x (no line can be fitted) gets NaN slopes and the reason ``no line``.
    """
    if not 0 < level < 1 or n_boot < 10 or min_effect < 0 or max_abs <= 0:
        raise ValueError(f"level={level}, n_boot={n_boot}, min_effect={min_effect}, max_abs={max_abs}; expected "
                         "0 < level < 1, n_boot >= 10, min_effect >= 0 and max_abs > 0.")
    gen = torch.Generator().manual_seed(seed)
    rows, reasons = [], {}
    nan = float("nan")
    for label in result.labels:
        try:
            fit = backup_fit(result, label, which=which, top_percent=top_percent)
        except ValueError:  # its top tokens tie (e.g. all at position 0, the same BOS in every prompt): no line
            x_all = result.clean_direct_effect().values[result.labels.index(label)].flatten()
            top = x_all[select_points(x_all, top_percent=top_percent)]
            reasons[label] = [f"no line: its {top.numel()} top-token points have {int(top.unique().numel())} distinct "
                              "direct effect(s)"]
            rows.append((float(top.mean()) if top.numel() else nan, nan, nan, nan, nan))
            continue
        origin = backup_fit(result, label, which=which, top_percent=top_percent, intercept=False).slope
        x, y = fit.x[fit.kept].double().cpu(), fit.y[fit.kept].double().cpu()
        idx = torch.randint(x.numel(), (n_boot, x.numel()), generator=gen)
        xb, yb = x[idx], y[idx]  # [boot, n]
        xc = xb - xb.mean(1, keepdim=True)
        boot = (xc * (yb - yb.mean(1, keepdim=True))).sum(1) / (xc * xc).sum(1).clamp_min(1e-300)
        low, high = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=boot.dtype)).tolist()
        effect = float(x.mean())
        fails = []
        if effect < min_effect:
            fails.append(f"direct effect under {min_effect:.3f}")
        if abs(fit.slope) > max_abs:
            fails.append(f"|slope| over {max_abs:g}")
        if low <= 0 <= high:
            fails.append("CI includes 0")
        if fit.slope * origin <= 0:
            fails.append("sign flips through the origin")
        reasons[label] = fails
        rows.append((effect, fit.slope, origin, low, high))
    cols = torch.tensor(rows, dtype=torch.float64).T
    return SlopeReliability(labels=list(result.labels), effect=cols[0], slope=cols[1], slope_origin=cols[2],
                            ci_low=cols[3], ci_high=cols[4], reasons=reasons,
                            rule={"min_effect": min_effect, "max_abs": max_abs, "level": level, "n_boot": n_boot,
                                  "seed": seed, "top_percent": top_percent})


@dataclass
class BackupFit:
    """One group's backup scatter and the least-squares line through the points it kept (what
    ``mechlab.plot.self_repair.figure_backup_fit`` draws)."""

    label: str  # the ablated group
    x: Tensor  # [n] its clean direct effect at every (batch, pos), flattened
    y: Tensor  # [n] the compensation (``which``) at the same points
    kept: Tensor  # [n] bool: the points the line was fitted on
    slope: float
    intercept: float  # 0.0 for a line through the origin
    which: str  # the compensation read: "heads", "heads+mlps" or "all"


def backup_fit(result: SelfRepair, label: str, *, which: str = "heads", intercept: bool = True,
               threshold: float | None = None, top_percent: float | None = None) -> BackupFit:
    """The points and the fitted line behind one entry of :func:`backup_slopes` (same arguments, same slope)."""
    i = result.delta_logit.index(label)
    x = result.clean_direct_effect().values[i].flatten()
    y = result.compensation(which).values[i].flatten()
    slope, icept, _ = fit_slope(x, y, intercept=intercept, threshold=threshold, top_percent=top_percent)
    kept = select_points(x, threshold=threshold, top_percent=top_percent)
    return BackupFit(label=label, x=x, y=y, kept=kept, slope=slope, intercept=icept, which=which)


def later_head_changes(result: SelfRepair, label: str) -> Labelled:
    """When the single head ``label`` is ablated: the change of direct effect of every head in a later layer, mean
    over (batch, pos) (the sweep must have ``keep_components=True``). Negative: that head did *worse* without it.

    Heads in the same or earlier layers cannot see the ablated head, so their change is exactly 0 and they are left
    out; the values therefore sum to the mean of the sweep's ``heads`` part for ``label``."""
    if "+" in label:
        raise ValueError(f"label={label!r} names a group; later_head_changes reads one ablated head (e.g. 'L5H1').")
    changes = result.component_changes(label)
    n_layers = sum(lab.endswith(" mlp") for lab in changes.labels)
    n_heads = sum(lab.startswith("L0H") for lab in changes.labels)
    layer, _ = parse_head(label, n_layers, n_heads)
    rows = [i for i, lab in enumerate(changes.labels)
            if lab.startswith("L") and "H" in lab and " " not in lab and parse_head(lab, n_layers, n_heads)[0] > layer]
    if not rows:
        raise ValueError(f"{label} sits in the last layer: no head comes after it.")
    return Labelled(changes.values[rows], [changes.labels[i] for i in rows], unit=changes.unit, axes=("head",),
                    meta={"ablated": label})


__all__ += ["BackupFit", "SlopeReliability", "backup_fit", "later_head_changes", "mean_direct_effects",
            "reliable_slopes", "slope_reliability", "top_token_effects"]
