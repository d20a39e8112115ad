"""Notebook -> site page and slides: figures keep their data, views and their bundle, collapsed blocks render, and
nothing points outside the site."""

from __future__ import annotations

import base64
import json
import re

import nbformat

from mechlab.course import site_render
from mechlab.plot.attention import VIEW_CLASS


def _nb():
    nb = nbformat.v4.new_notebook()
    fig = {"data": [{"type": "scatter", "y": [1, 2, 3]}], "layout": {"title": {"text": "t"}}}
    cells = [nbformat.v4.new_markdown_cell("[![Open In Colab](https://colab.research.google.com/assets/colab-badge"
                                           ".svg)](https://colab.example/x)\n# 01 · Title\n\n<details>\n<summary>Hint 1"
                                           "</summary>\n\n*inside*\n</details>"),
             nbformat.v4.new_code_cell("# mechlab: setup\nimport sys"),
             nbformat.v4.new_code_cell("plot()"),
             nbformat.v4.new_markdown_cell("## Part"),
             nbformat.v4.new_code_cell("view")]
    cells[2].outputs = [nbformat.v4.new_output("display_data", data={site_render.PLOTLY_MIME: fig})]
    view = f'<div id="mechlab-attn-1" class="{VIEW_CLASS}">loading</div>\n\n<script>draw()</script>'
    cells[4].outputs = [
        nbformat.v4.new_output("stream", name="stdout",
                               text="[output of 1300 kB not committed: run the cell to see it]\n"),
        nbformat.v4.new_output("display_data", data={"text/html": view, "text/plain": "<view>"}),
        nbformat.v4.new_output("display_data", data={site_render.WIDGET_MIME: {"model_id": "x"},
                                                     "text/plain": "100%"})]
    nb.cells = cells
    return nb, fig


def test_figures_carry_their_json_and_views_are_kept():
    nb, fig = _nb()
    page = site_render.notebook_markdown(nb, badge_src="../assets/colab-badge.svg")
    assert page.figures == 1 and page.views == 1
    payload = re.search(r'data-figure="([^"]+)"', page.text).group(1)
    assert json.loads(base64.b64decode(payload)) == fig
    assert "not committed" not in page.text  # the dropped-bundle note goes: the site serves the bundle
    assert "<script>draw()</script>" in page.text and "\n\n<script>" not in page.text  # one HTML block
    assert "```text\n100%\n```" in page.text  # a widget shows its text form
    assert '<details markdown="1">' in page.text
    assert "colab.research.google.com/assets" not in page.text and "../assets/colab-badge.svg" in page.text


def test_the_bundle_note_stays_when_no_view_follows():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("big()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text="[output of 900 kB not committed: run the cell to see it]\n")]
    nb.cells = [cell]
    assert "not committed" in site_render.notebook_markdown(nb, badge_src="x").text


def test_slides_inject_slide_types_and_use_local_assets():
    nb, _ = _nb()
    assert [site_render.slide_kind(c) for c in nb.cells] == ["slide", "skip", "subslide", "slide", "subslide"]
    deck = site_render.slides_html(nb, title="T", reveal="../assets/reveal", scripts=["../assets/plotly.min.js"],
                                   css="../assets/s.css", back="../units/x.html")
    assert deck.text.count("<section><section>") == 2  # two slides, each a vertical stack
    assert "import sys" not in deck.text  # the setup cell is skipped
    assert deck.figures == 1 and deck.views == 1
    external = [u for u in re.findall(r'(?:src|href)="([^"]+)"', deck.text) if u.startswith(("http:", "https:", "//"))]
    assert external == ["https://colab.example/x"]  # a link to click, never a script or stylesheet
