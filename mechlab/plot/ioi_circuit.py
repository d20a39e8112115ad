"""A circuit drawn as heads on a layer x head grid, with edges whose width and label are measured effects.

Example::

    from mechlab.plot.ioi_circuit import circuit_figure
    fig = circuit_figure(3, 4, [("L1H0", "L2H0", -0.2, "q"), ("L2H0", "logits", -1.5, "direct")],
                         classes={"L2H0": "name mover", "L1H0": "S-inhibition"})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from mechlab.core.activations import parse_head

CLASS_COLOURS = {"name mover": "#d62728", "negative name mover": "#9467bd", "S-inhibition": "#ff7f0e",
                 "induction": "#2ca02c", "duplicate-token": "#1f77b4", "previous-token": "#17becf"}
EDGE_COLOURS = {"direct": "#444444", "q": "#ff7f0e", "k": "#2ca02c", "v": "#1f77b4"}


def _xy(label: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if label == "logits":
        return (n_heads - 1) / 2, float(n_layers)
    layer, head = parse_head(label, n_layers, n_heads)
    return float(head), float(layer)


def circuit_figure(
    n_layers: int,
    n_heads: int,
    edges: Sequence[tuple[str, str, float, str]],
    *,
    classes: Mapping[str, str] | None = None,
    published: Mapping[str, str] | None = None,
    title: str = "",
) -> go.Figure:
    """Heads at (head, layer), ``logits`` on top; ``edges`` are ``(sender, receiver, effect, kind)``.

    ``kind`` is ``direct`` (to the logits) or the receiver input ``q`` / ``k`` / ``v``; width grows with
    ``|effect|`` and the label prints it. ``classes`` colours heads by what was measured; ``published`` draws a
    ring around heads a paper names (hover gives the class), so a reader can compare the two.
    """
    classes, published = dict(classes or {}), dict(published or {})
    fig = go.Figure()
    biggest = max([abs(e[2]) for e in edges] + [1e-9])
    for src, dst, value, kind in edges:
        if kind not in EDGE_COLOURS:
            raise ValueError(f"edge {src} -> {dst} has kind {kind!r}; expected one of {list(EDGE_COLOURS)}.")
        (x0, y0), (x1, y1) = _xy(src, n_layers, n_heads), _xy(dst, n_layers, n_heads)
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
                                 text=f"{src} -> {dst} ({kind}): {value:+.2f}",
                                 line={"width": 1 + 9 * abs(value) / biggest, "color": EDGE_COLOURS[kind]}))
        fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=f"{value:+.2f} {kind}", showarrow=False,
                           font={"size": 10}, bgcolor="rgba(255,255,255,0.7)")
    heads = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)]
    for cls in [None, *CLASS_COLOURS]:
        members = [h for h in heads if classes.get(h) == cls]
        if not members:
            continue
        xs, ys = zip(*[_xy(h, n_layers, n_heads) for h in members], strict=True)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=members, textposition="bottom center",
                                 name=cls or "other head", hoverinfo="text",
                                 marker={"size": 14 if cls else 7, "color": CLASS_COLOURS.get(cls, "#cccccc")}))
    if published:
        marked = [h for h in published if h in heads]
        xs, ys = zip(*[_xy(h, n_layers, n_heads) for h in marked], strict=True) if marked else ((), ())
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="published class (ring)", hoverinfo="text",
                                 text=[f"{h}: {published[h]} (published)" for h in marked],
                                 marker={"size": 24, "color": "rgba(0,0,0,0)",
                                         "line": {"width": 2, "color": "black"}}))
    x, y = _xy("logits", n_layers, n_heads)
    fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=["logits"], textposition="top center",
                             name="logits", marker={"size": 16, "symbol": "square", "color": "#000000"}))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=200 + 60 * n_layers,
                      yaxis={"dtick": 1}, xaxis={"dtick": 1}, plot_bgcolor="white")
    return fig


__all__ = ["CLASS_COLOURS", "EDGE_COLOURS", "circuit_figure"]
