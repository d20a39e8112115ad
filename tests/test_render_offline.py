"""Attention views render offline in a real browser: headless Chromium (Debian package ``chromium``) with every
network lookup blocked, reading the DOM after the page's scripts ran.

- notebook 02 executed and exported to HTML (what ``make course`` writes to ``build/``): every view draws;
- a standalone saved view draws;
- a view without the bundle on the page shows its fallback message instead (so the check can fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mechlab.plot import attention as att

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium found on PATH (tried "
                                + ", ".join(BROWSERS) + "); on Debian/Ubuntu: apt-get install chromium")


def rendered_dom(page: Path) -> str:
    """The DOM after scripts ran, with no network at all (every host resolves to nothing)."""
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def views(dom: str) -> dict[str, str]:
    """Each view's div id -> the DOM inside that div (up to its loader script)."""
    out = {}
    for match in re.finditer(r'<div[^>]*\bid="(mechlab-attn-[0-9a-f]+)"[^>]*>', dom):  # attribute order varies
        out[match.group(1)] = dom[match.end():dom.index("<script", match.end())]
    return out


def small_pattern() -> torch.Tensor:
    scores = torch.randn(2, 4, 4)
    return scores.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


def test_standalone_view_renders_offline(tmp_path):
    view = att.attention_view(small_pattern(), ["<bos>", "x", "y", "x"], head_names=["L0H0", "L0H1"])
    found = views(rendered_dom(view.save(tmp_path / "view.html")))
    assert len(found) == 1
    inner = next(iter(found.values()))
    assert inner.count("<canvas") >= 2 and "L0H1" in inner  # one thumbnail per head, and the head names
    assert "loading" not in inner


def test_view_without_bundle_says_what_to_do(tmp_path):
    view = att.attention_view(small_pattern(), ["<bos>", "x", "y", "x"])
    page = tmp_path / "bare.html"
    page.write_text(f"<!DOCTYPE html><html><body>{view.view_html()}</body></html>")
    inner = next(iter(views(rendered_dom(page)).values()))
    assert "<canvas" not in inner and "reset_bundle()" in inner


def test_notebook_02_views_render_offline(tmp_path, monkeypatch):
    from mechlab.course import run

    monkeypatch.setenv("MECHLAB_MODEL", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = ROOT / "notebooks" / "02_attention_patterns.ipynb"
    assert run.main([str(notebook), "--out", str(tmp_path)]) == 0
    html = tmp_path / "notebooks" / "02_attention_patterns.html"
    assert html.read_text().count(f"data-{att.BUNDLE_MARKER}") == 1  # the bundle, exactly once in the page
    found = views(rendered_dom(html))
    assert len(found) >= 2, f"expected the notebook's attention views, found {len(found)}"
    for div_id, inner in found.items():
        assert "<canvas" in inner, f"view {div_id} did not render: {inner[:300]!r}"
        assert "could not load" not in inner
