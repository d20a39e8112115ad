"""DLA, AtP / IG, exact patching and attention patterns for the subtask pairs of :mod:`mechlab.cot.pairs`, with the
checks unit 07's notebook asserts.

- :func:`dla_subtask`: direct logit attribution at each pair's decision (clean run), batched over problems
  (right-padded; each row read at its own position). Per problem, the components sum to its logit difference.
- :func:`atp_subtask`: attribution patching (noising: corrupted activations into the clean run) on
  ``resid_pre``, ``mlp_out``, ``z`` (heads), ``q``, ``k``, ``v``; ``method="ig"`` uses layer-wise integrated
  gradients instead. One pair at a time: the aggregate needs each problem's own position map, and at
  ~1100 tokens one Gemma-2b backward pass is what fits. Multi-query models (Gemma-2b: 1 K/V head) get one ``k``
  and one ``v`` row per layer, ``L{l}KV0``: that head serves every query head of the layer, so its score is the
  effect on all of them together and cannot be split per query head.
- :func:`exact_subtask`: exact whole-component noising patches (every position of a component at once), per pair,
  with :func:`mechlab.methods.patching.activation_patching` (``per_position=False``, the patches batched).
- :func:`pair_head_patterns`: the attention patterns of chosen heads on one pair's last positions.

**The reduction over positions.** Each problem's AtP map [component, pos] is reduced to one number per component,
then averaged over problems (:func:`aggregate_positions`). The default is the **signed sum** over positions: AtP
is linear in the patch, so the sum of the per-position estimates is AtP's estimate of patching the component at
every position at once, the same quantity :func:`exact_subtask` measures. In the noising direction an important
component has a large *negative* value (patching it destroys the clean decision); positions before the first edit
contribute 0. The seed's max over positions is never below 0 there and hides exactly the important components;
``"min"`` keeps the strongest single position, ``"absmax"`` the largest |value| with its sign.

**Checks** (used by the notebook's last cell; tolerances follow the model's dtype, :func:`tolerance`):
:func:`assert_dla_complete`, :func:`assert_aggregate`, :func:`assert_ranking`, :func:`assert_ig_complete`. Each raises
``AssertionError`` with the numbers that failed.

Their figures are in :mod:`mechlab.plot.cot` (``figure_dla``, ``figure_atp``, ``figure_qkv``,
``figure_position_map``); head patterns draw with ``mechlab.plot.attention_heatmaps``.

Example::

    from mechlab.cot.analysis import atp_subtask, dla_subtask, exact_subtask, spearman
    from mechlab.plot import figure_dla
    dla = dla_subtask(model, pairs)          # pairs: a PairSet from mechlab.cot.pairs.build_pairs
    dla.mean().top(5)
    figure_dla(dla)
    atp = atp_subtask(model, pairs, kinds=["z", "mlp_out"])        # signed sum over positions
    exact = exact_subtask(model, pairs, kinds=["z"])
    spearman(atp.mean("z").values.abs(), exact.mean("z").values.abs())
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechlab.core.activations import FINAL_NORM_SCALE, hook_name, parse_head
from mechlab.core.results import Labelled
from mechlab.core.runs import logit_diff_metric
from mechlab.cot.pairs import CotPair, PairSet
from mechlab.methods.attribution import attribution_patching, integrated_gradients
from mechlab.methods.dla import accumulated_resid_dla, cache_names, logit_diff_dla
from mechlab.methods.patching import activation_patching

ATP_KINDS = ("resid_pre", "mlp_out", "z", "q", "k", "v")
REDUCTIONS = ("sum", "min", "absmax", "max")
_HEAD = re.compile(r"^L(\d+)H(\d+)$")


# ---------------------------------------------------------------------------------------------------------
# aggregation


def reduce_positions(values: Float[Tensor, "component pos"], reduce: str = "sum") -> Float[Tensor, " component"]:
    """One number per component from a [component, pos] map: signed sum / min / max / signed value of largest |x|."""
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


def aggregate_positions(maps: Sequence[Float[Tensor, "component pos"]], reduce: str = "sum"
                        ) -> Float[Tensor, " component"]:
    """Reduce each problem's map over *its own* positions (default: signed sum), then average over problems.

    Maps may have different lengths (problems differ in length); padding them to stack first would let the pad
    values win a max or a min. See the module docstring for why the signed sum.
    """
    if isinstance(maps, Tensor) or not isinstance(maps, Sequence) or not maps:
        what = "an empty list" if isinstance(maps, Sequence) and not maps else f"a {type(maps).__name__}"
        raise ValueError(f"aggregate_positions got {what}; pass a non-empty list with one [component, pos] tensor "
                         "per problem (e.g. [m['z'].values for m in atp.maps]).")
    shapes = [tuple(m.shape) for m in maps]
    if any(m.ndim != 2 for m in maps) or len({sh[0] for sh in shapes}) != 1:
        raise ValueError(f"every map must be [component, pos] with the same components; got shapes {shapes[:5]}.")
    if any(0 in sh for sh in shapes):
        raise ValueError(f"a map is empty (shapes {shapes[:5]}): every problem needs at least one component and "
                         "one position; drop the empty ones or check how the maps were built.")
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
    method: str  # "atp", "ig" or "exact"
    reduce: str  # how each problem's positions were reduced ("all at once" for exact whole-component patches)
    per_problem: dict[str, Labelled]  # kind -> [component, problem]
    maps: list[dict[str, Labelled]] = field(default_factory=list)  # full [component, pos] maps of the first pairs
    clean_metric: Tensor | None = None  # [problem] logit diff of the clean run
    corrupted_metric: Tensor | None = None  # [problem] logit diff of the corrupted run

    def mean(self, kind: str) -> Labelled:
        """Mean over problems of the per-problem reduced scores: [component]."""
        if kind not in self.per_problem:
            raise ValueError(f"kind={kind!r} was not computed; this result holds {list(self.per_problem)}.")
        r = self.per_problem[kind]
        how = ("every position patched at once" if self.method == "exact" else f"{self.reduce} over positions")
        return Labelled(r.values.mean(1), r.labels, unit=r.unit,
                        meta={**r.meta, "aggregate": f"{how}, mean over problems"})

    def totals(self, kind: str) -> Float[Tensor, " problem"]:
        """Per problem, the sum over every component of ``kind`` (e.g. all query heads of all layers)."""
        self.mean(kind)  # validates the kind
        return self.per_problem[kind].values.sum(0)

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
                reduce: str = "sum", keep_maps: int = 1, progress: bool = True) -> SubtaskAtP:
    """AtP (or layer-wise IG, ``method="ig"``, ``steps`` alphas) of every pair, noising, metric = the pair's logit
    difference at its decision; each problem's [component, pos] map reduced over positions (``reduce``, default the
    signed sum: the estimate of patching the component at every position at once; see the module docstring)."""

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


def exact_subtask(model, pairs: PairSet, *, kinds: Sequence[str] = ("mlp_out", "z"), max_batch: int | None = None,
                  progress: bool = True) -> SubtaskAtP:
    """Exact whole-component noising patches of every pair: the corrupted activation of one component (a layer's
    ``mlp_out``, a head's ``z``, ...) at *every* position at once into the clean run, the change of the pair's logit
    difference. :func:`mechlab.methods.patching.activation_patching` with ``per_position=False``, one call per pair
    and kind (its patches run batched). The ground truth :func:`atp_subtask`'s signed sum estimates.
    """
    if not pairs.pairs:
        raise ValueError(f"{pairs.subtask} has no pairs ({pairs.summary()}); nothing to patch.")
    kinds = list(kinds)
    device = next(model.parameters()).device
    scores: dict[str, list[Tensor]] = {k: [] for k in kinds}
    results: dict[str, Labelled] = {}
    m_clean, m_corr = [], []
    for pair in tqdm(pairs.pairs, desc=f"exact patches {pairs.subtask}", disable=not progress):
        clean, corrupted = pair.clean_tokens[None].to(device), pair.corrupted_tokens[None].to(device)
        metric = logit_diff_metric(torch.tensor([pair.correct_id]), torch.tensor([pair.incorrect_id]), pos=-1)
        for k in kinds:
            results[k] = activation_patching(model, clean, corrupted, metric, kind=k, per_position=False,
                                             effect=True, max_batch=max_batch, progress=False)
            scores[k].append(results[k].values.float())
        m_clean.append(results[kinds[0]].meta["metric_clean"])
        m_corr.append(results[kinds[0]].meta["metric_corrupted"])
    per_problem = {k: Labelled(torch.stack(scores[k], 1), results[k].labels, unit=results[k].unit,
                               axes=("component", "problem"),
                               meta={"method": "exact activation patching", "kind": k, "direction": "noising",
                                     "patched": "one component at every position at once"})
                   for k in kinds}
    return SubtaskAtP(pairs.subtask, "exact", "all at once", per_problem, [], torch.tensor(m_clean),
                      torch.tensor(m_corr))


@torch.no_grad()
def _frozen_exact_last_mlp(model, clean, corrupted, metric) -> float:
    """Exact noising patch of the last layer's whole ``mlp_out`` with the final norm's scale frozen at the clean run."""
    name = hook_name("mlp_out", model.cfg.n_layers - 1)
    _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n in (name, FINAL_NORM_SCALE))
    _, corr_cache = model.run_with_cache(corrupted, names_filter=lambda n: n == name)
    base = metric(model(clean)).flatten()[0]
    hooks = [(name, lambda act, hook: corr_cache[name]),
             (FINAL_NORM_SCALE, lambda act, hook: clean_cache[FINAL_NORM_SCALE])]
    patched = model.run_with_hooks(clean, fwd_hooks=hooks)
    return float(metric(patched).flatten()[0] - base)


def last_mlp_linearity(model, pairs: PairSet, *, progress: bool = True) -> Float[Tensor, "2 problem"]:
    """Per pair, [AtP, exact] of patching the **last layer's** whole ``mlp_out`` (noising), both with the final norm's
    scale frozen at the clean run: nothing non-linear follows that activation then, so the two must agree (up to
    rounding). With the scale live (what :func:`atp_subtask` and :func:`exact_subtask` use, and what the model does)
    even this MLP's AtP is off; earlier MLPs' effects also pass through later layers."""
    if not pairs.pairs:
        raise ValueError(f"{pairs.subtask} has no pairs ({pairs.summary()}); nothing to patch.")
    device, last = next(model.parameters()).device, model.cfg.n_layers - 1
    out = []
    for pair in tqdm(pairs.pairs, desc=f"last MLP {pairs.subtask}", disable=not progress):
        clean, corrupted = pair.clean_tokens[None].to(device), pair.corrupted_tokens[None].to(device)
        metric = logit_diff_metric(torch.tensor([pair.correct_id]), torch.tensor([pair.incorrect_id]), pos=-1)
        atp = attribution_patching(model, clean, corrupted, metric, kinds=["mlp_out"], layers=[last],
                                   freeze_final_scale=True)["mlp_out"].values.sum()
        out.append(torch.stack([atp.float().cpu(), torch.tensor(_frozen_exact_last_mlp(model, clean, corrupted,
                                                                                          metric))]))
    return torch.stack(out, 1)


def assert_last_mlp_exact(pairs_values: Float[Tensor, "2 problem"], dtype: torch.dtype, *, atol: float = 1e-4
                          ) -> float:
    """:func:`last_mlp_linearity`'s AtP equals its exact patch on every pair, to ``atol`` plus the dtype's
    :func:`tolerance` times the effect's size. Returns the largest gap."""
    atp, exact = pairs_values.float()
    gap = (atp - exact).abs()
    tol = atol + tolerance(dtype) * (exact.abs() + 1.0)
    if bool((gap > tol).any()):
        i = int((gap - tol).argmax())
        _fail(f"frozen-scale AtP of the last MLP is not exact on pair {i}: AtP {float(atp[i]):+.5f}, exact "
              f"{float(exact[i]):+.5f} (gap {float(gap[i]):.2g} > {float(tol[i]):.2g}).")
    return float(gap.max())


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


# ---------------------------------------------------------------------------------------------------------
# rank correlation and the notebook's checks


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 in fp64, tied values sharing their mean rank."""
    order = x.argsort()
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(a: Float[Tensor, " n"], b: Float[Tensor, " n"]) -> float:
    """Spearman's rank correlation of two 1-d tensors (ties get their mean rank): +1 = same order, -1 = reversed."""
    a, b = torch.as_tensor(a).detach().double().cpu(), torch.as_tensor(b).detach().double().cpu()
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"spearman needs two 1-d tensors of the same length >= 2; got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    if denom == 0:
        raise ValueError("spearman is undefined when one input is constant (every value tied); got "
                         f"{a.tolist()[:6]} and {b.tolist()[:6]}.")
    return float((ra * rb).sum()) / denom


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for sums the model computed in ``dtype``: 1e-5 in fp32, ``4 * eps`` in fp16 / bf16
    (bf16: 0.031). Scale it by the size of the terms summed (see :func:`assert_dla_complete`)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}; pass the model's floating dtype, e.g. next(model.parameters()).dtype.")
    return max(1e-5, 4 * torch.finfo(dtype).eps)


def _fail(message: str) -> None:
    raise AssertionError(message)


def assert_dla_complete(dla: SubtaskDLA, logit_diff: Float[Tensor, " problem"], dtype: torch.dtype) -> float:
    """Each problem's DLA components add up to its logit difference, and that equals ``logit_diff`` from a plain
    forward pass (e.g. :func:`mechlab.cot.pairs.pair_logit_diffs`), to :func:`tolerance` (``dtype``) times the size of
    the terms (sum of |component|). Returns the largest gap."""
    values = dla.components.values.float()
    scale = values.abs().sum(0) + logit_diff.abs().float() + 1.0
    atol = tolerance(dtype) * scale
    gaps = {"components' sum vs the DLA's logit diff": (values.sum(0) - dla.logit_diff.float()).abs(),
            "DLA's logit diff vs a forward pass": (dla.logit_diff.float() - logit_diff.float()).abs()}
    for what, gap in gaps.items():
        bad = gap > atol
        if bool(bad.any()):
            i = int((gap - atol).argmax())
            _fail(f"{dla.subtask}: {what} differ on {int(bad.sum())} of {len(gap)} problems; worst problem {i}: "
                  f"gap {float(gap[i]):.3g} > tolerance {float(atol[i]):.3g} ({dtype}).")
    return max(float(g.max()) for g in gaps.values())


def assert_aggregate(atp: SubtaskAtP, kind: str) -> None:
    """``atp.mean(kind)`` is :func:`aggregate_positions` of the kept per-problem maps (all pairs must be kept:
    ``keep_maps=len(pairs)``), with the result's own reduction."""
    if len(atp.maps) != atp.n_problems:
        raise ValueError(f"assert_aggregate needs every problem's map; this result kept {len(atp.maps)} of "
                         f"{atp.n_problems}. Run atp_subtask(..., keep_maps=len(pairs)).")
    want = aggregate_positions([m[kind].values for m in atp.maps], atp.reduce)
    got = atp.mean(kind).values
    if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
        _fail(f"{atp.subtask} {kind}: the aggregate differs from aggregate_positions(maps, {atp.reduce!r}) by up to "
              f"{float((got - want).abs().max()):.3g}.")


def assert_ranking(figure: Labelled, exact: Labelled, *, min_spearman: float = 0.9, same_sign: bool = False,
                   what: str = "") -> float:
    """The figure's ranking by |value| matches the exact patches' ranking by |mean effect|: Spearman >=
    ``min_spearman``. With ``same_sign``, every component whose exact effect is at least 5 % of the largest also has
    the figure's sign. Returns the Spearman correlation."""
    if list(figure.labels) != list(exact.labels):
        raise ValueError(f"figure and exact results must have the same components in the same order; got "
                         f"{figure.labels[:4]}... and {exact.labels[:4]}...")
    f, e = figure.values.float(), exact.values.float()
    rho = spearman(f.abs(), e.abs())
    if rho < min_spearman - 1e-9:  # rounding: identical orders give 0.9999999...
        _fail(f"{what}: Spearman of |figure| vs |exact patch| is {rho:.2f} < {min_spearman}; figure top "
              f"{[n for n, _ in figure.top(3)]}, exact top {[n for n, _ in exact.top(3)]}.")
    if same_sign:
        big = (e.abs() >= 0.05 * float(e.abs().max())) & (e != 0)
        wrong = [lab for lab, b, x, y in zip(figure.labels, big.tolist(), f.tolist(), e.tolist(), strict=True)
                 if b and x * y <= 0]
        if wrong:
            _fail(f"{what}: the figure's sign differs from the exact patch's on {wrong} "
                  f"(figure {[round(float(figure[w]), 3) for w in wrong]}, exact "
                  f"{[round(float(exact[w]), 3) for w in wrong]}).")
    return rho


def sign_agreement(figure: SubtaskAtP, exact: SubtaskAtP, kind: str) -> float:
    """Fraction of problems on which the total over ``kind``'s components has the same sign in both results."""
    a, b = figure.totals(kind), exact.totals(kind)
    if a.shape != b.shape:
        raise ValueError(f"{kind}: the two results hold {len(a)} and {len(b)} problems; compute them on the same "
                         "pairs.")
    return float((torch.sign(a) == torch.sign(b)).float().mean())


def assert_ig_complete(ig: SubtaskAtP, clean: Float[Tensor, " problem"], corrupted: Float[Tensor, " problem"],
                       dtype: torch.dtype, *, rtol: float = 0.05) -> None:
    """IG on ``resid_pre`` is complete: each layer's total equals corrupted - clean (patching a whole residual stream
    layer gives the corrupted run), within ``rtol`` of the gap plus the dtype's :func:`tolerance`."""
    ig.mean("resid_pre")  # validates the kind
    values = ig.per_problem["resid_pre"].values.float()
    gap = (corrupted - clean).float()
    atol = rtol * gap.abs() + tolerance(dtype) * (clean.abs() + corrupted.abs()).float() + 1e-3
    err = (values - gap[None]).abs()
    if bool((err > atol[None]).any()):
        layer, prob = (int(i) for i in torch.unravel_index((err - atol[None]).argmax(), err.shape))
        _fail(f"{ig.subtask}: IG on {ig.per_problem['resid_pre'].labels[layer]} of problem {prob} gives "
              f"{float(values[layer, prob]):+.3f}, the gap corrupted - clean is {float(gap[prob]):+.3f}.")


__all__ = ["ATP_KINDS", "REDUCTIONS", "SubtaskAtP", "SubtaskDLA", "aggregate_positions", "assert_aggregate",
           "assert_dla_complete", "assert_ig_complete", "assert_last_mlp_exact", "assert_ranking",
           "atp_subtask", "dla_subtask", "exact_subtask", "last_mlp_linearity",
           "pair_head_patterns", "reduce_positions", "sign_agreement", "spearman", "tolerance", "top_heads"]
