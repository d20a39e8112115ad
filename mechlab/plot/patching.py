"""Patching figures: heatmaps side by side on one colour scale (noising next to denoising, exact next to AtP).

Example::

    import torch
    from mechlab.plot.patching import heatmap_panels
    fig = heatmap_panels({"noising": -torch.rand(3, 5), "denoising": torch.rand(3, 5)},
                         y=["L0", "L1", "L2"], x=[f"{i}" for i in range(5)], title="resid_pre")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from mechlab.plot.basic import to_numpy


def heatmap_panels(
    maps: Mapping[str, Float[Tensor, "rows cols"]],
    *,
    x: Sequence[str] | None = None,
    y: Sequence[str] | None = None,
    xaxis: str = "position",
    yaxis: str = "",
    title: str = "",
    zlabel: str = "value",
) -> go.Figure:
    """One heatmap per entry of ``maps`` (panel titles = keys), side by side, sharing a colour scale centred on 0
    (red positive, blue negative) so that panels compare by colour. ``x`` / ``y`` label the columns and rows."""
    arrays = {name: to_numpy(values) for name, values in maps.items()}
    if not arrays:
        raise ValueError("heatmap_panels got no maps; pass {panel title: [rows, cols] tensor, ...}.")
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"heatmap_panels needs 2-d maps of one shape; got {[a.shape for a in arrays.values()]}.")
    rows, cols = next(iter(shapes))
    for labels, n, axis in ((x, cols, "x"), (y, rows, "y")):
        if labels is not None and len(labels) != n:
            what = "columns" if axis == "x" else "rows"
            raise ValueError(f"heatmap_panels: {len(labels)} {axis} labels for {n} {what}.")
    bound = max(float(np.nanmax(np.abs(a))) for a in arrays.values()) or 1.0
    xs = [f"{i}" for i in range(cols)] if x is None else [str(v) for v in x]
    ys = [f"{i}" for i in range(rows)] if y is None else [str(v) for v in y]
    fig = make_subplots(rows=1, cols=len(arrays), subplot_titles=list(arrays), shared_yaxes=True)
    for i, arr in enumerate(arrays.values(), start=1):
        fig.add_trace(go.Heatmap(z=arr, x=list(range(cols)), y=list(range(rows)), customdata=np.array(
            [[f"{ys[r]}, {xs[c]}" for c in range(cols)] for r in range(rows)]), colorscale="RdBu_r", zmin=-bound,
            zmax=bound, showscale=i == len(arrays), colorbar=dict(title=zlabel),
            hovertemplate="%{customdata}: %{z:.3g}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text=xaxis, tickmode="array", tickvals=list(range(cols)), ticktext=xs, row=1, col=i)
    fig.update_yaxes(title_text=yaxis, tickmode="array", tickvals=list(range(rows)), ticktext=ys, autorange="reversed",
                     row=1, col=1)
    fig.update_layout(title=title)
    return fig


__all__ = ["heatmap_panels"]
