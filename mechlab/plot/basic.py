"""Labelled plotly builders: imshow, line, scatter and the layer x head grid every unit uses.

Example::

    import torch
    from mechlab.plot import layer_head_grid
    fig = layer_head_grid(torch.randn(2, 4), title="direct effect")   # hover says L{l}H{h}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor


def _np(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def imshow(
    values: Float[Tensor, "rows cols"],
    *,
    x: Sequence[str] | None = None,
    y: Sequence[str] | None = None,
    xaxis: str = "",
    yaxis: str = "",
    title: str = "",
    zmid: float | None = 0.0,
    colorscale: str = "RdBu",
    zlabel: str = "value",
    **kwargs,
) -> go.Figure:
    """A heatmap, centred on ``zmid`` (red positive, blue negative), with labelled axes."""
    arr = _np(values)
    if arr.ndim != 2:
        raise ValueError(f"imshow needs a 2-d tensor (rows x cols); got shape {arr.shape}. Index or facet first.")
    for labels, n, axis in ((x, arr.shape[1], "x"), (y, arr.shape[0], "y")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"imshow: {len(labels)} {axis} labels for {n} {'columns' if axis == 'x' else 'rows'}.")
    cmap = colorscale
    if colorscale == "RdBu":
        cmap = "RdBu_r"  # red for positive
    fig = px.imshow(arr, x=list(x) if x is not None else None, y=list(y) if y is not None else None,
                    color_continuous_midpoint=zmid, color_continuous_scale=cmap, aspect="auto",
                    labels={"x": xaxis, "y": yaxis, "color": zlabel}, title=title, **kwargs)
    return fig


def line(
    values: Float[Tensor, " n"] | Float[Tensor, "series n"],
    *,
    x: Sequence | None = None,
    names: Sequence[str] | None = None,
    xaxis: str = "",
    yaxis: str = "",
    title: str = "",
    hover: Sequence[str] | None = None,
) -> go.Figure:
    """One line, or one line per row of a 2-d tensor (named by ``names``); ``hover`` labels each x."""
    arr = _np(values)
    arr = arr[None] if arr.ndim == 1 else arr
    xs = list(x) if x is not None else list(range(arr.shape[1]))
    fig = go.Figure()
    for i, row in enumerate(arr):
        name = names[i] if names is not None else None
        fig.add_trace(go.Scatter(x=xs, y=row, mode="lines+markers", name=name,
                                 text=list(hover) if hover is not None else None,
                                 hovertemplate="%{text}<br>%{y:.3g}<extra></extra>" if hover is not None else None))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, showlegend=names is not None)
    return fig


def scatter(
    x: Float[Tensor, " n"],
    y: Float[Tensor, " n"],
    *,
    labels: Sequence[str] | None = None,
    color: Sequence | Tensor | None = None,
    xaxis: str = "",
    yaxis: str = "",
    title: str = "",
    diagonal: bool = False,
) -> go.Figure:
    """A scatter with a label per point on hover; ``diagonal=True`` draws y = x (for method-vs-method plots)."""
    xs, ys = _np(x).ravel(), _np(y).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"scatter: x has {xs.size} points but y has {ys.size}.")
    if labels is not None and len(labels) != xs.size:
        raise ValueError(f"scatter: {len(labels)} labels for {xs.size} points.")
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers", text=list(labels) if labels is not None else None,
        marker=dict(color=_np(color).ravel() if color is not None else None, colorscale="Viridis",
                    showscale=color is not None),
        hovertemplate=("%{text}<br>" if labels is not None else "") + "x=%{x:.3g}<br>y=%{y:.3g}<extra></extra>"))
    if diagonal and xs.size:
        lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="gray"),
                                 name="y = x", hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, showlegend=False)
    return fig


def layer_head_grid(
    values: Float[Tensor, "layer head"],
    *,
    title: str = "",
    zlabel: str = "value",
    zmid: float | None = 0.0,
) -> go.Figure:
    """A layer x head heatmap whose hover names each head ``L{l}H{h}``, for any model size."""
    arr = _np(values)
    if arr.ndim != 2:
        raise ValueError(f"layer_head_grid needs values of shape [layer, head]; got {arr.shape}.")
    n_layers, n_heads = arr.shape
    names = np.array([[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)])
    fig = go.Figure(go.Heatmap(z=arr, x=list(range(n_heads)), y=list(range(n_layers)), text=names,
                               colorscale="RdBu_r" if zmid is not None else "Viridis", zmid=zmid,
                               colorbar=dict(title=zlabel),
                               hovertemplate="%{text}: %{z:.3g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed")
    return fig


def to_numpy(x) -> np.ndarray:
    """Tensor (any device, any dtype) or array-like -> float numpy array."""
    return _np(x)


__all__ = ["imshow", "layer_head_grid", "line", "scatter", "to_numpy"]
