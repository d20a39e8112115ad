"""Unit 06's figures: one head's backup scatter with its fitted line, and the later heads' change when it is ablated.

Both take what ``mechlab.methods.self_repair`` computed (a ``BackupFit``, a ``Labelled``) and only draw it.

Example::

    import torch
    from mechlab.core.results import Labelled
    from mechlab.plot.self_repair import figure_later_heads
    fig = figure_later_heads(Labelled(torch.tensor([0.3, -0.2]), ["L1H0", "L1H1"]), ablated="L0H1")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mechlab.core.results import Labelled
from mechlab.plot.basic import to_numpy

WORSE, BETTER = "#d62728", "#1f77b4"  # red: the head lost direct effect; blue: it stepped in


def figure_backup_fit(fit, *, labels: Sequence[str] | None = None, xaxis: str = "", yaxis: str = "",
                      title: str = "") -> go.Figure:
    """The (batch, pos) points of one head's backup scatter (the fitted ones solid, the rest faint) and the fitted
    line ``y = slope * x + intercept`` drawn over the fitted points' x-range. ``fit`` is a ``BackupFit``."""
    x, y, kept = to_numpy(fit.x).ravel(), to_numpy(fit.y).ravel(), np.asarray(to_numpy(fit.kept), dtype=bool).ravel()
    if not x.shape == y.shape == kept.shape:
        raise ValueError(f"figure_backup_fit: x, y and kept have {x.size}, {y.size} and {kept.size} points; "
                         "pass one of each per point.")
    if not kept.any():
        raise ValueError("figure_backup_fit: the fit kept no points; there is no line to draw.")
    if labels is not None and len(labels) != x.size:
        raise ValueError(f"figure_backup_fit: {len(labels)} labels for {x.size} points.")
    text = np.asarray(list(labels)) if labels is not None else None
    fig = go.Figure()
    for mask, name, opacity in ((~kept, "not fitted", 0.25), (kept, "fitted", 0.9)):
        fig.add_trace(go.Scatter(x=x[mask], y=y[mask], mode="markers", name=name,
                                 marker=dict(size=4, opacity=opacity, color=BETTER if name == "fitted" else "gray"),
                                 text=None if text is None else list(text[mask]),
                                 hovertemplate=("%{text}<br>" if text is not None else "")
                                 + "x=%{x:.3g}<br>y=%{y:.3g}<extra></extra>"))
    lo, hi = float(x[kept].min()), float(x[kept].max())
    fig.add_trace(go.Scatter(x=[lo, hi], y=[fit.slope * lo + fit.intercept, fit.slope * hi + fit.intercept],
                             mode="lines", line=dict(color=WORSE), hoverinfo="skip",
                             name=f"fit: slope {fit.slope:+.3f}, intercept {fit.intercept:+.3f}"))
    fig.update_layout(title=title or f"Backup of {fit.label} ({fit.which})", xaxis_title=xaxis,
                      yaxis_title=yaxis, showlegend=True)
    return fig


def figure_later_heads(changes: Labelled, *, ablated: str, title: str = "") -> go.Figure:
    """One bar per later head: its change of direct effect when ``ablated`` is ablated (red below 0: it got worse)."""
    values = to_numpy(changes.values).ravel()
    if values.size != len(changes.labels):
        raise ValueError(f"figure_later_heads: {values.size} values for {len(changes.labels)} labels; pass one number "
                         "per head (e.g. mechlab.methods.self_repair.later_head_changes).")
    fig = go.Figure(go.Bar(x=list(changes.labels), y=values, marker_color=[WORSE if v < 0 else BETTER for v in values],
                           hovertemplate="%{x}: %{y:+.3g}<extra></extra>"))
    fig.update_layout(title=title or f"Change of each later head's direct effect when {ablated} is ablated",
                      xaxis_title="head", yaxis_title=changes.unit or "change of direct effect", showlegend=False)
    return fig


__all__ = ["figure_backup_fit", "figure_later_heads"]
