"""Attention figures: the view carries the right data, emits the circuitsvis bundle once per session (as its
own output), stays small, and the plotly builders place every value where the labels say."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mechlab.plot import attention as att


@pytest.fixture
def pattern():
    scores = torch.randn(3, 5, 5)
    return scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


TOKENS = ["<bos>", "a", "b", "a", "b"]


def props_of(view_html: str) -> dict:
    match = re.search(r"props = (\{.*?\}), cdn", view_html)
    assert match, view_html[:500]
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_view_carries_the_pattern_tokens_and_names(pattern):
    view = att.attention_view(pattern, TOKENS, head_names=["L1H0", "L1H1", "L1H2"], mode="once")
    props = props_of(view.view_html())
    assert props["tokens"] == TOKENS
    assert props["attentionHeadNames"] == ["L1H0", "L1H1", "L1H2"]
    torch.testing.assert_close(torch.tensor(props["attention"]), pattern, atol=5e-5, rtol=0)
    assert props["maskUpperTri"] is True


def test_view_html_is_small_and_bundle_free(pattern):
    view = att.attention_view(pattern, TOKENS, mode="once")
    html = view.view_html()
    assert len(html) < 10_000
    assert "var CircuitsVis" not in html
    assert "window.CircuitsVis.render" in html and "unpkg.com/circuitsvis@" in html  # loader with CDN fallback


def test_bundle_is_the_installed_one_and_safe_to_inline():
    script = att.bundle_script()
    assert len(script) > 500_000  # the whole bundle (about 1.3 MB), not a reference
    assert "var CircuitsVis" in script and "window.CircuitsVis = CircuitsVis" in script
    assert script.count("</script>") == 1 and script.rstrip().endswith("</script>")


def test_bundle_emitted_once_per_session_as_its_own_output(pattern, monkeypatch):
    shown = []
    monkeypatch.setattr(att, "display", lambda obj, **kw: shown.append((obj, kw.get("metadata"))))
    att.reset_bundle()
    att.attention_view(pattern, TOKENS, mode="once")._ipython_display_()
    att.attention_view(pattern, TOKENS, mode="once")._ipython_display_()
    assert len(shown) == 3
    (bundle, meta), (first, _), (second, _) = shown
    assert "var CircuitsVis" in bundle["text/html"] and meta == {"mechlab": {"bundle": True}}
    for view in (first, second):
        assert "var CircuitsVis" not in view["text/html"] and att.VIEW_CLASS in view["text/html"]
        assert "3 heads x 5 tokens" in view["text/plain"]
    shown.clear()
    att.attention_view(pattern, TOKENS, mode="cdn")._ipython_display_()  # Colab: never inline
    att.attention_view(pattern, TOKENS, mode="inline")._ipython_display_()  # always inline
    assert ["var CircuitsVis" in s[0]["text/html"] for s in shown] == [False, True, False]
    att.reset_bundle()


def test_mode_follows_colab(pattern, monkeypatch):
    import sys
    import types

    assert att.attention_view(pattern, TOKENS).mode == "once"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert att.attention_view(pattern, TOKENS).mode == "cdn"
    with pytest.raises(ValueError, match="mode"):
        att.attention_view(pattern, TOKENS, mode="offline")


def test_standalone_file_carries_the_bundle(pattern, tmp_path):
    path = att.attention_view(pattern, TOKENS).save(tmp_path / "view.html")
    text = path.read_text()
    assert text.index("var CircuitsVis") < text.index(att.VIEW_CLASS)


def test_view_rejects_mismatched_tokens_and_shapes(pattern):
    with pytest.raises(ValueError, match="4 tokens"):
        att.attention_view(pattern, TOKENS[:4])
    with pytest.raises(ValueError, match="head, query_pos, key_pos"):
        att.attention_view(pattern[0], TOKENS)
    with pytest.raises(ValueError, match="head names"):
        att.attention_view(pattern, TOKENS, head_names=["a"])


def test_heatmaps_put_each_head_in_its_own_panel(pattern):
    fig = att.attention_heatmaps(pattern, TOKENS, head_names=["L0H0", "L0H1", "L0H2"], cols=2)
    assert len(fig.data) == 3
    for h, trace in enumerate(fig.data):
        torch.testing.assert_close(torch.tensor(trace.z).float(), pattern[h], atol=5e-4, rtol=0)
        assert trace.hovertemplate.startswith(f"L0H{h}") and "query %{y}" in trace.hovertemplate
    # repeated tokens ("a" twice) stay two columns: each axis category is "position: token"
    assert list(fig.data[0].x) == ["0: '<bos>'", "1: 'a'", "2: 'b'", "3: 'a'", "4: 'b'"]
    assert list(fig.data[0].y) == list(fig.data[0].x)


def test_head_type_grids_mark_known_heads():
    grids = {"previous_token": torch.rand(3, 4), "induction": torch.rand(3, 4)}
    fig = att.head_type_grids(grids, known={"induction": ["L2H1", "L1H3"]})
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    rings = [t for t in fig.data if t.type == "scatter"]
    assert len(heatmaps) == 2 and len(rings) == 1
    torch.testing.assert_close(torch.tensor(heatmaps[1].z).float(), grids["induction"])
    assert list(rings[0].x) == [1, 3] and list(rings[0].y) == [2, 1] and rings[0].xaxis == "x2"
    with pytest.raises(ValueError, match="does not exist"):
        att.head_type_grids(grids, known={"induction": ["L5H5"]})
