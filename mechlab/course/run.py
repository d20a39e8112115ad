"""Run course notebooks headless; write executed copies and HTML, and end with a table.

Usage::

    python -m mechlab.course.run notebooks solutions --out build      # what `make course` runs
    python -m mechlab.course.run --inplace notebooks/01_tokens_and_logits.ipynb   # refresh committed outputs

The table says, per notebook: the model it ran on (read from the line ``mechlab: loaded NAME`` that
``load_model`` prints, or ``mechlab: model NAME`` for notebooks that build their own), seconds, ok/failed.
The exit code is non-zero when any notebook failed.

CI's stand-in modes (``make test-gpt2``) run the GPT-2 / Gemma branches on random-weight stand-ins
(:mod:`mechlab.models.standins`): ``--expect-model gpt2`` fails a notebook that did not load that model, and the
learned-behaviour asserts the stand-in skipped (``skipped on a stand-in model: NAME``) are listed per notebook.
``--no-html`` skips the HTML export.

Committed outputs (``--inplace``) are kept small: outputs over ``--max-output-kb`` (default 200 kB, e.g. an
inlined JavaScript bundle) are replaced by a one-line note, and per-cell execution timestamps are dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import plotly.io as pio
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

MODEL_LINE = re.compile(r"mechlab: (?:loaded|model) (\S+)")
# printed by mechlab.checks.core.expect_learned when a stand-in model skips a learned-behaviour assert
SKIP_LINE = re.compile(r"skipped on a stand-in model: (.+)")


@dataclass
class RunResult:
    path: Path
    model: str
    seconds: float
    ok: bool
    error: str = ""
    skipped: tuple[str, ...] = ()  # learned-behaviour asserts skipped on a stand-in, by name


def collect(paths: list[Path]) -> list[Path]:
    """Notebooks named directly, or found (sorted) in the folders given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.ipynb") if not p.name.startswith(".")))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path}: expected a notebook (.ipynb) or a folder of notebooks.")
    return found


def _stream_texts(nb) -> list[str]:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
                texts.append(text if isinstance(text, str) else "".join(text))
    return texts


def models_used(nb) -> str:
    names: list[str] = []
    for text in _stream_texts(nb):
        for name in MODEL_LINE.findall(text):
            if name not in names:
                names.append(name)
    return ", ".join(names) if names else "-"


def skipped_on_standin(nb) -> tuple[str, ...]:
    """The names of the learned-behaviour asserts a stand-in model skipped, in order, each once."""
    names: list[str] = []
    for text in _stream_texts(nb):
        for name in SKIP_LINE.findall(text):
            if name.strip() not in names:
                names.append(name.strip())
    return tuple(names)


def shrink_outputs(nb, max_kb: int) -> int:
    """Replace outputs larger than ``max_kb`` with a note; drop execution timestamps. Returns #replaced."""
    replaced = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for i, out in enumerate(cell.outputs):
            size = len(json.dumps(out))
            if size > max_kb * 1024:
                cell.outputs[i] = nbformat.v4.new_output(
                    "stream", name="stdout",
                    text=f"[output of {size // 1024} kB not committed: run the cell to see it]\n")
                replaced += 1
    return replaced


def run_one(path: Path, *, timeout: int, kernel: str, expect_model: str | None = None) -> tuple[RunResult, object]:
    """Execute one notebook; not ok on a cell error, a timeout, or (with ``expect_model``) when the notebook did not
    load that model (e.g. it fell back to the organism)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
    except TimeoutError as err:
        error = f"timeout: {err}"
    seconds = time.perf_counter() - start
    used = models_used(nb)
    if not error and expect_model is not None and expect_model not in used.split(", "):
        error = f"expected the notebook to load {expect_model!r}, but it loaded {used}"
    return RunResult(path, used, seconds, ok=not error, error=error, skipped=skipped_on_standin(nb)), nb


def with_plotly_html(nb):
    """A copy of ``nb`` in which every plotly figure output also carries ``text/html``, so the HTML export shows
    the figures (nbconvert cannot render plotly's JSON mimetype). plotly.js is inlined once per file, so the
    page works offline; the committed notebooks keep only the JSON."""


    nb = copy.deepcopy(nb)
    first = True
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            spec = data.get("application/vnd.plotly.v1+json")
            if spec is None or "text/html" in data:
                continue
            fig = pio.from_json(json.dumps(spec), skip_invalid=True)
            data["text/html"] = pio.to_html(fig, include_plotlyjs=first, full_html=False)
            first = False
    return nb


def write_html(nb, target: Path) -> None:
    nb = with_plotly_html(nb)

    body, _ = HTMLExporter().from_notebook_node(nb)
    target.write_text(body)


def table(results: list[RunResult]) -> str:
    rows = [("notebook", "model", "seconds", "status", "skipped on stand-in")]
    for r in results:
        rows.append((str(r.path), r.model, f"{r.seconds:.1f}", "ok" if r.ok else "FAILED", str(len(r.skipped))))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run course notebooks headless.")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("build"), help="folder for executed copies and HTML")
    parser.add_argument("--inplace", action="store_true", help="save outputs back into the notebooks themselves")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--max-output-kb", type=int, default=200)
    parser.add_argument("--no-html", action="store_true", help="write executed copies only (faster; CI modes)")
    parser.add_argument("--expect-model", default=None,
                        help="fail a notebook that did not load this model (stand-in modes: gpt2, google/gemma-2b)")
    args = parser.parse_args(argv)

    notebooks = collect(args.paths)
    if not notebooks:
        print("no notebooks found in " + ", ".join(map(str, args.paths)))
        return 1
    results = []
    for i, path in enumerate(notebooks, start=1):
        print(f"[{i}/{len(notebooks)}] running {path} ...", flush=True)
        result, nb = run_one(path, timeout=args.timeout, kernel=args.kernel, expect_model=args.expect_model)
        results.append(result)
        if args.inplace:
            if result.ok:
                shrink_outputs(nb, args.max_output_kb)
                nbformat.write(nb, path)
        else:
            target = args.out / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
            if not args.no_html:
                write_html(nb, target.with_suffix(".html"))
        status = "ok" if result.ok else f"FAILED: {result.error}"
        print(f"    {status} in {result.seconds:.1f} s on {result.model}", flush=True)
        for name in result.skipped:
            print(f"    skipped on a stand-in model: {name}", flush=True)
    print()
    print(table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} of {len(results)} notebook(s) failed.")
        return 1
    where = "in place" if args.inplace else f"executed copies and HTML in {args.out}/"
    print(f"\nall {len(results)} notebook(s) ran ({where}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
