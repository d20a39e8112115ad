"""DLA, AtP / IG and attention patterns for the subtask pairs of :mod:`mechlab.cot.pairs`, aggregated as the seed
notebook did (mean over problems, and for AtP the max over each problem's positions).

- :func:`dla_subtask`: direct logit attribution at each pair's decision (clean run), batched over problems
  (right-padded; each row read at its own position). Per problem, the components sum to its logit difference.
- :func:`atp_subtask`: attribution patching (noising: corrupted activations into the clean run) on
  ``resid_pre``, ``mlp_out``, ``z`` (heads), ``q``, ``k``, ``v``; ``method="ig"`` uses layer-wise integrated
  gradients instead. One pair at a time: the seed's aggregate needs each problem's own position map, and at
  ~1100 tokens one Gemma-2b backward pass is what fits. Multi-query models (Gemma-2b: 1 K/V head) get one ``k``
  and one ``v`` row per layer, ``L{l}KV0``: that head serves every query head of the layer, so its score is the
  effect on all of them together and cannot be split per query head.
- :func:`pair_head_patterns`: the attention patterns of chosen heads on one pair's last positions.

Their figures are in :mod:`mechlab.plot.cot` (``figure_dla``, ``figure_atp``, ``figure_qkv``,
``figure_position_map``); head patterns draw with ``mechlab.plot.attention_heatmaps``.

Example::

    from mechlab.cot.analysis import dla_subtask, atp_subtask
    from mechlab.plot import figure_dla
    dla = dla_subtask(model, pairs)          # pairs: a PairSet from mechlab.cot.pairs.build_pairs
    dla.mean().top(5)
    figure_dla(dla)
    atp = atp_subtask(model, pairs, kinds=["z", "q", "k", "v"])
    atp.mean("z").top(5)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import hook_name, parse_head
from mechlab.core.results import Labelled
from mechlab.core.runs import logit_diff_metric
from mechlab.cot.pairs import CotPair, PairSet
from mechlab.methods.attribution import attribution_patching, integrated_gradients
from mechlab.methods.dla import accumulated_resid_dla, cache_names, logit_diff_dla

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
    components: Labelled  # [component, problem] over mechlab.methods.dla.component_labels, unit logit diff
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
def pair_head_patterns(model, pair: CotPair, heads: Sequence[str], *, last: int = 32
                  ) -> tuple[Float[Tensor, "head query_pos key_pos"], list[str]]:
    """Attention patterns of ``heads`` on ``pair``'s clean prompt, over its ``last`` positions (queries and keys).

    Returns (patterns [head, last, last] on the CPU, the ``last`` token strings).
    """

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


__all__ = ["ATP_KINDS", "SubtaskAtP", "SubtaskDLA", "aggregate_positions", "atp_subtask", "dla_subtask",
           "pair_head_patterns", "reduce_positions", "top_heads"]
