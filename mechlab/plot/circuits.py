"""Unit 03b: composition between heads as a layer-by-layer graph. Takes scores and labels; never computes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from mechlab.core.results import Labelled


def composition_graph(
    scores: Mapping[tuple[int, int], Labelled],
    *,
    n_layers: int,
    n_heads: int,
    threshold: float,
    title: str = "",
    marked: Sequence[str] = (),
    top_k: int | None = 3,
) -> go.Figure:
    """Heads as nodes (layer on x, head on y), an edge for each (sender, receiver) score above ``threshold``,
    keeping at most ``top_k`` senders per receiver (None: all), drawn in one trace broken by ``None``s so that a
    GPT-2 graph stays a few traces; three width bands by excess. ``marked`` heads are drawn in red.

    ``scores`` is what ``mechlab.methods.circuits.all_compositions`` returns: {(sender_layer, receiver_layer):
    Labelled [sender head, receiver head]}.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: expected a positive number of senders per receiver, or None for all.")
    edges = []  # (value, ls, s, lr, r)
    for (ls, lr), result in scores.items():
        for s in range(result.values.shape[0]):
            edges.extend((float(result.values[s, r]), ls, s, lr, r) for r in range(result.values.shape[1]))
    per_receiver: dict[tuple[int, int], list] = {}
    for edge in edges:
        if edge[0] > threshold:
            per_receiver.setdefault((edge[3], edge[4]), []).append(edge)
    kept = [e for group in per_receiver.values() for e in sorted(group, reverse=True)[:top_k]]
    top = max((e[0] for e in kept), default=threshold)
    fig = go.Figure()
    for band, width in enumerate((1.0, 3.0, 6.0)):
        lo, hi = threshold + (top - threshold) * band / 3, threshold + (top - threshold) * (band + 1) / 3
        chosen = [e for e in kept if lo < e[0] <= hi or (band == 0 and e[0] == lo)]
        if not chosen:
            continue
        xs, ys = [], []
        for _, ls, s, lr, r in chosen:
            xs += [ls, lr, None]
            ys += [s, r, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(width=width, color="gray"), opacity=0.6,
                                 hoverinfo="skip", name=f"{lo:.3f}-{hi:.3f}", showlegend=True))
    names = [f"L{la}H{h}" for la in range(n_layers) for h in range(n_heads)]
    fig.add_trace(go.Scatter(x=[la for la in range(n_layers) for _ in range(n_heads)],
                             y=[h for _ in range(n_layers) for h in range(n_heads)], mode="markers+text",
                             text=names, textposition="top center", showlegend=False,
                             marker=dict(size=14, color=["crimson" if n in set(marked) else "steelblue"
                                                         for n in names])))
    fig.update_layout(title=title or f"composition above {threshold:.3f}", xaxis_title="layer", yaxis_title="head",
                      xaxis=dict(dtick=1), yaxis=dict(autorange="reversed"))
    return fig


__all__ = ["composition_graph"]
