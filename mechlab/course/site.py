"""Build the course site (``make site``): mkdocs-material pages from the committed, executed notebooks.

Usage::

    python -m mechlab.course.site                 # build/site-src (Markdown) -> build/site (HTML)
    python -m mechlab.course.site --no-html       # only the Markdown sources and the slides (no mkdocs run)

Nothing is executed and nothing is fetched: the notebooks' committed outputs are shown, and every script a page
needs (plotly.js, the circuitsvis bundle, reveal.js, the search index) comes from an installed Python package
and is served from the site itself. Units are the notebooks in ``notebooks/`` (a new one appears on the next
build); each gets its walkthrough page, its exercises and solutions pages, its slide deck and its instructor
notes (``site/instructor/``, written by :mod:`mechlab.course.site_notes`).

Sources that a person writes live in ``site/``: ``pages/`` (landing text, setup checklist), ``notes/`` (the
hand-written part of the instructor notes), ``schedules.json``, ``assets/`` (CSS, the figure loader, the Colab
badge), ``mkdocs.base.yml``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

from mechlab.course import colab, site_notes, site_render, site_schedule
from mechlab.course.site_notes import ROOT
from mechlab.plot.attention import bundle_path

SITE_SOURCES = ROOT / "site"
DOCS = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
API_LAYERS = ("core", "data", "models", "methods", "cot", "plot", "checks", "course")
SLIDES_DIR = "slides"


def plotly_js() -> Path:
    spec = importlib.util.find_spec("plotly")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.js is missing at {path}; reinstall plotly (`pip install --force-reinstall "
                                "plotly`).")
    return path


def reveal_dir() -> Path:
    """reveal.js as shipped inside the ``sphinx-revealjs`` wheel (found without importing sphinx)."""
    spec = importlib.util.find_spec("sphinx_revealjs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the site's slides need reveal.js from the `sphinx-revealjs` package: "
                                  "pip install -e '.[site]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "_static" / "revealjs"
    if not (path / "dist" / "reveal.js").is_file():
        raise FileNotFoundError(f"reveal.js not found under {path}; reinstall sphinx-revealjs.")
    return path


def page_of(unit: site_notes.Unit, kind: str = "") -> str:
    """A unit's page path inside the docs folder: ``units/02_x.md``, ``units/02_x-exercises.md``, ..."""
    return f"units/{unit.stem}{'-' + kind if kind else ''}.md"


def _scripts(rendered: site_render.Rendered, depth: int) -> str:
    up = "../" * depth
    tags = []
    if rendered.figures:
        tags.append(f'<script src="{up}assets/plotly.min.js"></script>')
    if rendered.views:
        tags.append(f'<script src="{up}assets/circuitsvis.js"></script>')
    return "\n".join(tags)


def unit_links(unit: site_notes.Unit, here: str) -> str:
    """The box of links at the top of each of a unit's pages."""
    items = [("Walkthrough", f"{unit.stem}.md"), ("Exercises", f"{unit.stem}-exercises.md"),
             ("Solutions", f"{unit.stem}-solutions.md"),
             ("Slides", f"../{SLIDES_DIR}/{unit.stem}.html"), ("Instructor notes", f"../instructor/{unit.stem}.md")]
    if unit.exercises is None:
        items = [i for i in items if i[0] != "Exercises"]
    if unit.solutions is None:
        items = [i for i in items if i[0] != "Solutions"]
    links = [f"**{label}**" if target == here else f"[{label}]({target})" for label, target in items]
    badge = "../assets/colab-badge.svg"
    colab_links = [f"[![Open In Colab]({badge})]({colab.colab_url(f'{folder}/{unit.walkthrough.name}')}) {folder}"
                   for folder, path in (("notebooks", unit.walkthrough), ("exercises", unit.exercises)) if path]
    downloads = [f"[{folder}/{unit.walkthrough.name}](../downloads/{folder}/{unit.walkthrough.name})"
                 for folder, path in (("notebooks", unit.walkthrough), ("exercises", unit.exercises),
                                      ("solutions", unit.solutions)) if path]
    return ('<div class="mechlab-unit-links" markdown="1">\n' + " · ".join(links) + "<br>\n"
            + " · ".join(colab_links) + "<br>\nDownload: " + " · ".join(downloads) + "\n</div>\n")


def write_unit_pages(unit: site_notes.Unit, docs: Path) -> dict[str, site_render.Rendered]:
    written = {}
    for kind, path in (("", unit.walkthrough), ("exercises", unit.exercises), ("solutions", unit.solutions)):
        if path is None:
            continue
        nb = nbformat.read(path, as_version=4)
        rendered = site_render.notebook_markdown(nb, badge_src="../assets/colab-badge.svg")
        target = docs / page_of(unit, kind)
        name = target.name
        title = {"": unit.title, "exercises": f"{unit.title} · exercises",
                 "solutions": f"{unit.title} · solutions"}[kind]
        front = f"---\ntitle: \"{title}\"\n---\n\n"
        head = _scripts(rendered, 1)
        target.write_text(front + (head + "\n\n" if head else "") + unit_links(unit, name) + "\n" + rendered.text)
        written[page_of(unit, kind)] = rendered
    return written


def write_slides(unit: site_notes.Unit, docs: Path) -> site_render.Rendered:
    nb = nbformat.read(unit.walkthrough, as_version=4)
    probe = site_render.notebook_markdown(nb, badge_src="")
    scripts = (["../assets/plotly.min.js"] if probe.figures else []) + (
        ["../assets/circuitsvis.js"] if probe.views else []) + ["../assets/mechlab-figures.js"]
    rendered = site_render.slides_html(nb, title=unit.title, reveal="../assets/reveal", scripts=scripts,
                                       css="../assets/mechlab-slides.css", back=f"../units/{unit.stem}.html",
                                       badge_src="../assets/colab-badge.svg")
    (docs / SLIDES_DIR / f"{unit.stem}.html").write_text(rendered.text)
    return rendered


def landing(units: list[site_notes.Unit], timings: dict) -> str:
    text = (SITE_SOURCES / "pages" / "index.md").read_text()
    rows = ["| unit | Colab | pages | walkthrough | exercises |", "|---|---|---|---|---|"]
    for unit in units:
        t = site_notes.unit_timing(unit, timings)
        badge = f"[![Open In Colab](assets/colab-badge.svg)]({colab.colab_url(f'notebooks/{unit.walkthrough.name}')})"
        pages = [f"[walkthrough]({page_of(unit)})"]
        if unit.exercises:
            pages.append(f"[exercises]({page_of(unit, 'exercises')})")
        if unit.solutions:
            pages.append(f"[solutions]({page_of(unit, 'solutions')})")
        pages += [f"[slides]({SLIDES_DIR}/{unit.stem}.html)", f"[notes](instructor/{unit.stem}.md)"]
        walk = "not timed yet" if t.walkthrough_minutes is None else f"~{t.walkthrough_minutes} min"
        rows.append(f"| **{unit.title}** | {badge} | {' · '.join(pages)} | {walk} | {len(t.exercises)}, "
                    f"~{t.exercise_minutes} min |")
    return text.replace("<!-- mechlab:units -->", "\n".join(rows))


def api_pages(docs: Path) -> list[dict]:
    nav = []
    for layer in API_LAYERS:
        folder = ROOT / "mechlab" / layer
        modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        if not modules:
            continue
        body = [f"# mechlab.{layer}", ""]
        for module in modules:
            body += [f"::: mechlab.{layer}.{module}", ""]
        (docs / "api" / f"{layer}.md").write_text("\n".join(body))
        nav.append({f"mechlab.{layer}": f"api/{layer}.md"})
    return nav


def copy_assets(docs: Path) -> None:
    assets = docs / "assets"
    shutil.copytree(SITE_SOURCES / "assets", assets, dirs_exist_ok=True)
    shutil.copy(plotly_js(), assets / "plotly.min.js")
    bundle = bundle_path().read_text(encoding="utf-8")
    (assets / "circuitsvis.js").write_text(bundle + "\nwindow.CircuitsVis = CircuitsVis;\n", encoding="utf-8")
    reveal = reveal_dir()
    for part in ("dist", "plugin/notes"):
        shutil.copytree(reveal / part, assets / "reveal" / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.map", "*.esm.js"))


def write_sources(docs: Path = DOCS) -> dict:
    """Write every Markdown page, the slides and the assets into ``docs``; return the mkdocs nav and a summary."""
    if docs.exists():
        shutil.rmtree(docs)
    for sub in ("units", "instructor", "api", SLIDES_DIR, "downloads"):
        (docs / sub).mkdir(parents=True, exist_ok=True)
    units = site_notes.find_units()
    timings = site_notes.load_timings()
    copy_assets(docs)
    for folder in ("notebooks", "exercises", "solutions"):
        shutil.copytree(ROOT / folder, docs / "downloads" / folder, ignore=shutil.ignore_patterns(".*"))

    (docs / "index.md").write_text(landing(units, timings))
    shutil.copy(SITE_SOURCES / "pages" / "setup.md", docs / "setup.md")
    (docs / "schedules.md").write_text(site_schedule.schedules_markdown(units, timings))
    card = (ROOT / "mechlab" / "models" / "organism" / "README.md").read_text()
    (docs / "organism.md").write_text(card)

    unit_nav, notes_nav, pages, slides = [], [], {}, {}
    for unit in units:
        pages.update(write_unit_pages(unit, docs))
        slides[unit.stem] = write_slides(unit, docs)
        notes = site_notes.notes_path(unit)
        if not notes.is_file():
            raise FileNotFoundError(f"{notes} is missing: run `python -m mechlab.course.site_notes`.")
        shutil.copy(notes, docs / "instructor" / notes.name)
        entry = [{"Walkthrough": page_of(unit)}]
        if unit.exercises:
            entry.append({"Exercises": page_of(unit, "exercises")})
        if unit.solutions:
            entry.append({"Solutions": page_of(unit, "solutions")})
        unit_nav.append({unit.title: entry})
        notes_nav.append({unit.title: f"instructor/{notes.name}"})
    index = ["# Instructor notes", "", "One page per unit, printable (the browser's print opens every collapsed "
             "answer). The [schedules](../schedules.md) put the units' timings together.", ""]
    index += [f"- [{u.title}]({u.stem}.md)" for u in units]
    (docs / "instructor" / "index.md").write_text("\n".join(index) + "\n")
    nav = [{"Home": "index.md"}, {"Setup": "setup.md"}, {"Units": unit_nav}, {"Organism model card": "organism.md"},
           {"Teaching": [{"Schedules": "schedules.md"}, {"Instructor notes": ["instructor/index.md", *notes_nav]}]},
           {"API reference": api_pages(docs)}]
    return {"nav": nav, "units": units, "pages": pages, "slides": slides}


def write_config(nav: list, docs: Path = DOCS, out: Path = OUT) -> Path:
    config = yaml.safe_load((SITE_SOURCES / "mkdocs.base.yml").read_text())
    config.update({"docs_dir": str(docs), "site_dir": str(out), "nav": nav})
    path = docs.parent / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def build_site(html: bool = True) -> dict:
    start = time.perf_counter()
    summary = write_sources()
    config = write_config(summary["nav"])
    if html:
        result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(config)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mkdocs build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    summary["seconds"] = time.perf_counter() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the course site into build/site.")
    parser.add_argument("--no-html", action="store_true", help="write the Markdown sources only")
    args = parser.parse_args(argv)
    summary = build_site(html=not args.no_html)
    figures = sum(r.figures for r in summary["pages"].values())
    views = sum(r.views for r in summary["pages"].values())
    html_pages = len(list(OUT.rglob("*.html"))) if not args.no_html else 0
    print(f"mechlab site: {len(summary['units'])} units, {len(summary['pages'])} notebook pages ({figures} figures, "
          f"{views} attention views), {len(summary['slides'])} slide decks, {html_pages} HTML files in "
          f"{OUT.relative_to(ROOT) if not args.no_html else DOCS.relative_to(ROOT)}, in {summary['seconds']:.0f} s")
    print(json.dumps({"units": [u.id for u in summary["units"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
