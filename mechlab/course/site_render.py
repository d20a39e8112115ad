"""Turn an executed course notebook into a page of the course site, or into a reveal.js slide deck.

Nothing is re-executed: the pages show the outputs committed in the notebook. What each output becomes:

- plotly figures (``application/vnd.plotly.v1+json``, the only form the committed notebooks keep) become a
  ``<div class="mechlab-plotly">`` holding the figure's JSON base64-encoded in an attribute (so Markdown never
  touches it); ``site/assets/mechlab-figures.js`` draws every such div with the site's own copy of plotly.js;
- circuitsvis views (HTML that waits for ``window.CircuitsVis``) are kept as they are; the page loads the site's
  copy of the circuitsvis bundle once, before its first view, so no view ever reaches for the CDN;
- the one-line note left where the runner dropped the inlined circuitsvis bundle is dropped (the site serves the
  bundle itself);
- progress-bar widgets show their plain-text form (widget state would need a widget manager from a CDN);
- streams become text blocks, other HTML stays HTML, PNG images are inlined.

A page needs plotly.js and the circuitsvis bundle only when it has a figure or a view: :class:`Rendered` says
which, and the builder adds the script tags to those pages only.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field

import markdown as markdown_lib

from mechlab.plot.attention import VIEW_CLASS

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
FIGURE_CLASS = "mechlab-plotly"
DROPPED_BUNDLE_NOTE = re.compile(r"^\[output of \d+ kB not committed: run the cell to see it\]\s*$")
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


@dataclass
class Rendered:
    """A notebook rendered to Markdown (or HTML, for slides), and what its page must load."""

    text: str
    figures: int = 0
    views: int = 0
    titles: list[str] = field(default_factory=list)


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _fence(body: str, lang: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{body.rstrip()}\n{ticks}"


def figure_div(spec: dict) -> str:
    """The HTML placeholder of one plotly figure, drawn by mechlab-figures.js."""
    payload = base64.b64encode(json.dumps(spec, separators=(",", ":")).encode()).decode()
    return f'<div class="{FIGURE_CLASS}" data-figure="{payload}"></div>'


def _squeeze_html(body: str) -> str:
    # Markdown ends a raw HTML block at a blank line: keep the block in one piece.
    return re.sub(r"\n\s*\n", "\n", body.strip())


def local_badges(source: str, badge_src: str) -> str:
    """Point Colab badge images at the site's own copy (the link itself still opens Colab)."""
    return source.replace(COLAB_BADGE_IMAGE, badge_src)


def markdown_cell(source: str, *, badge_src: str) -> str:
    """A notebook markdown cell as site Markdown: ``<details>`` blocks get ``markdown="1"`` so that what is inside
    them is rendered too (md_in_html), and badge images are local."""
    source = re.sub(r"<details(\s*)>", r'<details markdown="1"\1>', source)
    return local_badges(source, badge_src)


def _outputs(cell):
    """Each output the site can show, as ``(kind, payload)``: ``text`` (a stream), ``note`` (the runner's note where
    an output too large to commit was, e.g. the circuitsvis bundle, which the site serves itself), ``plotly``,
    ``html``, ``png``, ``plain`` or ``error``."""
    for out in cell.get("outputs", []):
        kind, data = out.get("output_type"), out.get("data", {})
        if kind == "stream":
            text = _text(out.get("text", ""))
            yield ("note" if DROPPED_BUNDLE_NOTE.match(text) else "text"), text
        elif kind == "error":
            yield "error", "\n".join(out.get("traceback", []))
        elif PLOTLY_MIME in data:
            yield "plotly", data[PLOTLY_MIME]
        elif "text/html" in data and WIDGET_MIME not in data:
            yield "html", _text(data["text/html"])
        elif "image/png" in data:
            yield "png", _text(data["image/png"]).strip()
        elif "text/plain" in data:
            yield "plain", _text(data["text/plain"])


def _output_parts(cell) -> tuple[list[str], int, int]:
    parts, figures, views = [], 0, 0
    outputs = list(_outputs(cell))
    has_view = any(kind == "html" and VIEW_CLASS in body for kind, body in outputs)
    for kind, payload in outputs:
        if kind == "note" and has_view:
            continue
        if kind in ("text", "note", "plain", "error"):
            parts.append(_fence(payload, "text"))
        elif kind == "plotly":
            parts.append(figure_div(payload))
            figures += 1
        elif kind == "html":
            views += payload.count(f'class="{VIEW_CLASS}"')
            parts.append(f'<div class="mechlab-output-html">\n{_squeeze_html(payload)}\n</div>')
        elif kind == "png":
            parts.append(f'<img alt="figure" src="data:image/png;base64,{payload}">')
    return parts, figures, views


def notebook_markdown(nb, *, badge_src: str) -> Rendered:
    """The whole notebook as one Markdown page: prose, code and the committed outputs."""
    blocks, figures, views, titles = [], 0, 0, []
    for cell in nb.cells:
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            blocks.append(markdown_cell(source, badge_src=badge_src))
            titles += [line.lstrip("#").strip() for line in source.splitlines() if re.match(r"#{1,2} ", line)]
        elif cell.cell_type == "code":
            if source.strip():
                blocks.append(_fence(source, "python"))
            parts, n_fig, n_view = _output_parts(cell)
            blocks.extend(parts)
            figures, views = figures + n_fig, views + n_view
    return Rendered("\n\n".join(blocks) + "\n", figures, views, titles)


# ---------------------------------------------------------------------------------------------------------
# slides


def slide_kind(cell) -> str:
    """The reveal.js slide type injected for a cell: a new slide at each ``#``/``##`` heading, a subslide per
    other markdown cell and per code cell with output, fragments for code without output; the setup cell is
    skipped (it does nothing outside Colab)."""
    source = _text(cell.source)
    if cell.cell_type == "code":
        if source.startswith("# mechlab: setup"):
            return "skip"
        return "subslide" if cell.get("outputs") else "fragment"
    if re.search(r"^#{1,2} ", source, re.M):
        return "slide"
    return "subslide"


def _slide_html(cell, badge_src: str) -> tuple[str, int, int]:
    source = _text(cell.source)
    if cell.cell_type == "markdown":
        body = markdown_lib.markdown(local_badges(source, badge_src),
                                     extensions=["fenced_code", "tables", "md_in_html"])
        return f'<div class="mechlab-slide-md">{body}</div>', 0, 0
    code = f'<pre class="mechlab-slide-code"><code>{html.escape(source)}</code></pre>'
    parts, figures, views = [], 0, 0
    for kind, payload in _outputs(cell):
        if kind in ("text", "plain"):
            parts.append(f'<pre class="mechlab-slide-out">{html.escape(payload)}</pre>')
        elif kind == "plotly":
            parts.append(figure_div(payload))
            figures += 1
        elif kind == "html":
            views += payload.count(f'class="{VIEW_CLASS}"')
            parts.append(payload)
    return code + "".join(parts), figures, views


def slides_html(nb, *, title: str, reveal: str, scripts: list[str], css: str, back: str,
                badge_src: str = "") -> Rendered:
    """A reveal.js deck of the notebook: slide types injected per cell (:func:`slide_kind`), reveal.js, plotly.js
    and the circuitsvis bundle all from the site's own assets (``reveal`` is the URL prefix of reveal.js;
    ``scripts`` are loaded before the figures are drawn), and a link ``back`` to the unit's page."""
    slides: list[list[str]] = []  # a slide = a list of subslides (each a list of HTML pieces)
    figures = views = 0
    for cell in nb.cells:
        kind = slide_kind(cell)
        if kind == "skip" or not _text(cell.source).strip():
            continue
        piece, n_fig, n_view = _slide_html(cell, badge_src or f"{reveal}/../colab-badge.svg")
        figures, views = figures + n_fig, views + n_view
        if kind == "slide" or not slides:
            slides.append([[piece]])
        elif kind == "subslide":
            slides[-1].append([piece])
        else:
            slides[-1][-1].append(f'<div class="fragment">{piece}</div>')
    sections = []
    for slide in slides:
        inner = "".join(f"<section>{''.join(sub)}</section>" for sub in slide)
        sections.append(f"<section>{inner}</section>")
    script_tags = "\n".join(f'<script src="{src}"></script>' for src in scripts)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} · slides</title>
<link rel="stylesheet" href="{reveal}/dist/reveal.css">
<link rel="stylesheet" href="{reveal}/dist/theme/white.css">
<link rel="stylesheet" href="{css}">
</head>
<body>
<a class="mechlab-slides-back" href="{back}">back to the unit page</a>
<div class="reveal"><div class="slides">
{"".join(sections)}
</div></div>
<script src="{reveal}/dist/reveal.js"></script>
<script src="{reveal}/plugin/notes/notes.js"></script>
{script_tags}
<script>
Reveal.initialize({{hash: true, slideNumber: "c/t", width: 1280, height: 800, margin: 0.04,
                   plugins: [RevealNotes]}});
</script>
</body>
</html>
"""
    return Rendered(page, figures, views, [title])
