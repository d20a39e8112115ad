"""Instructor notes: the committed notes are what the generator writes from the notebooks today, their expected
outputs are the executed notebooks' outputs, and the extractors (checker mistakes, questions, timing) find what is
there and nothing else."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from mechlab.course import site_notes, site_timing

UNITS = site_notes.find_units()


def test_units_are_found_from_the_notebooks_folder():
    names = sorted(p.stem for p in (site_notes.ROOT / "notebooks").glob("*.ipynb"))
    assert [u.stem for u in UNITS] == names
    assert all(u.id == u.stem.split("_")[0] for u in UNITS)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.id)
def test_committed_notes_are_regenerated_exactly(unit):
    path = site_notes.notes_path(unit)
    assert path.is_file(), f"{path} is missing: run `python -m mechlab.course.site_notes`"
    assert path.read_text() == site_notes.notes_markdown(unit), (
        f"{path} is stale (a notebook, a checker, site/notes/{unit.id}.md or site/timings.json changed): "
        "run `python -m mechlab.course.site_notes` and commit the result")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.id)
def test_expected_outputs_are_the_executed_notebooks_outputs(unit):
    """Read the notebook here without the generator: every compared cell's committed output is in the notes."""
    notes = site_notes.notes_path(unit).read_text()
    nb = json.loads(unit.walkthrough.read_text())
    compared = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).startswith(
        "# NBVAL_CHECK_OUTPUT")]
    for cell in compared:
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o["output_type"] == "stream")
        for line in text.strip().splitlines():
            assert line.rstrip() in notes, f"{unit.stem}: output line {line!r} is not in the instructor notes"
    last = [c for c in nb["cells"] if c["cell_type"] == "code"][-1]
    # the kernel may split one print into several stream outputs (e.g. the text, then its newline): join them
    streamed = "".join("".join(out["text"]) for out in last.get("outputs", []) if out["output_type"] == "stream")
    if streamed.strip():
        assert streamed.strip().splitlines()[-1] in notes


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.id)
def test_every_exercise_has_its_minutes_and_checkers_listed(unit):
    if unit.solutions is None:
        pytest.skip("no solutions notebook")
    notes = site_notes.notes_path(unit).read_text()
    text = unit.solutions.read_text()
    minutes = [int(m) for m in re.findall(r"~\s*(\d+)\s*min", text)]
    exercises = site_notes.exercises_in(nbformat.read(unit.solutions, as_version=4))
    assert sum(e.minutes for e in exercises) == sum(minutes)
    assert f"Exercises: **{sum(minutes)} min**" in notes
    for name in set(re.findall(r"unit\w+\.(check_\w+)\(", text)):
        assert name in notes, f"checker {name} of {unit.stem} is not in its notes"


def test_checker_mistakes_are_read_from_the_source(tmp_path):
    module = tmp_path / "unit99.py"
    module.write_text('''
_SHARED = {"uses the wrong axis": None}

def _cases():
    return [Case("small", hint="is the scale there?"), Case("big", hint=f"off by {1}?")]

def _problems(got, want):
    problems = []
    problems.append(f"shape {got} is wrong")
    return problems

def check_a(fn):
    mistakes = {"the sign is flipped": None, "off by one position": None}
    run_cases(fn, None, _cases(), mistakes=mistakes)

def check_b(fn):
    run_cases(fn, None, [], mistakes=_SHARED, compare=_problems)
    wrong = {}
    wrong["a no-op hook"] = 1

def check_c(fn):
    run_cases(fn, None, [])

SIGN = "the sign is flipped"
SWAP = "noising and denoising are swapped"

def check_d(fn):
    variants = {SIGN: 1}
    variants[SWAP + " (and more)"] = 2
''')
    found = site_notes.checker_mistakes(module)
    assert found["check_a"] == (["the sign is flipped", "off by one position"], ["is the scale there?", "off by <1>?"])
    assert sorted(found["check_b"][0]) == ["a no-op hook", "shape <got> is wrong", "uses the wrong axis"]
    assert found["check_c"] == ([], [])
    assert found["check_d"] == (["the sign is flipped", "noising and denoising are swapped (and more)"], [])


def test_questions_get_the_collapsed_answer_or_what_follows():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("## Is it linear?\n\nSome text. **Predict before you run:** which head wins?\n\n"
                                      "<details><summary>Answer</summary>\n\nHead L1H2.\n</details>"),
        nbformat.v4.new_markdown_cell("How large is the gap? We measure it."),
        nbformat.v4.new_code_cell("print(3)"),
        nbformat.v4.new_markdown_cell("The gap is 3 nats, as printed. `x?` is code, not a question."),
        nbformat.v4.new_code_cell("assert True  # the final checks, which answer no question"),
    ]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="gap 3\n")]
    qs = {q.text: q for q in site_notes.questions_in(nb, "walkthrough")}
    assert sorted(qs) == ["How large is the gap?", "Is it linear?", "which head wins?"]
    # the collapsed answer answers the paragraph just before it, not the heading two paragraphs up
    assert qs["which head wins?"].answer == "Head L1H2." and qs["which head wins?"].source == site_notes.ANSWERED
    assert qs["Is it linear?"].source != site_notes.ANSWERED
    assert "gap 3" in qs["How large is the gap?"].answer and "The gap is 3 nats" in qs["How large is the gap?"].answer


def test_a_list_of_open_questions_needs_written_answers():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("### Questions for you\n\n1. Why a?\n2. Why b?\n3. Why c?")]
    qs = site_notes.questions_in(nb, "walkthrough")
    assert [q.text for q in qs] == ["Why a?", "Why b?", "Why c?"] and {q.source for q in qs} == {site_notes.OPEN}


def test_timing_sections_add_measured_and_reading_time():
    nb = nbformat.v4.new_notebook()
    words = " ".join(["word"] * site_notes.WORDS_PER_MINUTE)
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n" + words), nbformat.v4.new_code_cell("a = 1"),
                nbformat.v4.new_markdown_cell("## Part\n" + words), nbformat.v4.new_code_cell("b = 2\nc = 3")]
    sections = site_notes.walkthrough_sections(nb, {"1": 60.0, "3": 30.0})
    assert [s.title for s in sections] == ["Introduction", "Part"]
    # 1 min of prose (+ the heading's words), 1 line of code, 60 s run
    assert sections[0].run_seconds == 60.0 and sections[1].run_seconds == 30.0
    assert sections[0].reading_minutes == pytest.approx((site_notes.WORDS_PER_MINUTE + 1) / site_notes.WORDS_PER_MINUTE
                                                        + 1 / site_notes.CODE_LINES_PER_MINUTE)


def test_cell_seconds_reads_nbclient_timestamps():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("x"), nbformat.v4.new_code_cell("y")]
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-12-02T07:00:00.000000Z",
                                         "shell.execute_reply": "2026-12-02T07:00:02.500000Z"}
    assert site_timing.cell_seconds(nb) == {"1": 2.5}


def test_every_unit_has_a_timing_and_the_hash_detects_a_change():
    timings = site_notes.load_timings()
    for unit in UNITS:
        assert unit.walkthrough.name in timings, (f"{unit.walkthrough} was never timed: run `MECHLAB_MODEL=offline "
                                                  f"python -m mechlab.course.site_timing {unit.walkthrough}`")
    nb = nbformat.read(UNITS[0].walkthrough, as_version=4)
    before = site_timing.source_hash(nb)
    nb.cells[0].source += " "
    assert site_timing.source_hash(nb) != before
