"""Figures for unit 03's toy model: every head's attention pattern side by side, and tables per head.

Example::

    import torch
    from mechlab.plot.toy import head_patterns
    fig = head_patterns(torch.rand(3, 4, 4).softmax(-1), ["L0H0", "L0H1", "L0H2"], ["2", "9", "3", "0"])
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from mechlab.plot.basic import to_numpy


def head_facets(
    values: Float[Tensor, "head rows cols"],
    head_names: Sequence[str],
    *,
    x: Sequence[str],
    y: Sequence[str],
    xaxis: str = "",
    yaxis: str = "",
    title: str = "",
    zlabel: str = "value",
    zmid: float | None = 0.0,
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """One heatmap per head, side by side, on a shared colour scale; hover names the head, row and column."""
    arr = to_numpy(values)
    if arr.ndim != 3 or arr.shape[0] != len(head_names):
        raise ValueError(f"head_facets: values of shape {arr.shape} and {len(head_names)} head names; expected "
                         "[head, rows, cols] with one name per head.")
    if arr.shape[1] != len(y) or arr.shape[2] != len(x):
        raise ValueError(f"head_facets: {len(y)} row and {len(x)} column labels for rows x cols = "
                         f"{arr.shape[1]} x {arr.shape[2]}.")
    lo = float(arr.min()) if zmin is None else zmin
    hi = float(arr.max()) if zmax is None else zmax
    fig = make_subplots(rows=1, cols=len(head_names), subplot_titles=list(head_names), shared_yaxes=True)
    for i, name in enumerate(head_names):
        fig.add_trace(go.Heatmap(
            z=arr[i], x=list(x), y=list(y), zmin=lo, zmax=hi, zmid=zmid,
            colorscale="RdBu_r" if zmid is not None else "Blues", showscale=i == 0, colorbar=dict(title=zlabel),
            hovertemplate=f"{name}<br>{yaxis} %{{y}}<br>{xaxis} %{{x}}<br>%{{z:.3g}}<extra></extra>"), 1, i + 1)
        fig.update_xaxes(title_text=xaxis, type="category", row=1, col=i + 1)
    fig.update_yaxes(title_text=yaxis, type="category", autorange="reversed", row=1, col=1)
    fig.update_layout(title=title)
    return fig


def head_patterns(
    pattern: Float[Tensor, "head query_pos key_pos"], head_names: Sequence[str], tokens: Sequence[str]
) -> go.Figure:
    """Attention patterns of every head on one sequence: rows are queries, columns keys, labelled by token."""
    names = [f"{i}: {t}" for i, t in enumerate(tokens)]
    return head_facets(pattern, head_names, x=names, y=names, xaxis="key", yaxis="query",
                       title="attention pattern per head", zlabel="weight", zmid=None, zmin=0.0, zmax=1.0)


__all__ = ["head_facets", "head_patterns"]
