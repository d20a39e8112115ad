"""Instructor notes per unit, written from the course's own files so that they cannot drift from it.

A unit's notes (``site/instructor/<notebook>.md``, committed, shown on the site and printable) join:

- what a person wrote, in ``site/notes/<unit>.md``: learning goals, expected findings on GPT-2 and Gemma-2b from
  the literature (with citations), where learners get stuck;
- what this module derives (never typed by hand):
  - the **timing plan**: each walkthrough section's run time, measured (``site/timings.json``, see
    :mod:`mechlab.course.site_timing`), plus its reading time, estimated from its words and lines of code at the
    rates below; and each exercise's minutes, from its ``Difficulty: ... · ~N min`` line;
  - the **expected outputs on the organism**: every cell whose output nbval compares (``# NBVAL_CHECK_OUTPUT``)
    and the final checks cell, with the committed outputs of the executed walkthrough;
  - the **answers to the notebook's questions**: every question the walkthrough and the solutions notebook ask,
    each with the notebook's own collapsed answer where it has one, else with what the notebook shows right after
    the question (the next cell's printed output and the text that reads it);
  - the **mistakes each checker names**: read from ``mechlab/checks/unitNN.py`` with ``ast`` (the ``mistakes=``
    names and the ``hint=`` texts of the cases the checker runs), for every checker the unit's exercises call.

Usage::

    python -m mechlab.course.site_notes            # rewrite site/instructor/*.md
    python -m mechlab.course.site_notes --check    # exit 1 if any is stale (tests/test_site_notes.py does this)
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from mechlab.course.site_timing import source_hash

ROOT = Path(__file__).resolve().parents[2]
WORDS_PER_MINUTE = 150  # reading prose aloud or in a workshop, with a pause to look at a figure
CODE_LINES_PER_MINUTE = 15  # reading code one explains, not typing it
NBVAL_MARK = "# NBVAL_CHECK_OUTPUT"
MINUTES = re.compile(r"~\s*(\d+)\s*min")
CHECKER_CALL = re.compile(r"\b(unit\w+)\.(check_\w+)\s*\(")
ANSWER_BLOCK = re.compile(r"<details>\s*<summary>\s*Answer\s*</summary>(.*?)</details>", re.S | re.I)
HINT_OR_ANSWER = re.compile(r"<details>.*?</details>", re.S)
OPEN_ANSWERS = "## Answers to open questions"
REQUIRED_SECTIONS = ("## Learning goals", "## Expected findings on GPT-2 and Gemma-2b (literature)",
                     "## Where learners get stuck")


@dataclass
class Unit:
    """One unit of the course, found from ``notebooks/*.ipynb`` (its id is the name's prefix: ``03b``)."""

    id: str
    stem: str
    title: str
    walkthrough: Path
    solutions: Path | None
    exercises: Path | None


def find_units(root: Path = ROOT) -> list[Unit]:
    """Every walkthrough in ``root/notebooks``, sorted by name, with its solutions and exercises if present."""
    units = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        nb = nbformat.read(path, as_version=4)
        heading = next((line for cell in nb.cells if cell.cell_type == "markdown"
                        for line in cell.source.splitlines() if line.startswith("# ")), f"# {path.stem}")
        sol, ex = root / "solutions" / path.name, root / "exercises" / path.name
        units.append(Unit(path.stem.split("_")[0], path.stem, heading[2:].strip(), path,
                          sol if sol.is_file() else None, ex if ex.is_file() else None))
    return units


def _out_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "text/plain" in out.get("data", {}) and "application/vnd.jupyter.widget-view+json" not in out["data"]:
            parts.append(out["data"]["text/plain"] + "\n")
    return "".join(parts)


def _words(text: str) -> int:
    return len(re.findall(r"\w+", re.sub(r"<[^>]+>", " ", text)))


# ---------------------------------------------------------------------------------------------------------
# timing


@dataclass
class Section:
    title: str
    reading_minutes: float = 0.0
    run_seconds: float = 0.0

    @property
    def minutes(self) -> float:
        return self.reading_minutes + self.run_seconds / 60


@dataclass
class Exercise:
    title: str
    minutes: int
    checkers: list[str] = field(default_factory=list)  # "unit02.check_x"


def load_timings(root: Path = ROOT) -> dict:
    path = root / "site" / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def walkthrough_sections(nb, cell_seconds: dict[str, float]) -> list[Section]:
    """The walkthrough cut at its ``## `` headings, each with reading minutes and measured run seconds."""
    sections = [Section("Introduction")]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            heading = next((line for line in cell.source.splitlines() if line.startswith("## ")), None)
            if heading:
                sections.append(Section(heading[3:].strip()))
            text = HINT_OR_ANSWER.sub(lambda m: m.group(0) if "Answer" in m.group(0) else "", cell.source)
            sections[-1].reading_minutes += _words(text) / WORDS_PER_MINUTE
        elif cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("# mechlab")]
            if not cell.source.startswith("# mechlab: setup"):
                sections[-1].reading_minutes += len(lines) / CODE_LINES_PER_MINUTE
            sections[-1].run_seconds += cell_seconds.get(str(index), 0.0)
    return [s for s in sections if s.minutes > 0]


def exercises_in(nb) -> list[Exercise]:
    """The exercises of a solutions notebook: title, minutes from the Difficulty line, checkers called after it."""
    found: list[Exercise] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("#### Exercise"):
            title = cell.source.splitlines()[0].removeprefix("####").strip()
            minutes = MINUTES.search(cell.source)
            found.append(Exercise(title, int(minutes.group(1)) if minutes else 0))
        elif cell.cell_type == "code" and found:
            for module, name in CHECKER_CALL.findall(cell.source):
                if f"{module}.{name}" not in found[-1].checkers:
                    found[-1].checkers.append(f"{module}.{name}")
    return found


@dataclass
class UnitTiming:
    """Minutes for one unit: the walkthrough (None when it was never timed) and the exercises. ``stale`` says the
    walkthrough changed after it was timed (its times are then those of the earlier version)."""

    unit: str
    walkthrough_minutes: int | None
    exercise_minutes: int
    exercises: list[Exercise]
    sections: list[Section]
    timed: dict | None
    stale: bool = False

    @property
    def total_minutes(self) -> int | None:
        return None if self.walkthrough_minutes is None else self.walkthrough_minutes + self.exercise_minutes


def unit_timing(unit: Unit, timings: dict | None = None) -> UnitTiming:
    timings = load_timings() if timings is None else timings
    nb = nbformat.read(unit.walkthrough, as_version=4)
    entry = timings.get(unit.walkthrough.name)
    stale = entry is not None and entry.get("source_hash") != source_hash(nb)
    cell_times = entry["cell_seconds"] if entry is not None and not stale else {}
    if stale:  # cells may have moved: spread the measured total over the code cells by their share of lines
        code = {str(i): max(1, len(c.source.splitlines())) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        cell_times = {i: entry["total_seconds"] * n / sum(code.values()) for i, n in code.items()}
    sections = walkthrough_sections(nb, cell_times)
    exercises = exercises_in(nb_read(unit.solutions)) if unit.solutions else []
    minutes = math.ceil(sum(s.minutes for s in sections)) if entry is not None else None
    return UnitTiming(unit.id, minutes, sum(e.minutes for e in exercises), exercises, sections, entry, stale)


def nb_read(path: Path):
    return nbformat.read(path, as_version=4)


# ---------------------------------------------------------------------------------------------------------
# checkers: the mistakes they name, read from their source


MISTAKE_NAMES = "mistake|wrong|variant"  # dicts of named wrong results are bound to names like these
_STRINGS: dict[str, str] = {}  # the module-level string constants of the checks module being read


def _string_of(node: ast.AST) -> str | None:
    """The text of a string literal, an f-string (fields shown as <expr>), a module string constant, or a sum."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else f"<{ast.unparse(v.value)}>" for v in node.values)
    if isinstance(node, ast.Name):
        return _STRINGS.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_of(node.left), _string_of(node.right)
        return left + right if left is not None and right is not None else None
    return None


def _named_strings(tree: ast.AST) -> tuple[list[str], list[str]]:
    """Mistake names (string keys of dicts that are ``mistakes=`` arguments or bound to a name with "mistake" or
    "wrong" in it, and ``wrong["..."] = ...``) and ``hint=`` texts found anywhere under ``tree``."""
    mistakes, hints = [], []

    def keys(node):
        if isinstance(node, ast.Dict):
            mistakes.extend(s for s in map(_string_of, node.keys) if s and node.keys)
        elif isinstance(node, ast.DictComp):
            s = _string_of(node.key)
            if s:
                mistakes.append(s)

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "mistakes":
            keys(node.value)
        elif isinstance(node, ast.keyword) and node.arg == "hint":
            s = _string_of(node.value)
            if s:
                hints.append(s)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
              and isinstance(node.func.value, ast.Name) and "problem" in node.func.value.id and node.args):
            s = _string_of(node.args[0])
            if s:
                mistakes.append(s)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and re.search(MISTAKE_NAMES, target.id, re.I):
                    keys(node.value)
                elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                      and re.search(MISTAKE_NAMES, target.value.id, re.I)):
                    s = _string_of(target.slice)
                    if s:
                        mistakes.append(s)
    return mistakes, hints


def checker_mistakes(module_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """For each public ``check_*`` function of a checks module: the mistake names and case hints it can report,
    following the module's own helper functions and constants that the checker uses."""
    tree = ast.parse(module_path.read_text(), filename=str(module_path))
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    consts = {t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    _STRINGS.clear()
    for name, node in consts.items():
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            _STRINGS[name] = node.value.value
    out = {}
    for name in defs:
        if not name.startswith("check_"):
            continue
        seen, todo, nodes = set(), [name], []
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            node = defs.get(current) or consts.get(current)
            if node is None:
                continue
            nodes.append(node)
            todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and (n.id in defs or n.id in consts))
        mistakes, hints = [], []
        for node in nodes:
            m, h = _named_strings(node)
            for kw in ast.walk(node):  # mistakes=SOME_CONSTANT: that constant's keys
                if (isinstance(kw, ast.keyword) and kw.arg == "mistakes" and isinstance(kw.value, ast.Name)
                        and isinstance(getattr(consts.get(kw.value.id), "value", None), ast.Dict)):
                    m += [s for s in map(_string_of, consts[kw.value.id].value.keys) if s]
            mistakes += [x for x in m if x not in mistakes]
            hints += [x for x in h if x not in hints]
        out[name] = (mistakes, hints)
    return out


# ---------------------------------------------------------------------------------------------------------
# questions and answers


@dataclass
class Question:
    text: str
    answer: str
    source: str  # "the notebook's collapsed answer" or "what the notebook shows next"
    where: str


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
PREDICT = re.compile(r"^\**\s*Predict before you run[.:]?\s*\**\s*", re.I)


def asked_in(prose: str) -> list[str]:
    """The questions in a markdown text: its sentences (headings and paragraphs apart) that end with "?"."""
    protected = re.sub(r"`[^`]*`", lambda m: m.group(0).replace("?", "\0").replace(".", "\1").replace(":", "\2"),
                       prose)
    found = []
    for paragraph in re.split(r"\n\s*\n|\n(?=#)|(?<=\n)(?=[-*] |\d+\. )", protected):
        lines = paragraph.strip().splitlines()
        if not lines:
            continue
        for sentence in SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            sentence = PREDICT.sub("", sentence.strip().lstrip("#").strip(" *"))
            if sentence.endswith("?") or sentence.endswith("?**"):
                text = _clean(sentence.replace("\0", "?").replace("\1", ".").replace("\2", ":")).strip(" *")
                if len(text) > 3:
                    found.append(text)
    return found


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text)).strip()


OPEN = "open question"
ANSWERED = "the notebook's collapsed answer"
WRITTEN = "answer written for these notes"


def _is_final(cells, index: int) -> bool:
    """Is ``cells[index]`` the notebook's last code cell (its checks, which answer no question)?"""
    return all(c.cell_type != "code" for c in cells[index + 1:])


def _first_paragraph(markdown: str) -> str:
    """The first paragraph of prose in a markdown cell (headings, hints and answers left out)."""
    text = HINT_OR_ANSWER.sub(" ", markdown)
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.splitlines() if not line.lstrip().startswith("#")]
        if _clean(" ".join(lines)):
            return _clean(" ".join(lines))
    return ""


def questions_in(nb, where: str) -> list[Question]:
    """Every question a notebook's text asks, with its answer (see the module docstring for where it comes from)."""
    found: list[Question] = []
    cells = nb.cells
    for index, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        if cell.source.startswith("#### Exercise") and "Predict" not in cell.source:
            continue  # an exercise statement: its answer is the solution, shown on the solutions page
        source = cell.source.split("\n", 1)[-1] if cell.source.startswith("#### Exercise") else cell.source
        prose = HINT_OR_ANSWER.sub(" ", source)  # (an exercise's title asks what its solution answers)
        asked = asked_in(prose)
        if not asked:
            continue
        answered: set[str] = set()
        # a collapsed answer answers the questions of the paragraph just before it
        for match in ANSWER_BLOCK.finditer(source):
            before = HINT_OR_ANSWER.sub(" ", source[:match.start()])
            paragraphs = [q for q in (asked_in(par) for par in re.split(r"\n\s*\n", before)) if q]
            for q in paragraphs[-1] if paragraphs else []:
                found.append(Question(q, _clean(match.group(1)), ANSWERED, where))
                answered.add(q)
        asked = [q for q in asked if q not in answered]
        if not asked:
            continue
        nxt = cells[index + 1] if index + 1 < len(cells) else None
        later = [] if (nxt is None or nxt.cell_type != "markdown" or answered
                       or not ANSWER_BLOCK.match(nxt.source.strip())) else [_clean(ANSWER_BLOCK.match(
                           nxt.source.strip()).group(1))]
        if later:  # the answer sits in the next markdown cell's collapsed block
            for q in asked:
                found.append(Question(q, " ".join(later), ANSWERED, where))
            continue
        if len(asked) >= 3:  # a list of questions for the learner: answered in the notes (site/notes)
            for q in asked:
                found.append(Question(q, "", OPEN, where))
            continue
        shown, reading = "", ""
        following = cells[index + 1:index + 3]
        if following and following[0].cell_type == "code" and not _is_final(cells, index + 1):
            shown = _out_text(following[0]).strip()
            if len(following) > 1 and following[1].cell_type == "markdown":
                reading = _first_paragraph(following[1].source)
        elif following and following[0].cell_type == "markdown":
            reading = _first_paragraph(following[0].source)
        if not shown and not reading:
            rest = prose.split("?", 1)[-1]
            reading = _first_paragraph(rest) if len(_clean(rest)) > 40 else ""  # the cell answers its own question
        if not shown and not reading:
            for q in asked:
                found.append(Question(q, "", OPEN, where))
            continue
        answer = ""
        if shown:
            lines = shown.splitlines()
            answer += "Output:\n\n" + "\n".join(f"    {line}" for line in lines[:12])
            answer += "\n    ..." if len(lines) > 12 else ""
            answer += "\n\n"
        answer += reading[:900] + ("..." if len(reading) > 900 else "")
        for q in asked:
            found.append(Question(q, answer.strip(), "what the notebook shows next", where))
    return found


# ---------------------------------------------------------------------------------------------------------
# expected outputs


def expected_outputs(nb) -> list[tuple[int, str, str]]:
    """(cell index, code, committed output) for every cell nbval compares, and the final checks cell."""
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    out = []
    for position, (index, cell) in enumerate(code_cells):
        last = position == len(code_cells) - 1
        if cell.source.startswith(NBVAL_MARK) or last:
            text = _out_text(cell)
            if text.strip():
                code = cell.source.removeprefix(NBVAL_MARK).strip("\n")
                out.append((index, code, text.rstrip("\n")))
    return out


# ---------------------------------------------------------------------------------------------------------
# the notes page


def hand_written(unit: Unit, root: Path = ROOT) -> str:
    path = root / "site" / "notes" / f"{unit.id}.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: unit {unit.id} ({unit.walkthrough.name}) needs its hand-written "
                                f"notes with the sections {', '.join(REQUIRED_SECTIONS)}.")
    text = path.read_text()
    missing = [s for s in REQUIRED_SECTIONS if s not in text]
    if missing:
        raise ValueError(f"{path}: missing sections {missing}; expected all of {list(REQUIRED_SECTIONS)}.")
    return text.strip()


def _key(question: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", question.lower()).strip()


def written_answers(unit: Unit, root: Path = ROOT) -> tuple[str, dict[str, str]]:
    """The hand-written notes without their ``## Answers to open questions`` section, and that section's answers
    (``### question`` headings, each followed by its answer), keyed by the question's normalised text."""
    text = hand_written(unit, root)
    head, _, tail = text.partition(OPEN_ANSWERS)
    answers = {}
    if tail:
        tail, _, rest = tail.partition("\n## ")
        head = head.rstrip() + ("\n\n## " + rest if rest else "")
        for block in re.split(r"^### ", tail, flags=re.M)[1:]:
            question, _, answer = block.partition("\n")
            answers[_key(question)] = answer.strip()
    return head.strip(), answers


def _fmt_minutes(value: float) -> str:
    return f"{value:.1f}"


def notes_markdown(unit: Unit, root: Path = ROOT, timings: dict | None = None) -> str:
    """The whole notes page of one unit (hand-written parts first, then the derived ones)."""
    nb = nb_read(unit.walkthrough)
    timing = unit_timing(unit, load_timings(root) if timings is None else timings)
    lines = [f"# Instructor notes · {unit.title}", "",
             f"Generated by `python -m mechlab.course.site_notes` from `notebooks/{unit.walkthrough.name}`"
             + (f", `solutions/{unit.solutions.name}`" if unit.solutions else "")
             + f", `site/notes/{unit.id}.md` and the checkers; do not edit by hand.", "",
             written_answers(unit, root)[0], "", "## Timing plan", ""]
    retime = (f"`MECHLAB_MODEL=offline python -m mechlab.course.site_timing notebooks/{unit.walkthrough.name}`, "
              "then `python -m mechlab.course.site_notes`")
    if timing.walkthrough_minutes is None:
        lines += [f"The walkthrough has not been timed yet: run {retime}.", ""]
    else:
        t = timing.timed
        if timing.stale:
            lines += [f"!!! warning \"Timed before the notebook's last change\"\n    The run time below is the earlier "
                      f"version's, spread over the cells by their length; re-time it with {retime}.", ""]
        if "load_average" not in t:
            busy = "; the machine was shared with other work (its load was not recorded), so these are upper bounds"
        elif t["load_average"] > 1.5:
            busy = f"; the machine was busy (load average {t['load_average']}), so these are upper bounds"
        else:
            busy = ""
        lines += [f"Walkthrough: **{timing.walkthrough_minutes} min**. Run times were measured on "
                  f"{t['model']} ({t['machine']}, {t['measured']}; {t['total_seconds']} s in cells{busy}). Reading "
                  "times "
                  f"are estimated at {WORDS_PER_MINUTE} words and {CODE_LINES_PER_MINUTE} lines of code a minute. "
                  "On GPT-2 in Colab the run times differ (a GPU, a larger model, a first download of the weights).",
                  "", "| section | reading (min) | running (min) | total (min) |", "|---|---|---|---|"]
        for s in timing.sections:
            lines.append(f"| {s.title} | {_fmt_minutes(s.reading_minutes)} | {_fmt_minutes(s.run_seconds / 60)} | "
                         f"{_fmt_minutes(s.minutes)} |")
        lines.append("")
    if timing.exercises:
        lines += [f"Exercises: **{timing.exercise_minutes} min** in all (each exercise's own estimate).", "",
                  "| exercise | minutes | checker |", "|---|---|---|"]
        for e in timing.exercises:
            lines.append(f"| {e.title} | {e.minutes} | {', '.join(f'`{c}`' for c in e.checkers) or '-'} |")
        lines.append("")
    lines += ["## Expected outputs on the organism", "",
              "The committed outputs of the executed walkthrough for every cell nbval compares and for the final "
              "checks; a learner on the organism (`MECHLAB_MODEL=offline`) sees exactly these.", ""]
    for index, code, text in expected_outputs(nb):
        first = code.splitlines()[0] if code else ""
        lines += [f"**Cell {index}** `{first[:100]}`", "", "```text", text, "```", ""]
    lines += ["## Answers to the notebook's questions", ""]
    asked = questions_in(nb, "walkthrough") + (questions_in(nb_read(unit.solutions), "exercises")
                                                if unit.solutions else [])
    seen = set()
    written = written_answers(unit, root)[1]
    for q in asked:
        if q.text in seen:
            continue
        seen.add(q.text)
        if _key(q.text) in written:
            q = Question(q.text, written[_key(q.text)], WRITTEN, q.where)
        elif q.source == OPEN:
            raise ValueError(f"{unit.walkthrough.name}: the question {q.text!r} ({q.where}) has no answer in the "
                             f"notebook; write one in site/notes/{unit.id}.md under '{OPEN_ANSWERS}' as "
                             f"'### {q.text}' followed by the answer.")
        body = "\n".join("    " + line if line else "" for line in q.answer.splitlines())
        lines += [f'??? question "{q.text.replace(chr(34), chr(39))}"', f"    *{q.where}, {q.source}:*", "", body, ""]
    if not seen:
        lines += ["The notebook asks no question in its text.", ""]
    lines += ["## Mistakes the checkers catch", ""]
    checks_dir = root / "mechlab" / "checks"
    cache: dict[str, dict] = {}
    any_checker = False
    for e in timing.exercises:
        for qualified in e.checkers:
            module, name = qualified.split(".")
            if module not in cache:
                path = checks_dir / f"{module}.py"
                cache[module] = checker_mistakes(path) if path.is_file() else {}
            mistakes, hints = cache[module].get(name, ([], []))
            any_checker = True
            lines += [f"**{e.title}** (`{qualified}`)", ""]
            lines += [f"- names the mistake: {m}" for m in mistakes]
            lines += [f"- case hint: {h}" for h in hints]
            if not mistakes and not hints:
                lines.append("- compares with the reference case by case (no named mistake)")
            lines.append("")
    if not any_checker:
        lines += ["This unit has no checker.", ""]
    return "\n".join(lines).rstrip() + "\n"


def notes_path(unit: Unit, root: Path = ROOT) -> Path:
    return root / "site" / "instructor" / f"{unit.stem}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the instructor notes of every unit.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notes file is stale")
    args = parser.parse_args(argv)
    stale = []
    for unit in find_units():
        path, text = notes_path(unit), notes_markdown(unit)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale instructor notes (run `python -m mechlab.course.site_notes`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
