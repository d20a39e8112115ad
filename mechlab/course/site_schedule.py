"""Workshop schedules: which units and exercises, in which session, and how long each takes.

The plan (``site/schedules.json``) is written by a person: sessions of units, each with the exercises to do
(their numbers, or ``"all"``) and breaks. Every minute is computed from the course itself: a unit's walkthrough
minutes come from the instructor notes' timing plan (:func:`mechlab.course.site_notes.unit_timing`), each
exercise's minutes from its own ``~N min`` line. ``tests/test_site_schedule.py`` checks that the sums are right
and that each plan fits its budget.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from mechlab.core.preflight import GEMMA, KNOWN_PARAMS, needed_gib
from mechlab.course import site_notes

EXERCISE_NUMBER = r"Exercise\s+(\d+)"


@dataclass
class Item:
    label: str
    walkthrough_minutes: int
    exercise_minutes: int
    exercises: list[str] = field(default_factory=list)
    is_break: bool = False

    @property
    def minutes(self) -> int:
        return self.walkthrough_minutes + self.exercise_minutes


@dataclass
class WorkshopPlan:
    key: str
    title: str
    budget_minutes: int
    sessions: list[tuple[str, list[Item]]]
    skip_when_short: list[str]
    audience: str

    @property
    def total_minutes(self) -> int:
        return sum(item.minutes for _, items in self.sessions for item in items)


def _number(title: str) -> int | None:
    match = re.search(EXERCISE_NUMBER, title)
    return int(match.group(1)) if match else None


def load_plans(units: list[site_notes.Unit], timings: dict, plan_file=None) -> list[WorkshopPlan]:
    """The plans of ``site/schedules.json`` with every item's minutes computed; a unit or exercise that does not
    exist, or a unit whose walkthrough was not timed, is a ``ValueError`` saying which."""
    path = plan_file or site_notes.ROOT / "site" / "schedules.json"
    raw = json.loads(path.read_text())
    by_id = {u.id: u for u in units}
    plans = []
    for key, spec in raw.items():
        sessions = []
        for session in spec["sessions"]:
            items = []
            for entry in session["items"]:
                if "break" in entry:
                    items.append(Item(entry.get("label", "break"), int(entry["break"]), 0, is_break=True))
                    continue
                unit = by_id.get(entry["unit"])
                if unit is None:
                    raise ValueError(f"{path}: plan {key!r} names unit {entry['unit']!r}, but notebooks/ has only "
                                     f"{sorted(by_id)}; fix the plan.")
                timing = site_notes.unit_timing(unit, timings)
                if timing.walkthrough_minutes is None:
                    raise ValueError(f"{path}: unit {unit.id} is in plan {key!r} but its walkthrough has no current "
                                     f"timing; run `python -m mechlab.course.site_timing {unit.walkthrough}`.")
                numbered = {_number(e.title): e for e in timing.exercises}
                wanted = sorted(numbered) if entry["exercises"] == "all" else entry["exercises"]
                missing = [n for n in wanted if n not in numbered]
                if missing:
                    raise ValueError(f"{path}: plan {key!r}, unit {unit.id}: no exercise {missing} (it has "
                                     f"{sorted(n for n in numbered if n is not None)}).")
                chosen = [numbered[n] for n in wanted]
                items.append(Item(unit.title, timing.walkthrough_minutes, sum(e.minutes for e in chosen),
                                  [f"{e.title} ({e.minutes} min)" for e in chosen]))
            sessions.append((session["name"], items))
        plans.append(WorkshopPlan(key, spec["title"], int(spec["budget_minutes"]), sessions, spec["skip_when_short"],
                          spec["audience"]))
    return plans


def models_of(unit: site_notes.Unit) -> list[str]:
    """The real models a walkthrough asks for: ``course_model("...")`` defaults, and Gemma-2b when it runs
    ``preflight`` (the Gemma loader that checks token, licence and GPU)."""
    source = "".join(cell.source for cell in site_notes.nb_read(unit.walkthrough).cells if cell.cell_type == "code")
    names = sorted(set(re.findall(r'course_model\(\s*"([^"]+)"', source)))
    if "preflight(" in source:
        names.append(GEMMA)
    return names


def plan_compute(plan: WorkshopPlan, units: list[site_notes.Unit], timings: dict) -> str:
    by_title = {u.title: u for u in units}
    used = [by_title[i.label] for _, items in plan.sessions for i in items if i.label in by_title]
    gemma = [u.id for u in used if GEMMA in models_of(u)]
    cpu = sum(t.timed["total_seconds"] for t in (site_notes.unit_timing(u, timings) for u in used) if t.timed)
    need = (f"units {', '.join(gemma)} load {GEMMA}: every participant needs a Colab GPU runtime, a Hugging Face "
            "token and the accepted Gemma licence (see the setup checklist); the other units run on GPT-2 small, "
            "on Colab's CPU or GPU" if gemma else "every unit runs on GPT-2 small: Colab's CPU is enough, a GPU faster")
    return (f"Compute: {need}. Offline, on a CPU with the organism, this plan's walkthrough cells took "
            f"{cpu / 60:.0f} min in all (measured, see the table below).")


def _hm(minutes: int) -> str:
    return f"{minutes // 60} h {minutes % 60:02d}" if minutes >= 60 else f"{minutes} min"


def compute_needs(units: list[site_notes.Unit], timings: dict) -> list[str]:
    lines = ["## Compute", "",
             "- **Colab with a GPU** (a free T4 is enough): every unit on its real model. GPT-2 small (124 M "
             "parameters) runs on Colab's CPU too, more slowly. "
             f"Gemma-2b ({KNOWN_PARAMS[GEMMA] / 1e9:.2f} B parameters) needs about "
             f"{needed_gib(KNOWN_PARAMS[GEMMA], 'bfloat16'):.0f} GiB of GPU memory in bfloat16 and "
             f"{needed_gib(KNOWN_PARAMS[GEMMA], 'float32'):.0f} GiB in float32 for the course's analyses "
             "(`mechlab.core.preflight`, which picks the dtype for the GPU it finds, or the organism if none fits).",
             "- **A CPU with the organism** (`MECHLAB_MODEL=offline`): every unit, no download, no account. Measured "
             "run time of each walkthrough's cells:", "", "| unit | run time (s) | machine |", "|---|---|---|"]
    for unit in units:
        t = site_notes.unit_timing(unit, timings)
        if t.timed:
            lines.append(f"| {unit.title} | {t.timed['total_seconds']:.0f} | {t.timed['machine']} |")
        else:
            lines.append(f"| {unit.title} | not timed yet | |")
    return lines + [""]


def schedules_markdown(units: list[site_notes.Unit], timings: dict) -> str:
    """The schedules page: each plan session by session with computed minutes, compute needs, and the units that
    no plan uses."""
    plans = load_plans(units, timings)
    lines = ["# Workshop schedules", "",
             "Minutes are computed, not estimated by hand: a walkthrough's minutes are its measured run time plus its "
             "reading time (see each unit's [instructor notes](instructor/index.md)), an exercise's are its own "
             "estimate. Participants' setup: [checklist](setup.md).", ""]
    used = set()
    for plan in plans:
        lines += [f"## {plan.title}", "", f"For {plan.audience}. Total **{_hm(plan.total_minutes)}** "
                  f"({plan.total_minutes} min) of a {_hm(plan.budget_minutes)} budget.", "",
                  plan_compute(plan, units, timings), ""]
        for name, items in plan.sessions:
            session_minutes = sum(i.minutes for i in items)
            lines += [f"### {name} ({session_minutes} min)", "", "| | walkthrough | exercises | minutes |",
                      "|---|---|---|---|"]
            for item in items:
                used.add(item.label)
                ex = "<br>".join(item.exercises) if item.exercises else "-"
                walk = "-" if item.is_break else f"{item.walkthrough_minutes} min"
                lines.append(f"| {item.label} | {walk} | {ex} | {item.minutes} |")
            lines.append("")
        lines += ["When short of time, skip:", ""] + [f"- {s}" for s in plan.skip_when_short] + [""]
    unused = [u.title for u in units if u.title not in used]
    if unused:
        lines += ["## Not in these plans", "", "Good follow-up or take-home work:", ""]
        lines += [f"- {title}" for title in unused] + [""]
    return "\n".join(lines + compute_needs(units, timings))
