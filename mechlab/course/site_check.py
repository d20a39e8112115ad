"""Check the built course site in a real browser (Debian's chromium, headless, driven by Playwright).

Usage::

    python -m mechlab.course.site_check build/site       # what `make site-test` runs after `make site`

The site is served on 127.0.0.1 and every request to any other host is refused (and counted as an error), so a
page that reaches for a CDN fails. For every HTML page:

- it loads with no console error, no uncaught exception, no failed request and no HTTP error;
- every plotly figure drew: an SVG with at least one trace;
- every attention view drew (circuitsvis put canvases in it);
- every internal link resolves (the file exists, and a ``#fragment`` names an id on the target page);
- a slide deck started (reveal.js ready, with slides).

Search must find "induction" on every walkthrough that teaches it, and screenshots of the landing page and of
one unit page must not be blank. :func:`check_site` returns the problems found (an empty list: all good).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser")
# flags for Debian's chromium in a closed network (no background lookups of Google's hosts, no first-run work);
# Playwright adds --headless and its own new, empty profile directory.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
SEARCH_TERM = "induction"
TEACHES_MIN_MENTIONS = 5  # a walkthrough "teaches" a term that its prose uses at least this often

_PAGE_STATE = """() => {
  const figs = [...document.querySelectorAll('div.mechlab-plotly')];
  const views = [...document.querySelectorAll('div.mechlab-attention-view')];
  return {
    figures: figs.map(d => ({
      drawn: d.getAttribute('data-drawn'),
      svg: d.querySelectorAll('svg.main-svg').length,
      traces: (d._fullData || []).length,
      marks: d.querySelectorAll('.trace, .hm, .imagelayer > *, .heatmaplayer > *').length })),
    views: views.map(v => ({id: v.id, canvases: v.querySelectorAll('canvas').length,
                            text: v.textContent.slice(0, 160)})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    reveal: (window.Reveal && Reveal.isReady) ? {ready: Reveal.isReady(), slides: Reveal.getTotalSlides()} : null,
  };
}"""

_SETTLED = """() => [...document.querySelectorAll('div.mechlab-plotly')]
    .every(d => d.getAttribute('data-drawn') === 'yes')
  && [...document.querySelectorAll('div.mechlab-attention-view')].every(v => v.querySelector('canvas'))"""

_BLANKNESS = """async (b64) => {
  const img = new Image();
  img.src = 'data:image/png;base64,' + b64;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let differ = 0;
  for (let i = 0; i < px.length; i += 4 * 7) {
    colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
    if (Math.abs(px[i] - px[0]) + Math.abs(px[i + 1] - px[1]) + Math.abs(px[i + 2] - px[2]) > 30) differ++;
  }
  return {width: c.width, height: c.height, colours: colours.size, differ: differ / (px.length / (4 * 7))};
}"""


@dataclass
class Report:
    pages: int = 0
    figures: int = 0
    views: int = 0
    links: int = 0
    slides: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    screenshots: list[Path] = field(default_factory=list)


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports problems itself
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the browser dropped a connection (a page left before a download ended): not a site problem
        super().handle_error(request, client_address)


@contextmanager
def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _target_file(site: Path, base: str, url: str) -> tuple[Path | None, str]:
    """The file an internal URL points at, and its fragment; (None, "") for an external URL."""
    if not url.startswith(base):
        return None, ""
    parts = urlsplit(url)
    path = unquote(parts.path.lstrip("/"))
    target = site / path
    if path == "" or path.endswith("/"):
        target = target / "index.html"
    return target, parts.fragment


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def check_links(site: Path, base: str, page: str, links: list[str]) -> list[str]:
    problems = []
    for url in links:
        target, fragment = _target_file(site, base, url)
        if target is None:
            continue
        if not target.is_file():
            problems.append(f"{page}: broken link to {url[len(base):]} (no file {target.relative_to(site)})")
        elif fragment.startswith("/"):
            continue  # a reveal.js route (#/3/1), not an element id
        elif fragment and target.suffix == ".html" and unquote(fragment) not in _ids(target):
            problems.append(f"{page}: link to {url[len(base):]}: no id {fragment!r} on that page")
    return problems


class _Listener:
    """Collects a page's console errors, uncaught exceptions, failed requests and HTTP errors."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url[:120]} ({r.failure})"))
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url[:120]}") if r.status >= 400
                else None)


def check_page(browser_page, listener: _Listener, site: Path, base: str, rel: str, report: Report) -> None:
    """Load one page and add what is wrong with it to ``report.problems``."""
    browser_page.goto("about:blank")
    listener.errors.clear()
    try:
        browser_page.goto(base + rel, wait_until="load", timeout=30_000)
        try:
            browser_page.wait_for_function(_SETTLED, timeout=15_000)
        except PlaywrightError:
            pass  # reported below, figure by figure and view by view
        state = browser_page.evaluate(_PAGE_STATE)
    except PlaywrightError as err:
        report.problems.append(f"{rel}: did not load: {err}")
        return
    errors = list(listener.errors)
    report.pages += 1
    report.problems += [f"{rel}: {e}" for e in errors]
    for i, fig in enumerate(state["figures"]):
        report.figures += 1
        if not (fig["drawn"] == "yes" and fig["svg"] and fig["traces"] and fig["marks"]):
            report.problems.append(f"{rel}: plotly figure {i + 1} did not draw ({fig})")
    for view in state["views"]:
        report.views += 1
        if not view["canvases"]:
            report.problems.append(f"{rel}: attention view {view['id']} did not draw: {view['text']!r}")
    report.links += len(state["links"])
    report.problems += check_links(site, base, rel, state["links"])
    if rel.startswith("slides/"):
        report.slides += 1
        reveal = state["reveal"]
        if not reveal or not reveal["ready"] or reveal["slides"] < 2:
            report.problems.append(f"{rel}: the slide deck did not start (reveal.js: {reveal})")


def teaching_pages(site: Path, term: str = SEARCH_TERM) -> list[str]:
    """Walkthrough pages (units/NN_name.html) whose text uses ``term`` at least TEACHES_MIN_MENTIONS times."""
    found = []
    for page in sorted((site / "units").glob("*.html")):
        if page.stem.endswith(("-exercises", "-solutions")):
            continue
        article = page.read_text(errors="replace")
        article = article[article.find('<article'):article.find('</article>')]
        text = re.sub(r"<[^>]+>", " ", re.sub(r'data-figure="[^"]*"', "", article))
        if len(re.findall(term, text, re.I)) >= TEACHES_MIN_MENTIONS:
            found.append(f"units/{page.name}")
    return found


def check_search(browser_page, base: str, expected: list[str], report: Report) -> None:
    browser_page.goto(base + "index.html", wait_until="load")
    browser_page.fill("input.md-search__input", SEARCH_TERM)
    try:
        browser_page.wait_for_selector(".md-search-result__item", timeout=20_000)
    except PlaywrightError:
        report.problems.append(f"search: no result for {SEARCH_TERM!r}")
        return
    meta = browser_page.inner_text(".md-search-result__meta")
    total = int(re.search(r"\d+", meta).group(0)) if re.search(r"\d+", meta) else 0
    box = browser_page.query_selector(".md-search__scrollwrap").bounding_box()
    browser_page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    seen: set[str] = set()
    counts: list[int] = []
    for _ in range(60):  # results render in chunks as the list is scrolled with the wheel: scroll until all are there
        hrefs = browser_page.eval_on_selector_all(".md-search-result__item > a", "as => as.map(a => a.href)")
        seen = {urlsplit(h).path.lstrip("/") for h in hrefs}
        counts.append(len(hrefs))
        if len(seen) >= total or (len(counts) > 4 and counts[-1] == counts[-5]):
            break
        browser_page.mouse.wheel(0, 2000)
        browser_page.wait_for_timeout(200)
    missing = [p for p in expected if p not in seen]
    if not expected:
        report.problems.append(f"search: no walkthrough seems to teach {SEARCH_TERM!r}; the check would pass vacuously")
    if missing:
        report.problems.append(f"search for {SEARCH_TERM!r} missed {missing} (found {sorted(seen)[:20]})")


def check_screenshot(browser_page, base: str, rel: str, out: Path, report: Report) -> None:
    browser_page.set_viewport_size({"width": 1280, "height": 900})
    browser_page.goto(base + rel, wait_until="load")
    browser_page.wait_for_timeout(300)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = browser_page.screenshot(path=str(out))
    report.screenshots.append(out)
    browser_page.goto("about:blank")
    stats = browser_page.evaluate(_BLANKNESS, base64.b64encode(png).decode())
    if stats["colours"] < 8 or stats["differ"] < 0.02:
        report.problems.append(f"screenshot of {rel} looks blank ({stats})")


def check_site(site: Path, *, pages: list[str] | None = None, search: bool = True,
               screenshots: Path | None = None, unit_page: str | None = None) -> Report:
    """Check ``pages`` (paths relative to ``site``; default: every HTML file) and, optionally, search and
    screenshots (written under ``screenshots``)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no chromium found (tried " + ", ".join(BROWSERS) + "): apt-get install chromium")
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"{site}/index.html is missing: build the site first (make site).")
    rels = pages if pages is not None else sorted(str(p.relative_to(site)) for p in site.rglob("*.html")
                                                  if not p.relative_to(site).parts[0] == "assets")
    report = Report()
    start = time.perf_counter()
    with serve(site) as base, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        host = urlsplit(base).netloc
        index = site / "search" / "search_index.json"
        # Every page's search box builds the whole index in a worker; pages are checked with an empty index of the
        # same config (fast), and search itself once, on its own, with the real one.
        empty_index = json.dumps({"config": json.loads(index.read_text())["config"], "docs": []}) \
            if index.is_file() else None

        def route(r, *, real_index: bool):
            url = r.request.url
            if empty_index and not real_index and url.split("?")[0].endswith("search/search_index.json"):
                return r.fulfill(status=200, content_type="application/json", body=empty_index)
            if urlsplit(url).netloc == host or url.startswith(("data:", "blob:", "about:")):
                return r.continue_()
            return r.abort()

        context.route("**/*", functools.partial(route, real_index=False))
        page = context.new_page()
        listener = _Listener(page)
        for rel in rels:
            check_page(page, listener, site, base, rel, report)
        page.close()
        context.close()
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        context.route("**/*", functools.partial(route, real_index=True))
        page = context.new_page()
        if search:
            check_search(page, base, teaching_pages(site), report)
        if screenshots is not None:
            check_screenshot(page, base, "index.html", screenshots / "landing.png", report)
            unit = unit_page or next((p for p in teaching_pages(site)), "units/" + next(
                (site / "units").glob("*.html")).name)
            check_screenshot(page, base, unit, screenshots / "unit.png", report)
        page.close()
        chromium.close()
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the built course site in headless chromium.")
    parser.add_argument("site", type=Path, nargs="?", default=Path("build/site"))
    parser.add_argument("--screenshots", type=Path, default=Path("build/site-check"))
    args = parser.parse_args(argv)
    report = check_site(args.site, screenshots=args.screenshots)
    print(f"site check: {report.pages} pages, {report.figures} figures, {report.views} attention views, "
          f"{report.slides} slide decks, {report.links} links, in {report.seconds:.0f} s; screenshots in "
          f"{args.screenshots}")
    for problem in report.problems:
        print("  PROBLEM", problem)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
