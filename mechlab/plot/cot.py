"""Figures for unit 07's subtask analyses (``mechlab.cot.analysis`` results): panels of [layer, component]
heatmaps on one symmetric colour scale, a per-position map of one problem. They arrange results; they never
compute or show."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechlab.core.results import Labelled


def _zmax(*tensors) -> float:
    return max(float(t.abs().max()) for t in tensors if t.numel()) or 1.0


def _heat(z, x, y, zmax):
    return go.Heatmap(z=z, x=x, y=y, zmin=-zmax, zmax=zmax, zmid=0, colorscale="RdBu_r", coloraxis="coloraxis",
                      hovertemplate="%{y} %{x}: %{z:.3g}<extra></extra>")


def _panels(grids, xs, ys, titles, widths, title: str, height: int = 420) -> go.Figure:
    """One heatmap per (grid, x labels, y labels), side by side, sharing a colour scale centred on 0."""
    zmax = _zmax(*grids)
    fig = make_subplots(1, len(grids), subplot_titles=titles, column_widths=widths)
    for i, (g, x, y) in enumerate(zip(grids, xs, ys, strict=True), start=1):
        fig.add_trace(_heat(g.numpy(), x, y, zmax), 1, i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, coloraxis=dict(colorscale="RdBu_r", cmid=0, cmin=-zmax, cmax=zmax),
                      height=height, width=1000)
    return fig


def _what(result) -> str:
    """How a SubtaskAtP's numbers were made, for a title."""
    if result.method == "exact":
        return "exact whole-component patches (noising)"
    return f"{result.method.upper()} (noising), {result.reduce} over positions"


def figure_dla(dla, *, title: str = "") -> go.Figure:
    """Three panels as in the seed: accumulated residual stream, MLP outputs, heads ([layer, head])."""
    layers = [f"L{i}" for i in range(dla.n_layers)]
    return _panels([dla.resid.values[:, None], dla.mlps()[:, None], dla.heads()],
                   [["resid"], ["mlp"], [f"H{h}" for h in range(dla.n_heads)]],
                   [dla.resid.labels, layers, layers],
                   ("residual stream (accumulated)", "MLP", "attention heads"), [0.15, 0.15, 0.7],
                   title or f"DLA, {dla.subtask}: mean over {dla.n_problems} problems (logit diff)")


def figure_atp(atp, n_layers: int, *, mlp=None, title: str = "") -> go.Figure:
    """resid_pre / mlp_out / heads (z) panels of an AtP, IG or exact result (mean over problems); in noising an
    important component is blue (negative).

    ``mlp``: another result (e.g. :func:`mechlab.cot.analysis.exact_subtask`'s) to draw the MLP panel from, with its
    method in the panel's title. First-order AtP mis-ranks the MLPs of earlier layers (their effect passes through
    later layers), so unit 07 draws that panel from exact whole-MLP patches and keeps AtP for the heads.
    """
    panels = [k for k in ("resid_pre", "mlp_out", "z") if k in atp.per_problem or (k == "mlp_out" and mlp)]
    if not panels:
        raise ValueError(f"figure_atp needs resid_pre, mlp_out or z; this result holds {list(atp.per_problem)}.")
    if mlp is not None and "mlp_out" not in mlp.per_problem:
        raise ValueError(f"mlp= must hold mlp_out (e.g. exact_subtask(model, pairs, kinds=['mlp_out'])); it holds "
                         f"{list(mlp.per_problem)}.")
    sources = {k: (mlp if k == "mlp_out" and mlp is not None else atp) for k in panels}
    grids = [sources[k].grid(k, n_layers) for k in panels]
    names = [f"{k} ({sources[k].method})" if mlp is not None and k == "mlp_out" else k for k in panels]
    layers = [f"L{i}" for i in range(n_layers)]
    return _panels(grids, [[f"H{h}" for h in range(g.shape[1])] if k == "z" else [k] for k, g in zip(panels, grids,
                                                                                                 strict=True)],
                   [layers] * len(panels), names, [0.7 if k == "z" else 0.15 for k in panels],
                   title or f"{_what(atp)}, {atp.subtask}: mean over {atp.n_problems} problems"
                   + (f"; MLPs: {_what(mlp)}" if mlp is not None else ""))


def figure_qkv(atp, n_layers: int, *, title: str = "") -> go.Figure:
    """Queries per query head, keys and values per K/V head (one column in a multi-query model)."""
    panels = [k for k in ("q", "k", "v") if k in atp.per_problem]
    if not panels:
        raise ValueError(f"figure_qkv needs q, k or v; this result holds {list(atp.per_problem)}.")
    grids = [atp.grid(k, n_layers) for k in panels]
    tags = ["KV" if k in ("k", "v") and g.shape[1] != grids[0].shape[1] else "H" for k, g in zip(panels, grids,
                                                                                                 strict=True)]
    total = sum(g.shape[1] for g in grids)
    return _panels(grids, [[f"{t}{h}" for h in range(g.shape[1])] for t, g in zip(tags, grids, strict=True)],
                   [[f"L{i}" for i in range(n_layers)]] * len(panels),
                   [f"{k} ({g.shape[1]} head{'s' if g.shape[1] > 1 else ''})" for k, g in zip(panels, grids,
                                                                                              strict=True)],
                   [max(0.12, g.shape[1] / total) for g in grids],
                   title or f"{_what(atp)} on queries, keys, values, {atp.subtask}: mean over {atp.n_problems} "
                   "problems")


def figure_position_map(result: Labelled, tokens: Sequence[str], *, last: int = 40, title: str = "") -> go.Figure:
    """One problem's [component, pos] map over its ``last`` positions, x labelled by token."""
    values = result.values[:, -last:]
    toks = list(tokens)[-values.shape[1]:]
    x = [f"{i}: {t!r}"[:20] for i, t in enumerate(toks, start=len(tokens) - len(toks))]
    return _panels([values], [x], [result.labels], None, None,
                   title or f"{result.meta.get('method', '')} per position ({result.meta.get('kind', '')})",
                   height=300 + 12 * len(result))


__all__ = ["figure_atp", "figure_dla", "figure_position_map", "figure_qkv"]
