"""The built course site in a real browser: Debian's chromium, headless, driven by Playwright, with every host but
the local server refused. Builds the site first (from the committed notebooks: nothing is executed).

- every page loads with no console error, every figure and attention view drew, every internal link resolves, the
  slide decks start, search finds "induction" on the walkthroughs that teach it, and the landing and a unit page
  are not blank;
- a copy of the site broken on purpose (a throwing script, a figure with no data, the circuitsvis bundle removed, a
  dead link) fails with each of those problems named.
"""

from __future__ import annotations

import base64
import re
import shutil
import time

import pytest

pytest.importorskip("playwright", reason="the site's browser test needs playwright: pip install -e '.[site]'")
pytest.importorskip("mkdocs", reason="the site needs mkdocs: pip install -e '.[site]'")

from mechlab.course import site, site_check  # noqa: E402 (after the skips: site_check imports playwright)

pytestmark = pytest.mark.skipif(site_check.find_browser() is None,
                                reason="no chromium on PATH; on Debian: apt-get install chromium")


@pytest.fixture(scope="module")
def built():
    summary = site.build_site()
    print(f"site built in {summary['seconds']:.0f} s")
    return site.OUT


def test_every_page_of_the_site_works_offline(built, tmp_path):
    start = time.perf_counter()
    report = site_check.check_site(built, screenshots=tmp_path)
    print(f"browser check: {report.pages} pages, {report.figures} figures, {report.views} views, {report.slides} "
          f"slide decks, {report.links} links in {time.perf_counter() - start:.0f} s")
    assert not report.problems, "\n".join(report.problems)
    html = sorted(p for p in built.rglob("*.html") if p.relative_to(built).parts[0] != "assets")
    assert report.pages == len(html)
    units = site.site_notes.find_units()
    assert report.slides == len(units)
    assert report.figures > 0 and report.views > 0  # the course has both; a check of none would prove nothing
    assert [p.name for p in report.screenshots] == ["landing.png", "unit.png"]


def test_a_page_broken_on_purpose_fails(built, tmp_path):
    broken = tmp_path / "site"
    shutil.copytree(built, broken)
    unit = next(p for p in sorted((broken / "units").glob("*.html")) if 'class="mechlab-plotly"' in p.read_text())
    text = unit.read_text()
    empty = base64.b64encode(b'{"data": [], "layout": {}}').decode()
    text = re.sub(r'data-figure="[^"]+"', f'data-figure="{empty}"', text, count=1)  # a figure with no data
    text = text.replace("</article>", '<a href="no-such-page.html">dead</a><a href="../index.html#no-such-id">x</a>'
                        "<script>throw new Error('broken on purpose')</script></article>", 1)
    unit.write_text(text)
    (broken / "assets" / "circuitsvis.js").unlink()  # views cannot draw, and the script 404s
    view_page = next(p for p in sorted((broken / "units").glob("*.html"))
                     if "mechlab-attention-view" in p.read_text())
    rels = sorted({str(unit.relative_to(broken)), str(view_page.relative_to(broken))})
    report = site_check.check_site(broken, pages=rels, search=False)
    problems = "\n".join(report.problems)
    rel = str(unit.relative_to(broken))
    assert f"{rel}: uncaught: broken on purpose" in problems
    assert f"{rel}: plotly figure 1 did not draw" in problems
    assert f"{rel}: broken link to units/no-such-page.html" in problems
    assert "no id 'no-such-id'" in problems
    view_rel = str(view_page.relative_to(broken))
    assert f"{view_rel}: HTTP 404" in problems and f"{view_rel}: attention view" in problems
