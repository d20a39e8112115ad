"""DLA, AtP / IG and attention patterns for the subtask pairs of :mod:`mechlab.cot_pairs`, aggregated as the seed
notebook did (mean over problems, and for AtP the max over each problem's positions), with figure builders.

- :func:`dla_subtask`: direct logit attribution at each pair's decision (clean run), batched over problems
  (right-padded; each row read at its own position). Per problem, the components sum to its logit difference.
- :func:`atp_subtask`: attribution patching (noising: corrupted activations into the clean run) on
  ``resid_pre``, ``mlp_out``, ``z`` (heads), ``q``, ``k``, ``v``; ``method="ig"`` uses layer-wise integrated
  gradients instead. One pair at a time: the seed's aggregate needs each problem's own position map, and at
  ~1100 tokens one Gemma-2b backward pass is what fits. Multi-query models (Gemma-2b: 1 K/V head) get one ``k``
  and one ``v`` row per layer, ``L{l}KV0``: that head serves every query head of the layer, so its score is the
  effect on all of them together and cannot be split per query head.
- :func:`head_patterns`: the attention patterns of chosen heads on one pair's last positions.

Figures (:func:`figure_dla`, :func:`figure_atp`, :func:`figure_qkv`, :func:`figure_position_map`,
:func:`figure_patterns`) only arrange results; they never compute and never show.

Example::

    from mechlab.cot_analysis import dla_subtask, atp_subtask, figure_dla
    dla = dla_subtask(model, pairs)          # pairs: a PairSet from mechlab.cot_pairs.build_pairs
    dla.mean().top(5)
    figure_dla(dla)
    atp = atp_subtask(model, pairs, kinds=["z", "q", "k", "v"])
    atp.mean("z").top(5)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.cot_pairs import CotPair, PairSet
from mechlab.results import Labelled

ATP_KINDS = ("resid_pre", "mlp_out", "z", "q", "k", "v")
REDUCTIONS = ("max", "min", "absmax", "sum")
_HEAD = re.compile(r"^L(\d+)H(\d+)$")


# ---------------------------------------------------------------------------------------------------------
# aggregation


def reduce_positions(values: Float[Tensor, "component pos"], reduce: str = "max") -> Float[Tensor, " component"]:
    """One number per component from a [component, pos] map: max / min / signed value of largest |x| / sum."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; expected one of {REDUCTIONS}.")
    if reduce == "max":
        return values.max(-1).values
    if reduce == "min":
        return values.min(-1).values
    if reduce == "sum":
        return values.sum(-1)
    idx = values.abs().argmax(-1, keepdim=True)
    return values.gather(-1, idx)[..., 0]


def aggregate_positions(maps: Sequence[Float[Tensor, "component pos"]], reduce: str = "max"
                        ) -> Float[Tensor, " component"]:
    """The seed's aggregate: reduce each problem's map over *its own* positions, then average over problems.

    Maps may have different lengths (problems differ in length); padding them to stack first would let the pad
    values win the max.
    """
    if not maps:
        raise ValueError("aggregate_positions got no maps; pass one [component, pos] tensor per problem.")
    rows = {m.shape[0] for m in maps}
    if len(rows) != 1 or any(m.ndim != 2 for m in maps):
        raise ValueError(f"every map must be [component, pos] with the same components; got shapes "
                         f"{[tuple(m.shape) for m in maps][:5]}.")
    return torch.stack([reduce_positions(m.float(), reduce) for m in maps]).mean(0)


# ---------------------------------------------------------------------------------------------------------
# DLA


@dataclass
class SubtaskDLA:
    """Per-problem DLA at the decision of one subtask (clean runs)."""

    subtask: str
    components: Labelled  # [component, problem] over mechlab.dla.component_labels, unit logit diff
    resid: Labelled  # [resid] accumulated residual stream read through the unembedding (mean over problems)
    logit_diff: Tensor  # [problem] the model's own logit difference (what each column of components sums to)
    n_layers: int
    n_heads: int

    def mean(self) -> Labelled:
        """Mean over problems: [component]."""
        return Labelled(self.components.values.mean(1), self.components.labels, unit="logit diff",
                        meta={**self.components.meta, "aggregate": f"mean over {self.n_problems} problems"})

    @property
    def n_problems(self) -> int:
        return self.components.values.shape[1]

    def heads(self) -> Float[Tensor, "layer head"]:
        """Mean head contributions as a [layer, head] grid."""
        labels = [f"L{i}H{h}" for i in range(self.n_layers) for h in range(self.n_heads)]
        return self.mean()[labels].reshape(self.n_layers, self.n_heads)

    def mlps(self) -> Float[Tensor, " layer"]:
        return self.mean()[[f"L{i} mlp" for i in range(self.n_layers)]]

    def __repr__(self) -> str:
        best = ", ".join(f"{k}={v:+.2f}" for k, v in self.mean().top(3))
        return (f"SubtaskDLA({self.subtask}: {self.n_problems} problems, mean logit diff "
                f"{float(self.logit_diff.mean()):+.2f}; top {best})")


def dla_subtask(model, pairs: PairSet, *, batch_size: int = 8, progress: bool = True) -> SubtaskDLA:
    """DLA of every component at each pair's decision, ``batch_size`` problems per forward pass."""
    from mechlab.dla import accumulated_resid_dla, cache_names, logit_diff_dla

    clean, _, good, bad, pos = pairs.tensors(next(model.parameters()).device)
    names = cache_names(model)
    cols, diffs, resid, labels, resid_labels, meta = [], [], 0.0, None, None, {}
    chunks = range(0, len(clean), batch_size)
    for s in tqdm(chunks, desc=f"DLA {pairs.subtask}", disable=not progress or len(chunks) < 2):
        sl = slice(s, s + batch_size)
        with torch.no_grad():
            _, cache = model.run_with_cache(clean[sl], names_filter=lambda n: n in names)
        res = logit_diff_dla(model, clean[sl], good[sl], bad[sl], pos=pos[sl], cache=cache, per_prompt=True)
        acc = accumulated_resid_dla(model, clean[sl], good[sl], bad[sl], pos=pos[sl], cache=cache)
        cols.append(res.values)
        diffs.append(res.meta["logit_diff_per_prompt"])
        resid = resid + acc.values * res.values.shape[1]
        labels, resid_labels, meta = res.labels, acc.labels, res.meta
        del cache
    values = torch.cat(cols, 1)
    n = values.shape[1]
    keep = {k: v for k, v in meta.items() if k in ("method", "final_scale", "bias")}
    return SubtaskDLA(
        subtask=pairs.subtask,
        components=Labelled(values, labels, unit="logit diff", axes=("component", "problem"),
                            meta={**keep, "problems": [p.item_id for p in pairs]}),
        resid=Labelled(resid / n, resid_labels, unit="logit diff", meta={"aggregate": f"mean over {n} problems"}),
        logit_diff=torch.cat(diffs), n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)


# ---------------------------------------------------------------------------------------------------------
# AtP / IG


@dataclass
class SubtaskAtP:
    """Per-problem attribution (noising) of one subtask, reduced over positions."""

    subtask: str
    method: str  # "atp" or "ig"
    reduce: str  # how each problem's positions were reduced
    per_problem: dict[str, Labelled]  # kind -> [component, problem]
    maps: list[dict[str, Labelled]] = field(default_factory=list)  # full [component, pos] maps of the first pairs
    clean_metric: Tensor | None = None  # [problem] logit diff of the clean run
    corrupted_metric: Tensor | None = None  # [problem] logit diff of the corrupted run

    def mean(self, kind: str) -> Labelled:
        """Mean over problems of the per-problem reduced scores: [component]."""
        if kind not in self.per_problem:
            raise ValueError(f"kind={kind!r} was not computed; this result holds {list(self.per_problem)}.")
        r = self.per_problem[kind]
        return Labelled(r.values.mean(1), r.labels, unit=r.unit,
                        meta={**r.meta, "aggregate": f"{self.reduce} over positions, mean over problems"})

    def grid(self, kind: str, n_layers: int) -> Float[Tensor, "layer head"]:
        """A head kind (z, q, k, v) as a [layer, head] grid (k/v: [layer, kv_head])."""
        values = self.mean(kind).values
        return values.reshape(n_layers, -1)

    @property
    def n_problems(self) -> int:
        return next(iter(self.per_problem.values())).values.shape[1]

    def __repr__(self) -> str:
        return (f"SubtaskAtP({self.subtask}, {self.method}, {self.n_problems} problems, kinds "
                f"{list(self.per_problem)}, {self.reduce} over positions)")


def atp_subtask(model, pairs: PairSet, *, kinds: Sequence[str] = ATP_KINDS, method: str = "atp", steps: int = 8,
                reduce: str = "max", keep_maps: int = 1, progress: bool = True) -> SubtaskAtP:
    """AtP (or layer-wise IG, ``method="ig"``, ``steps`` alphas) of every pair, noising, metric = the pair's logit
    difference at its decision; each problem's [component, pos] map reduced over positions (``reduce``)."""
    from mechlab.attribution import attribution_patching, integrated_gradients, logit_diff_metric

    if method not in ("atp", "ig"):
        raise ValueError(f"method={method!r}; expected 'atp' (one gradient at the clean run) or 'ig' (integrated "
                         "gradients along the clean -> corrupted path, one layer at a time).")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; expected one of {REDUCTIONS}.")
    if not pairs.pairs:
        raise ValueError(f"{pairs.subtask} has no pairs ({pairs.summary()}); nothing to attribute.")
    kinds = list(kinds)
    device = next(model.parameters()).device
    scores: dict[str, list[Tensor]] = {k: [] for k in kinds}
    labels: dict[str, list[str]] = {}
    unit_meta: dict[str, tuple] = {}
    maps, m_clean, m_corr = [], [], []
    for i, pair in enumerate(tqdm(pairs.pairs, desc=f"{method.upper()} {pairs.subtask}", disable=not progress)):
        clean, corrupted = pair.clean_tokens[None].to(device), pair.corrupted_tokens[None].to(device)
        metric = logit_diff_metric(torch.tensor([pair.correct_id]), torch.tensor([pair.incorrect_id]), pos=-1)
        if method == "atp":
            res = attribution_patching(model, clean, corrupted, metric, kinds=kinds)
        else:
            res = {k: integrated_gradients(model, clean, corrupted, metric, kind=k, steps=steps, progress=False)
                   for k in kinds}
        for k in kinds:
            scores[k].append(reduce_positions(res[k].values, reduce))
            labels[k] = res[k].labels
            unit_meta[k] = (res[k].unit, res[k].meta)
        first = res[kinds[0]].meta
        m_clean.append(first["metric_clean"])
        m_corr.append(first["metric_corrupted"])
        if i < keep_maps:
            maps.append(res)
    per_problem = {k: Labelled(torch.stack(scores[k], 1), labels[k], unit=unit_meta[k][0],
                               axes=("component", "problem"),
                               meta={key: v for key, v in unit_meta[k][1].items()
                                     if key not in ("metric_clean", "metric_corrupted")} | {"reduce": reduce})
                   for k in kinds}
    return SubtaskAtP(pairs.subtask, method, reduce, per_problem, maps, torch.tensor(m_clean), torch.tensor(m_corr))


# ---------------------------------------------------------------------------------------------------------
# heads and their patterns


def top_heads(result: Labelled, k: int = 6, *, by_abs: bool = True) -> list[str]:
    """The ``k`` ``L{l}H{h}`` labels with the largest (absolute) value in a 1-d result."""
    heads = [x for x in result.labels if _HEAD.match(x)]
    if not heads:
        raise ValueError(f"this result has no head labels (L{{l}}H{{h}}); its labels are like {result.labels[:4]}.")
    sub = Labelled(result[heads], heads)
    return [name for name, _ in sub.top(k, by_abs=by_abs)]


@torch.no_grad()
def head_patterns(model, pair: CotPair, heads: Sequence[str], *, last: int = 32
                  ) -> tuple[Float[Tensor, "head query_pos key_pos"], list[str]]:
    """Attention patterns of ``heads`` on ``pair``'s clean prompt, over its ``last`` positions (queries and keys).

    Returns (patterns [head, last, last] on the CPU, the ``last`` token strings).
    """
    from mechlab.hooks import hook_name
    from mechlab.results import parse_head

    parsed = [parse_head(h, model.cfg.n_layers, model.cfg.n_heads) for h in heads]
    if not parsed:
        raise ValueError("heads is empty; pass head labels such as ['L1H2'] (e.g. top_heads(dla.mean())).")
    names = {hook_name("pattern", layer) for layer, _ in parsed}
    tokens = pair.clean_tokens[None].to(next(model.parameters()).device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    n = min(last, tokens.shape[1])
    pats = torch.stack([cache[hook_name("pattern", layer)][0, head, -n:, -n:].float().cpu() for layer, head in parsed])
    strs = model.to_str_tokens(pair.clean_tokens)[-n:]
    return pats, [str(s) for s in strs]


# ---------------------------------------------------------------------------------------------------------
# figures (arrange results; never compute, never show)


def _heat(z, x, y, zmax, name=""):
    return go.Heatmap(z=z, x=x, y=y, zmin=-zmax, zmax=zmax, zmid=0, colorscale="RdBu_r", coloraxis="coloraxis",
                      hovertemplate=name + "%{y} %{x}: %{z:.3g}<extra></extra>")


def _zmax(*tensors) -> float:
    return max(float(t.abs().max()) for t in tensors if t.numel()) or 1.0


def figure_dla(dla: SubtaskDLA, *, title: str = "") -> go.Figure:
    """Three panels as in the seed: accumulated residual stream, MLP outputs, heads ([layer, head])."""
    resid = dla.resid.values[:, None].numpy()
    mlp = dla.mlps()[:, None].numpy()
    heads = dla.heads().numpy()
    zmax = _zmax(dla.resid.values, dla.mlps(), dla.heads())
    layers = [f"L{i}" for i in range(dla.n_layers)]
    fig = make_subplots(1, 3, subplot_titles=("residual stream (accumulated)", "MLP", "attention heads"),
                        column_widths=[0.15, 0.15, 0.7])
    fig.add_trace(_heat(resid, ["resid"], dla.resid.labels, zmax), 1, 1)
    fig.add_trace(_heat(mlp, ["mlp"], layers, zmax), 1, 2)
    fig.add_trace(_heat(heads, [f"H{h}" for h in range(dla.n_heads)], layers, zmax), 1, 3)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"DLA, {dla.subtask}: mean over {dla.n_problems} problems (logit diff)",
                      coloraxis=dict(colorscale="RdBu_r", cmid=0, cmin=-zmax, cmax=zmax), height=420, width=1000)
    return fig


def figure_atp(atp: SubtaskAtP, n_layers: int, *, title: str = "") -> go.Figure:
    """resid_pre / mlp_out / heads (z) panels of an AtP result, as in the seed's aggregate plots."""
    panels = [k for k in ("resid_pre", "mlp_out", "z") if k in atp.per_problem]
    if not panels:
        raise ValueError(f"figure_atp needs resid_pre, mlp_out or z; this result holds {list(atp.per_problem)}.")
    grids = [atp.grid(k, n_layers) for k in panels]
    zmax = _zmax(*grids)
    fig = make_subplots(1, len(panels), subplot_titles=panels,
                        column_widths=[0.7 if k == "z" else 0.15 for k in panels])
    layers = [f"L{i}" for i in range(n_layers)]
    for i, (k, g) in enumerate(zip(panels, grids, strict=True), start=1):
        x = [f"H{h}" for h in range(g.shape[1])] if k == "z" else [k]
        fig.add_trace(_heat(g.numpy(), x, layers, zmax), 1, i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"{atp.method.upper()}, {atp.subtask}: {atp.reduce} over positions, mean over "
                      f"{atp.n_problems} problems", coloraxis=dict(colorscale="RdBu_r", cmin=-zmax, cmax=zmax),
                      height=420, width=1000)
    return fig


def figure_qkv(atp: SubtaskAtP, n_layers: int, *, title: str = "") -> go.Figure:
    """Queries per query head, keys and values per K/V head (one column in a multi-query model)."""
    panels = [k for k in ("q", "k", "v") if k in atp.per_problem]
    if not panels:
        raise ValueError(f"figure_qkv needs q, k or v; this result holds {list(atp.per_problem)}.")
    grids = [atp.grid(k, n_layers) for k in panels]
    zmax = _zmax(*grids)
    fig = make_subplots(1, len(panels), subplot_titles=[f"{k} ({g.shape[1]} head{'s' if g.shape[1] > 1 else ''})"
                                                        for k, g in zip(panels, grids, strict=True)],
                        column_widths=[max(0.12, g.shape[1] / sum(x.shape[1] for x in grids)) for g in grids])
    layers = [f"L{i}" for i in range(n_layers)]
    for i, (k, g) in enumerate(zip(panels, grids, strict=True), start=1):
        tag = "KV" if k in ("k", "v") and g.shape[1] != grids[0].shape[1] else "H"
        fig.add_trace(_heat(g.numpy(), [f"{tag}{h}" for h in range(g.shape[1])], layers, zmax), 1, i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"{atp.method.upper()} on queries, keys, values, {atp.subtask}",
                      coloraxis=dict(colorscale="RdBu_r", cmin=-zmax, cmax=zmax), height=420, width=1000)
    return fig


def figure_position_map(result: Labelled, tokens: Sequence[str], *, last: int = 40, title: str = "") -> go.Figure:
    """One problem's [component, pos] map over its ``last`` positions, x labelled by token."""
    values = result.values[:, -last:]
    toks = list(tokens)[-values.shape[1]:]
    x = [f"{i}: {t!r}"[:20] for i, t in enumerate(toks, start=len(tokens) - len(toks))]
    zmax = _zmax(values)
    fig = go.Figure(_heat(values.numpy(), x, result.labels, zmax))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"{result.meta.get('method', '')} per position ({result.meta.get('kind', '')})",
                      coloraxis=dict(colorscale="RdBu_r", cmin=-zmax, cmax=zmax), height=300 + 12 * len(result),
                      width=1000)
    return fig


def figure_patterns(patterns: Float[Tensor, "head query_pos key_pos"], tokens: Sequence[str],
                    heads: Sequence[str], *, title: str = "") -> go.Figure:
    """Heatmaps of the heads' patterns (``mechlab.plot.attention.attention_heatmaps``), colour scale 0..1."""
    from mechlab.plot.attention import attention_heatmaps

    return attention_heatmaps(patterns, tokens, head_names=list(heads), title=title, cols=3)


__all__ = ["ATP_KINDS", "SubtaskAtP", "SubtaskDLA", "aggregate_positions", "atp_subtask", "dla_subtask",
           "figure_atp", "figure_dla", "figure_patterns", "figure_position_map", "figure_qkv", "head_patterns",
           "reduce_positions", "top_heads"]
