"""The course pipeline: exercise generation, staleness, the Colab setup cell, the headless runner."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from mechlab.course import colab, exercises, run

ROOT = Path(__file__).resolve().parents[1]
_REAL_FIND_SPEC = importlib.util.find_spec


def _solutions_nb(extra_md: str = "Difficulty: 🔴⚪⚪⚪⚪ · Importance: 🔵🔵⚪⚪⚪ · ~5 min\n"
                  "<details><summary>Hint 1</summary>add</details>"):
    v4 = nbformat.v4
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# Title"),
        v4.new_code_cell("# mechlab: setup\npass"),
        v4.new_markdown_cell("#### Exercise 1: add\n" + extra_md),
        v4.new_code_cell("def add(a, b):\n    # BEGIN SOLUTION\n    return a + b\n    # END SOLUTION"),
        v4.new_code_cell("# SOLUTION ONLY\nprint(add(1, 2))", outputs=[v4.new_output("stream", text="3\n")]),
        v4.new_code_cell("assert add(2, 2) == 4"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def test_blank_keeps_indentation_and_raises():
    src = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n"
    out = exercises.blank_solutions(src)
    assert "return x + y" not in out and "    y = 1" in out
    assert '    raise NotImplementedError("Exercise' in out
    namespace: dict = {}
    exec(out, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


def test_unclosed_or_stray_markers_are_errors():
    with pytest.raises(exercises.ExerciseFormatError, match="never closed"):
        exercises.blank_solutions("# BEGIN SOLUTION\nx = 1")
    with pytest.raises(exercises.ExerciseFormatError, match="without"):
        exercises.blank_solutions("x = 1\n# END SOLUTION")


def test_make_exercise_blanks_drops_and_keeps_the_right_cells():
    ex = exercises.make_exercise(_solutions_nb(), "solutions/x.ipynb", "exercises/x.ipynb")
    sources = [c.source for c in ex.cells]
    code = "\n".join(c.source for c in ex.cells if c.cell_type == "code")
    joined = "\n".join(sources)
    assert "return a + b" not in code and "NotImplementedError" in code
    assert "print(add(1, 2))" not in joined  # solution-only cell dropped
    assert "assert add(2, 2) == 4" in joined  # checks stay
    assert all(not c.get("outputs") for c in ex.cells if c.cell_type == "code")
    assert sources[0].startswith(colab.BADGE_PREFIX) and "exercises/x.ipynb" in sources[0]
    assert "Exercise version" in sources[1]
    # the solution sits collapsed right under the blanked cell, whole and without the markers
    blank = next(i for i, c in enumerate(ex.cells) if c.cell_type == "code" and "NotImplementedError" in c.source)
    block = ex.cells[blank + 1]
    assert block.cell_type == "markdown" and block.source.startswith("<details><summary>Solution")
    assert "def add(a, b):\n    return a + b" in block.source and "BEGIN SOLUTION" not in block.source
    assert block.source.rstrip().endswith("</details>")


def test_every_exercise_has_its_solution_collapsed_right_under_it():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        blanks = [i for i, c in enumerate(cells) if c.cell_type == "code" and "raise NotImplementedError" in c.source]
        assert blanks, f"{path.name} has no exercise"
        for i in blanks:
            block = cells[i + 1]
            assert block.cell_type == "markdown" and block.source.startswith("<details><summary>Solution"), \
                f"{path.name} cell {i}: no collapsed solution under the exercise"


def test_validation_names_missing_metadata_and_hints():
    problems = exercises.validate_solutions(_solutions_nb(extra_md="no metadata here"), "nb")
    assert any("Difficulty" in p for p in problems) and any("hint" in p for p in problems)


def test_exercises_and_setup_cells_are_in_sync_with_solutions():
    stale = exercises.build(ROOT / "solutions", ROOT / "exercises", ROOT / "notebooks", root=ROOT, check=True)
    assert not stale, f"stale generated files, run `make exercises`: {stale}"


def test_every_solutions_notebook_follows_the_exercise_conventions():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        assert exercises.validate_solutions(nbformat.read(path, as_version=4), path.name) == []


def _run_setup_cell(monkeypatch, *, in_colab: bool, installed: bool) -> list[list[str]]:
    calls: list[list[str]] = []
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (_REAL_FIND_SPEC(name, *a) if installed or name != "mechlab" else None))
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(args)))
    exec(compile(colab.setup_cell_source(), "<setup cell>", "exec"), {})
    return calls


def test_setup_cell_in_colab_runs_one_pip_install_that_names_neither_torch_nor_numpy(monkeypatch):
    calls = _run_setup_cell(monkeypatch, in_colab=True, installed=False)
    assert len(calls) == 1
    args = calls[0]
    assert args[1:4] == ["-m", "pip", "install"]
    named = [a for a in args[4:] if not a.startswith("-")]
    constraints = args[args.index("-c") + 1]
    named.remove(constraints)
    assert named == [colab.install_target()]
    assert not any(a.split("=")[0].split("<")[0].split(">")[0].strip() in {"torch", "numpy"} for a in args)
    pins = Path(constraints).read_text()
    assert "torch==" in pins  # torch is pinned to the version already installed, never replaced


def test_setup_cell_does_nothing_outside_colab_or_when_installed(monkeypatch):
    assert _run_setup_cell(monkeypatch, in_colab=False, installed=False) == []
    assert _run_setup_cell(monkeypatch, in_colab=True, installed=True) == []


def test_runner_executes_writes_html_and_reports_model(tmp_path, capsys):
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell("print('mechlab: model toy-test [built here]')")],
                         metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}})
    src = tmp_path / "nbs" / "a.ipynb"
    src.parent.mkdir()
    nbformat.write(nb, src)
    bad = tmp_path / "nbs" / "b.ipynb"
    nbformat.write(v4.new_notebook(cells=[v4.new_code_cell("1/0")], metadata=nb.metadata), bad)
    code = run.main([str(src.parent), "--out", str(tmp_path / "build")])
    out = capsys.readouterr().out
    assert code == 1  # b.ipynb fails
    assert (tmp_path / "build" / "nbs" / "a.html").is_file()
    assert "toy-test" in out and "FAILED" in out and "ZeroDivisionError" in out


def test_runner_lists_standin_skips_and_checks_the_model(tmp_path, capsys):
    v4 = nbformat.v4
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    cells = [v4.new_code_cell("print('mechlab: loaded gpt2 [hub, mechlab stand-in; STAND-IN]')"),
             v4.new_code_cell("print('skipped on a stand-in model: IOI answered')\n"
                              "print('skipped on a stand-in model: IOI answered')")]
    src = tmp_path / "nbs" / "a.ipynb"
    src.parent.mkdir()
    nbformat.write(v4.new_notebook(cells=cells, metadata=meta), src)
    assert run.main([str(src), "--out", str(tmp_path / "b"), "--no-html", "--expect-model", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped on a stand-in model: IOI answered") == 1 and "ok" in out
    assert (tmp_path / "b" / "nbs" / "a.ipynb").is_file() and not (tmp_path / "b" / "nbs" / "a.html").exists()
    # a notebook that loaded another model (e.g. fell back to the organism) fails under --expect-model
    assert run.main([str(src), "--out", str(tmp_path / "b"), "--no-html", "--expect-model", "google/gemma-2b"]) == 1
    assert "expected the notebook to load 'google/gemma-2b'" in capsys.readouterr().out


def test_shrink_outputs_replaces_only_large_outputs():
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell("x", outputs=[
        v4.new_output("display_data", data={"text/html": "x" * 300_000}),
        v4.new_output("stream", text="small\n")])])
    assert run.shrink_outputs(nb, max_kb=200) == 1
    assert "not committed" in nb.cells[0].outputs[0]["text"]
    assert nb.cells[0].outputs[1]["text"] == "small\n"


def test_pytest_collects_nbval_items_from_every_course_notebook():
    notebooks = sorted(str(p.relative_to(ROOT)) for d in ("notebooks", "solutions") for p in (ROOT / d).glob("*.ipynb"))
    assert notebooks, "no notebooks in notebooks/ or solutions/"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval-lax", "-p",
                           "no:cacheprovider", *notebooks], cwd=ROOT, capture_output=True, text=True, timeout=120)
    collected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert collected == set(notebooks), proc.stdout[-2000:] + proc.stderr[-2000:]


def test_html_export_draws_plotly_figures_offline(tmp_path):
    """A figure output holds only plotly's JSON (nbconvert cannot draw it): the exported page gets the figure as
    HTML, with plotly.js inlined once and the committed notebook left untouched."""
    import plotly.graph_objects as go

    nb = nbformat.v4.new_notebook()
    for y in ([3, 1, 2], [7, 8, 9]):
        fig = go.Figure(go.Bar(y=y))
        cell = nbformat.v4.new_code_cell("fig")
        spec = {"application/vnd.plotly.v1+json": fig.to_plotly_json()}
        cell.outputs = [nbformat.v4.new_output("display_data", data=spec)]
        nb.cells.append(cell)
    target = tmp_path / "page.html"
    run.write_html(nb, target)
    page = target.read_text()
    assert page.count("Plotly.newPlot") == 2, "each figure must be drawn"
    assert page.count("plotly.js v") == 1, "plotly.js must be inlined exactly once (offline, not per figure)"
    assert "text/html" not in nb.cells[0].outputs[0].data


def test_gpt2_mode_names_notebooks_that_exist_and_runs_in_ci():
    makefile = (ROOT / "Makefile").read_text()
    words = makefile.replace("\\\n", " ").split()
    listed = [word for word in words if word.startswith("notebooks/") and word.endswith(".ipynb")]
    assert len(listed) >= 6 and all((ROOT / p).is_file() for p in listed), listed
    for unit in ("01", "02", "04", "05", "06", "07"):
        assert any(Path(p).name.startswith(unit) for p in listed), f"unit {unit} missing from make test-gpt2"
    assert "--expect-model gpt2" in makefile and "--expect-model google/gemma-2b" in makefile
    assert "make test-gpt2" in (ROOT / ".ci" / "run").read_text()
