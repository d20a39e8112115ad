"""Checkers for unit 06 (backup heads and self-repair): a head's direct effect with the clean run's norm scale, the
self-repair formula, and the backup slope fit.

Each runs the learner's function and a reference on small random cases and raises
:class:`mechlab.checks.core.CheckFailed` naming every failing case and the mistake it recognises::

    from mechlab.checks import unit06
    unit06.check_head_direct_effect(fn)   # fn(z, W_O, readout, ln_weight, scales, centre) -> [batch, pos]
    unit06.check_self_repair(fn)          # fn(delta_logit, clean_de, ablated_de) -> [...]
    unit06.check_backup_slope(fn)         # fn(x, y, intercept, top_percent) -> (slope, intercept)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.checks.core import Case, compare_tensors, negated, run_cases


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed))


# ---------------------------------------------------------------------------------------------------------
# 1. a head's direct effect, read with the clean run's scale


def head_direct_effect(
    z: Float[Tensor, "batch pos d_head"],
    W_O: Float[Tensor, "d_head d_model"],
    readout: Float[Tensor, "batch pos d_model"],
    ln_weight: Float[Tensor, " d_model"],
    scales: dict[str, Float[Tensor, "batch pos 1"]],
    centre: bool,
) -> Float[Tensor, "batch pos"]:
    """Reference: the head's output ``z @ W_O``, centred when the final norm is a LayerNorm, divided by the
    *clean* run's scale, times the norm weight, dotted with the readout direction at each (batch, pos)."""
    out = z @ W_O
    if centre:
        out = out - out.mean(-1, keepdim=True)
    return ((out / scales["clean"]) * ln_weight * readout).sum(-1)


def _de_cases() -> list[Case]:
    cases = []
    for name, (b, p, dh, dm, centre, seed) in {
        "LayerNorm model, 2 prompts x 5 positions": (2, 5, 4, 16, True, 1),
        "RMSNorm model (no centring), 3 prompts x 4 positions": (3, 4, 8, 12, False, 2),
        "LayerNorm, one prompt": (1, 7, 4, 8, True, 3),
    }.items():
        z, w_o = _randn(b, p, dh, seed=seed), _randn(dh, dm, seed=seed + 10) / dh ** 0.5
        readout, weight = _randn(b, p, dm, seed=seed + 20), 1 + 0.5 * _randn(dm, seed=seed + 30)
        clean = 0.5 + 3 * torch.rand(b, p, 1, generator=_gen(seed + 40))
        ablated = clean * (0.6 + 0.3 * torch.rand(b, p, 1, generator=_gen(seed + 50)))  # ablation shrinks the scale
        cases.append(Case(name, (z, w_o, readout, weight, {"clean": clean, "ablated": ablated}, centre)))
    return cases


def check_head_direct_effect(fn: Callable) -> None:
    """``fn(z, W_O, readout, ln_weight, scales, centre)``: the direct effect of one head at every (batch, pos), with
    ``scales["clean"]`` frozen as the final norm's scale (``scales["ablated"]`` is the trap). Shape [batch, pos]."""
    mistakes = {
        "the sign is flipped": negated(head_direct_effect),
        "divided by the *ablated* run's scale; freeze the clean run's (scales['clean'])":
            lambda z, W_O, r, w, scales, c: head_direct_effect(z, W_O, r, w, {"clean": scales["ablated"]}, c),
        "no centring although the final norm is a LayerNorm (centre=True)":
            lambda z, W_O, r, w, scales, c: head_direct_effect(z, W_O, r, w, scales, False),
        "centred although the final norm is an RMSNorm (centre=False)":
            lambda z, W_O, r, w, scales, c: head_direct_effect(z, W_O, r, w, scales, True),
        "the norm's weight is missing":
            lambda z, W_O, r, w, scales, c: head_direct_effect(z, W_O, r, torch.ones_like(w), scales, c),
    }
    run_cases(fn, head_direct_effect, _de_cases(), name="check_head_direct_effect", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# 2. self-repair


def self_repair(
    delta_logit: Float[Tensor, "..."], clean_de: Float[Tensor, "..."], ablated_de: Float[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """Reference: what the ablation did to the logit, minus what it did to the ablated head's own direct effect."""
    return delta_logit - (ablated_de - clean_de)


def check_self_repair(fn: Callable) -> None:
    """``fn(delta_logit, clean_de, ablated_de)`` -> self-repair, elementwise, any shape."""
    cases = []
    for name, shape, seed in (("3 prompts x 4 positions", (3, 4), 1), ("5 heads x 2 prompts x 3 positions",
                                                                       (5, 2, 3), 2)):
        clean_de = _randn(*shape, seed=seed)
        ablated_de = 0.2 * _randn(*shape, seed=seed + 1)
        delta = -(clean_de - ablated_de) * 0.6 + 0.1 * _randn(*shape, seed=seed + 2)  # part of the loss repaired
        cases.append(Case(name, (delta, clean_de, ablated_de)))
    mistakes = {
        "the sign is flipped overall": negated(self_repair),
        "the direct-effect change enters with the wrong sign: self-repair = delta_logit - (ablated_de - clean_de)":
            lambda d, c, a: d + (a - c),
        "clean_de is missing: subtract the *change* in the head's direct effect, ablated_de - clean_de":
            lambda d, c, a: d - a,
    }
    run_cases(fn, self_repair, cases, name="check_self_repair", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# 3. the backup slope


def backup_slope(
    x: Float[Tensor, " n"], y: Float[Tensor, " n"], intercept: bool, top_percent: float | None
) -> tuple[float, float]:
    """Reference (numpy): keep the ``round(n * top_percent / 100)`` points (at least 1) with the largest x (all
    when None), then least squares ``y = slope * x + c`` (``c`` fixed at 0 when ``intercept`` is False). Returns
    ``(slope, c)``."""
    return _fit(x, y, intercept, top_percent, lambda xs, p: np.argsort(-xs, kind="stable")[:_count(xs.size, p)])


def _count(n: int, top_percent: float) -> int:
    return max(1, int(round(n * top_percent / 100)))


def _fit(x, y, intercept: bool, top_percent: float | None, select: Callable) -> tuple[float, float]:
    """Least squares on the points ``select(xs, top_percent)`` picks (all when ``top_percent`` is None)."""
    xs, ys = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if top_percent is not None:
        keep = select(xs, top_percent)
        xs, ys = xs[keep], ys[keep]
    design = np.stack([xs, np.ones_like(xs)], 1) if intercept else xs[:, None]
    coef = np.linalg.lstsq(design, ys, rcond=None)[0]
    return float(coef[0]), float(coef[1]) if intercept else 0.0


def _compare_pair(got, want) -> str:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"returned {type(got).__name__} {got!r}; expected a pair (slope, intercept)"
    try:
        got_t = torch.tensor([float(got[0]), float(got[1])])
    except (TypeError, ValueError):
        return f"returned {got!r}; expected two numbers (slope, intercept)"
    return compare_tensors(got_t, torch.tensor(want, dtype=torch.float32), atol=1e-4, rtol=1e-4,
                           what="(slope, intercept)")


def _top(count: Callable[[int, float], int]) -> Callable:
    return lambda xs, p: np.argsort(-xs, kind="stable")[:count(xs.size, p)]


SLOPE_MISTAKES = {
    # a quantile threshold (x >= quantile(1 - top_percent / 100)) keeps the int() or the ceil count, depending on n
    "fewer points than round(n * top_percent / 100): the count was rounded down (int() or floor, or a quantile "
    "threshold); keep the top round(n * top_percent / 100) points by x":
        lambda x, y, c, p: _fit(x, y, c, p, _top(lambda n, q: max(1, int(n * q / 100)))),
    "more points than round(n * top_percent / 100): the count was rounded up (ceil, or a quantile threshold); keep "
    "the top round(n * top_percent / 100) points by x":
        lambda x, y, c, p: _fit(x, y, c, p, _top(lambda n, q: max(1, math.ceil(n * q / 100)))),
    "the points with the *smallest* x were kept; keep the largest direct effects":
        lambda x, y, c, p: _fit(x, y, c, p, lambda xs, q: np.argsort(xs, kind="stable")[:_count(xs.size, q)]),
    "no top-percent filter: every point was fitted": lambda x, y, c, p: backup_slope(x, y, c, None),
    "the intercept was ignored: the line always goes through the origin":
        lambda x, y, c, p: backup_slope(x, y, False, p),
    "an intercept was fitted even when intercept=False": lambda x, y, c, p: backup_slope(x, y, True, p)[:1] + (0.0,),
    "x and y are swapped": lambda x, y, c, p: backup_slope(y, x, c, p),
}


def check_backup_slope(fn: Callable) -> None:
    """``fn(x, y, intercept, top_percent)`` -> ``(slope, intercept)`` of the least-squares line (intercept 0.0
    when fitting through the origin), on the ``round(n * top_percent / 100)`` points with the largest x (all when
    None). Two cases make ``n * top_percent / 100`` a non-integer (7.3 and 7.7), so that ``int()``, ``ceil`` and a
    quantile threshold each keep a different number of points than ``round()``."""
    x = _randn(300, seed=7)
    y = -0.4 * x + 0.3 + 0.2 * _randn(300, seed=8) + 0.3 * x.clamp(min=1.0)  # bends for the largest x
    cases = [Case("all points, with intercept", (x, y, True, None)),
             Case("all points, through the origin", (x, y, False, None)),
             Case("top 10 % by direct effect, with intercept", (x, y, True, 10.0)),
             Case("top 20 %, through the origin", (x, y, False, 20.0))]
    for n in (73, 77):  # 10 % of n is 7.3 / 7.7 points: the count must be round()ed
        xn = _randn(n, seed=n)
        yn = -0.5 * xn + 0.8 * xn.clamp(min=0.6) ** 2 + 0.05 * _randn(n, seed=n + 1)  # curved: each point matters
        cases.append(Case(f"{n} points, top 10 % = {n / 10:.1f} points, with intercept", (xn, yn, True, 10.0),
                          hint=f"the number of points kept: round({n} * 10 / 100) = {round(n / 10)}"))
    run_cases(fn, backup_slope, cases, name="check_backup_slope", compare=_compare_pair, mistakes=SLOPE_MISTAKES)


__all__ = ["SLOPE_MISTAKES", "backup_slope", "check_backup_slope", "check_head_direct_effect", "check_self_repair",
           "head_direct_effect", "self_repair"]
