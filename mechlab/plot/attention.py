"""Attention patterns as figures: interactive circuitsvis views that work offline, plotly heatmaps, and the
layer x head grids of head-type scores with the heads others reported marked.

How views find their JavaScript (circuitsvis's own ``_repr_html_`` probes the internet on every render and,
offline, inlines its 1.3 MB bundle into every single view):

* A view's own HTML is small: a div, the data, and a loader that draws into the div once
  ``window.CircuitsVis`` exists (waiting up to 2 s for it), else fetches the bundle from the CDN, else
  writes into the div what to do.
* The bundle comes from the installed circuitsvis package, inlined **once per kernel session**: the first
  view displayed emits it as its own output just before the view (``mode="once"``, the default outside
  Colab). Later views on the same page reuse it, so a notebook stays offline-capable at 1.3 MB, not
  1.3 MB per view.
* In Colab every output lives in its own iframe and the internet is there: views load the CDN copy
  (``mode="cdn"``, the default when ``google.colab`` is imported).
* ``view.to_html(standalone=True)`` / ``view.save(path)`` write a file that carries its own bundle.

Committed notebooks never carry the bundle: ``mechlab.course.run --inplace`` replaces outputs over 200 kB
with a one-line note, which catches the bundle output and nothing else (a view's own output is a few kB).
Executed copies and their HTML (``make course`` -> ``build/``) keep it, so they render offline.
After a kernel restart in a page that lost the bundle output, call ``reset_bundle()`` and re-run a view.

Example::

    from mechlab.plot.attention import attention_view, attention_heatmaps
    view = attention_view(pattern[0, layer], tokens=model.to_str_tokens(text), head_names=["L1H0", ...])
    view                                   # the last expression of a cell renders it
    fig = attention_heatmaps(pattern[0, layer], tokens=str_tokens, head_names=names)
"""

from __future__ import annotations

import html
import json
import sys
import uuid
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import circuitsvis
import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from mechlab.core.activations import parse_head
from mechlab.plot.basic import to_numpy

try:  # Jupyter and Colab have IPython; a plain-Python install of mechlab need not
    from IPython.display import display
except ImportError:
    display = None

MODES = ("once", "inline", "cdn")
BUNDLE_MARKER = "mechlab-circuitsvis-bundle"
VIEW_CLASS = "mechlab-attention-view"
_state = {"bundle_sent": False}  # per kernel session: has the bundle been emitted on this page yet?


def _circuitsvis_version() -> str:
    return version("circuitsvis")


def bundle_path() -> Path:
    """The JavaScript bundle shipped inside the installed circuitsvis package (defines ``CircuitsVis``)."""

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(f"circuitsvis's bundle is missing at {path}; reinstall it with "
                                "`pip install --force-reinstall circuitsvis`.")
    return path


def cdn_url() -> str:
    return f"https://unpkg.com/circuitsvis@{_circuitsvis_version()}/dist/cdn/iife.js"


def bundle_script() -> str:
    """A classic ``<script>`` that defines ``window.CircuitsVis`` from the installed bundle (~1.3 MB)."""
    js = bundle_path().read_text(encoding="utf-8").replace("</script>", "<\\/script>")
    return (f'<script data-{BUNDLE_MARKER}="{_circuitsvis_version()}">\n{js}\n'
            "window.CircuitsVis = CircuitsVis;\n</script>")


def reset_bundle() -> None:
    """Make the next view emit the bundle again (after clearing the output that held it, or a page reload)."""
    _state["bundle_sent"] = False


def default_mode() -> str:
    return "cdn" if "google.colab" in sys.modules else "once"


_LOADER = """<script>
(function () {{
  var id = {id}, element = {element}, props = {props}, cdn = {cdn}, tries = 0;
  function box() {{ return document.getElementById(id); }}
  function draw() {{ window.CircuitsVis.render(id, window.CircuitsVis[element], props); }}
  function fail() {{
    box().textContent = "The attention view could not load circuitsvis: no bundle on this page and no internet. " +
      "Run mechlab.plot.attention.reset_bundle() and re-run this cell.";
  }}
  function wait() {{
    if (window.CircuitsVis) {{ draw(); return; }}
    if (tries++ < 20) {{ setTimeout(wait, 100); return; }}
    var s = document.createElement("script");
    s.src = cdn; s.onload = draw; s.onerror = fail;
    document.head.appendChild(s);
  }}
  wait();
}})();
</script>"""


class AttentionView:
    """A circuitsvis ``AttentionHeads`` view: click a head to enlarge it, hover a token to see where it looks.

    Displaying it in a notebook renders it (see the module docstring for how it finds its JavaScript).
    """

    element = "AttentionHeads"

    def __init__(self, props: dict, *, n_heads: int, n_tokens: int, mode: str | None = None):
        mode = mode or default_mode()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}.")
        self.props, self.n_heads, self.n_tokens, self.mode = props, n_heads, n_tokens, mode

    def view_html(self) -> str:
        """The view alone (a few kB): a div and the loader, no bundle."""
        div_id = f"mechlab-attn-{uuid.uuid4().hex[:12]}"
        loader = _LOADER.format(id=json.dumps(div_id), element=json.dumps(self.element),
                                props=json.dumps(self.props).replace("</", "<\\/"), cdn=json.dumps(cdn_url()))
        note = html.escape(f"attention view ({self.n_heads} heads x {self.n_tokens} tokens): loading...")
        return f'<div id="{div_id}" class="{VIEW_CLASS}" style="margin: 15px 0;">{note}</div>\n{loader}'

    def to_html(self, *, standalone: bool = False) -> str:
        """The view's HTML; ``standalone=True`` prepends the bundle so the file works offline on its own."""
        return (bundle_script() + "\n" if standalone else "") + self.view_html()

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (bundle included) that opens offline in any browser."""
        path = Path(path)
        path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>\n"
                        f"{self.to_html(standalone=True)}\n</body></html>\n", encoding="utf-8")
        return path

    def _needs_bundle(self) -> bool:
        return self.mode == "inline" or (self.mode == "once" and not _state["bundle_sent"])

    def _ipython_display_(self) -> None:
        if self._needs_bundle():
            # its own output, so that the runner's size cap drops the bundle and keeps the view
            display({"text/html": bundle_script(), "text/plain": "[circuitsvis JavaScript bundle]"}, raw=True,
                    metadata={"mechlab": {"bundle": True}})
            _state["bundle_sent"] = True
        display({"text/html": self.view_html(), "text/plain": repr(self)}, raw=True)

    def _repr_html_(self) -> str:  # for tools that ask for one HTML string (nbconvert's own display path)
        html_out = self.to_html(standalone=self._needs_bundle())
        if self.mode == "once":
            _state["bundle_sent"] = True
        return html_out

    def __repr__(self) -> str:
        return f"AttentionView({self.n_heads} heads x {self.n_tokens} tokens; displays as HTML in a notebook)"


def _check_pattern(pattern: np.ndarray, tokens: Sequence[str], head_names: Sequence[str] | None) -> None:
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(f"pattern has shape {pattern.shape}; expected [head, query_pos, key_pos] for one prompt "
                         "and one layer, e.g. patterns[0, layer] from mechlab.methods.heads.attention_patterns.")
    if len(tokens) != pattern.shape[-1]:
        raise ValueError(f"{len(tokens)} tokens for a pattern over {pattern.shape[-1]} positions; pass "
                         "model.to_str_tokens(...) of exactly the prompt the pattern came from.")
    if head_names is not None and len(head_names) != pattern.shape[0]:
        raise ValueError(f"{len(head_names)} head names for {pattern.shape[0]} heads.")


def attention_view(
    pattern: Float[Tensor, "head query_pos key_pos"],
    tokens: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    mode: str | None = None,
) -> AttentionView:
    """An interactive circuitsvis view of some heads' patterns on one prompt (works offline; see module doc)."""
    arr = to_numpy(pattern)
    _check_pattern(arr, tokens, head_names)
    names = list(head_names) if head_names is not None else [f"H{h}" for h in range(arr.shape[0])]
    props = {"attention": np.round(arr.astype(np.float64), 4).tolist(), "tokens": [str(t) for t in tokens],
             "attentionHeadNames": names, "maskUpperTri": True}
    return AttentionView(props, n_heads=arr.shape[0], n_tokens=len(tokens), mode=mode)


def attention_heatmaps(
    pattern: Float[Tensor, "head query_pos key_pos"],
    tokens: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    title: str = "",
    cols: int = 4,
) -> go.Figure:
    """One heatmap per head (query down, key across); hover names both tokens and the attention weight."""
    arr = to_numpy(pattern)
    _check_pattern(arr, tokens, head_names)
    n_heads, n = arr.shape[0], arr.shape[-1]
    names = list(head_names) if head_names is not None else [f"H{h}" for h in range(n_heads)]
    cols = max(1, min(cols, n_heads))
    rows = -(-n_heads // cols)
    # unique "position: token" categories keep repeated tokens apart and put both tokens in the hover
    labels = [f"{i}: {t!r}"[:24] for i, t in enumerate(tokens)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.04, vertical_spacing=0.08)
    for h in range(n_heads):
        fig.add_trace(go.Heatmap(z=np.round(arr[h].astype(np.float64), 3), x=labels, y=labels, zmin=0, zmax=1,
                                 coloraxis="coloraxis",
                                 hovertemplate=f"{names[h]}<br>query %{{y}}<br>key %{{x}}<br>attention %{{z:.2f}}"
                                               "<extra></extra>"),
                      row=h // cols + 1, col=h % cols + 1)
    show_ticks = n <= 40
    fig.update_xaxes(tickangle=-90, showticklabels=show_ticks, tickfont_size=8)
    fig.update_yaxes(autorange="reversed", showticklabels=show_ticks, tickfont_size=8)
    fig.update_layout(title=title or "attention patterns (row: query, column: key)",
                      coloraxis=dict(colorscale="Blues", cmin=0, cmax=1, colorbar=dict(title="attention")),
                      height=max(320, 260 * rows), width=min(1100, 280 * cols + 120))
    return fig


def head_type_grids(
    grids: dict[str, Float[Tensor, "layer head"]],
    *,
    known: dict[str, Sequence[str]] | None = None,
    title: str = "",
) -> go.Figure:
    """Side-by-side layer x head grids, one per head type (e.g. ``{k: scores.grid(k) for k in HEAD_TYPES}``).

    ``known`` marks the heads others reported (``L{l}H{h}`` per type) with a ring, so agreement is visible.
    """
    if not grids:
        raise ValueError("grids is empty; pass {head type: [layer, head] tensor}, e.g. from HeadScores.grid.")
    kinds = list(grids)
    arrays = [to_numpy(grids[k]) for k in kinds]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"every grid must be [layer, head] with one shape; got {sorted(shapes)}.")
    n_layers, n_heads = arrays[0].shape
    text = np.array([[f"L{la}H{h}" for h in range(n_heads)] for la in range(n_layers)])
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[k.replace("_", "-") for k in kinds],
                        horizontal_spacing=0.05)
    for i, (kind, arr) in enumerate(zip(kinds, arrays, strict=True)):
        fig.add_trace(go.Heatmap(z=arr, x=list(range(n_heads)), y=list(range(n_layers)), text=text,
                                 coloraxis="coloraxis", hovertemplate="%{text}: %{z:.2f}<extra>" + kind + "</extra>"),
                      row=1, col=i + 1)
        marked = list((known or {}).get(kind, []))
        if marked:
            pos = [parse_head(h, n_layers, n_heads) for h in marked]  # a ValueError for a head not on the grid
            fig.add_trace(go.Scatter(x=[p[1] for p in pos], y=[p[0] for p in pos], mode="markers", text=marked,
                                     marker=dict(symbol="circle-open", size=14, color="crimson", line_width=2),
                                     name="reported", showlegend=i == 0,
                                     hovertemplate="%{text} (reported)<extra></extra>"), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title_text="layer", col=1)
    fig.update_xaxes(title_text="head")
    fig.update_layout(title=title or "head-type scores (attention mass on the key each type looks for)",
                      coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title="score")),
                      height=360, width=min(1200, 360 * len(kinds) + 120), legend=dict(x=1.08, y=1.1))
    return fig


__all__ = ["AttentionView", "attention_heatmaps", "attention_view", "bundle_path", "bundle_script",
           "head_type_grids", "reset_bundle"]
