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
) -> go.Figure:
    """Heads as nodes (layer on x, head on y), an edge for every (sender, receiver) score above ``threshold``,
    its width growing with the excess; ``marked`` heads (e.g. published induction heads) drawn in red.

    ``scores`` is what ``mechlab.methods.circuits.all_compositions`` returns: {(sender_layer, receiver_layer):
    Labelled [sender head, receiver head]}.
    """
    fig = go.Figure()
    top = max((float(r.values.max()) for r in scores.values()), default=threshold)
    for (ls, lr), result in scores.items():
        for s in range(result.values.shape[0]):
            for r in range(result.values.shape[1]):
                value = float(result.values[s, r])
                if value <= threshold:
                    continue
                width = 1 + 6 * (value - threshold) / max(top - threshold, 1e-9)
                fig.add_trace(go.Scatter(x=[ls, lr], y=[s, r], mode="lines", line=dict(width=width, color="gray"),
                                         opacity=0.6, hoverinfo="text", showlegend=False,
                                         text=f"L{ls}H{s} -> L{lr}H{r}: {value:.3f}"))
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
