"""Measure how long each walkthrough's cells take to run, for the instructor notes' timing plan.

The committed notebooks carry no execution timestamps (``mechlab.course.run --inplace`` drops them so that a
re-run does not change every cell), so the times are measured here and written to one small JSON file::

    MECHLAB_MODEL=offline python -m mechlab.course.site_timing notebooks --out site/timings.json

Each notebook runs once, headless, through the same runner as ``make course`` (``mechlab.course.run.run_one``,
which keeps nbclient's per-cell timestamps). The notebook files are only read. For each notebook the file holds
the seconds of every code cell (by cell index), their total, the model it ran on, a hash of the cells' sources (so
the site can say when a notebook changed after it was timed), the machine it ran on and the machine's 5-minute
load average at the end (times measured on a busy machine are upper bounds). Notebooks not named keep
their earlier entry.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import nbformat

from mechlab.course import run

TIMESTAMP_START = "iopub.execute_input"
TIMESTAMP_END = "shell.execute_reply"


def source_hash(nb) -> str:
    """A hash of the cells' types and sources (outputs excluded): changes when the notebook's code or text does."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        digest.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return digest.hexdigest()[:16]


def _seconds(stamp_from: str, stamp_to: str) -> float:
    start = datetime.datetime.fromisoformat(stamp_from.replace("Z", "+00:00"))
    end = datetime.datetime.fromisoformat(stamp_to.replace("Z", "+00:00"))
    return max(0.0, (end - start).total_seconds())


def cell_seconds(executed) -> dict[str, float]:
    """Seconds per code cell of an executed notebook, from nbclient's timestamps (keys are cell indices)."""
    out = {}
    for index, cell in enumerate(executed.cells):
        stamps = cell.metadata.get("execution", {}) if cell.cell_type == "code" else {}
        if TIMESTAMP_START in stamps and TIMESTAMP_END in stamps:
            out[str(index)] = round(_seconds(stamps[TIMESTAMP_START], stamps[TIMESTAMP_END]), 2)
    return out


def measure(path: Path, *, timeout: int = 1800) -> dict:
    original = nbformat.read(path, as_version=4)
    result, executed = run.run_one(path, timeout=timeout, kernel="python3")
    if not result.ok:
        raise RuntimeError(f"{path} failed while being timed: {result.error}")
    cells = cell_seconds(executed)
    if not cells:
        raise RuntimeError(f"{path}: the runner recorded no cell timestamps (nbclient's record_timing is off?)")
    return {
        "source_hash": source_hash(original),
        "model": result.model,
        "cell_seconds": cells,
        "total_seconds": round(sum(cells.values()), 1),
        "wall_seconds": round(result.seconds, 1),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "mechlab_model": os.environ.get("MECHLAB_MODEL", ""),
        "load_average": round(os.getloadavg()[1], 1),  # other work on the machine slows the cells: say how much
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time every code cell of course notebooks.")
    parser.add_argument("paths", nargs="+", type=Path, help="notebooks or folders of notebooks")
    parser.add_argument("--out", type=Path, default=Path("site/timings.json"))
    args = parser.parse_args(argv)
    if os.environ.get("MECHLAB_MODEL") != "offline":
        print("note: MECHLAB_MODEL is not 'offline'; the timings will be of whatever model the notebooks load.")
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for path in run.collect(args.paths):
        print(f"timing {path} ...", flush=True)
        entry = measure(path)
        data[path.name] = entry
        print(f"    {entry['total_seconds']} s in cells ({entry['wall_seconds']} s wall) on {entry['model']}",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")  # after each: a crash keeps some
    return 0


if __name__ == "__main__":
    sys.exit(main())
