"""Run course notebooks headless; write executed copies and HTML, and end with a table.

Usage::

    python -m mechlab.course.run notebooks solutions --out build      # what `make course` runs
    python -m mechlab.course.run --inplace notebooks/01_tokens_and_logits.ipynb   # refresh committed outputs

The table says, per notebook: the model it ran on (read from the line ``mechlab: loaded NAME`` that
``load_model`` prints, or ``mechlab: model NAME`` for notebooks that build their own), seconds, ok/failed.
The exit code is non-zero when any notebook failed.

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


@dataclass
class RunResult:
    path: Path
    model: str
    seconds: float
    ok: bool
    error: str = ""


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


def models_used(nb) -> str:
    names: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for name in MODEL_LINE.findall(text if isinstance(text, str) else "".join(text)):
                if name not in names:
                    names.append(name)
    return ", ".join(names) if names else "-"


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


def run_one(path: Path, *, timeout: int, kernel: str) -> tuple[RunResult, object]:
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
    return RunResult(path, models_used(nb), seconds, ok=not error, error=error), nb


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
    rows = [("notebook", "model", "seconds", "status")]
    for r in results:
        rows.append((str(r.path), r.model, f"{r.seconds:.1f}", "ok" if r.ok else "FAILED"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
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
    args = parser.parse_args(argv)

    notebooks = collect(args.paths)
    if not notebooks:
        print("no notebooks found in " + ", ".join(map(str, args.paths)))
        return 1
    results = []
    for i, path in enumerate(notebooks, start=1):
        print(f"[{i}/{len(notebooks)}] running {path} ...", flush=True)
        result, nb = run_one(path, timeout=args.timeout, kernel=args.kernel)
        results.append(result)
        if args.inplace:
            if result.ok:
                shrink_outputs(nb, args.max_output_kb)
                nbformat.write(nb, path)
        else:
            target = args.out / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
            write_html(nb, target.with_suffix(".html"))
        status = "ok" if result.ok else f"FAILED: {result.error}"
        print(f"    {status} in {result.seconds:.1f} s on {result.model}", flush=True)
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
