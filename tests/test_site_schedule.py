"""Workshop schedules: every plan's totals are the sums of its units' timings, recomputed here from the committed
instructor notes and the exercises' own minutes, and each plan fits its budget."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from mechlab.course import site_notes, site_schedule

UNITS = site_notes.find_units()
PLANS_FILE = site_notes.ROOT / "site" / "schedules.json"


def _walkthrough_minutes_from_notes(unit) -> int:
    match = re.search(r"Walkthrough: \*\*(\d+) min\*\*", site_notes.notes_path(unit).read_text())
    assert match, f"{unit.stem}: the notes state no walkthrough minutes"
    return int(match.group(1))


def _exercise_minutes(unit) -> dict[int, int]:
    nb = nbformat.read(unit.solutions, as_version=4)
    out = {}
    for cell in nb.cells:
        head = re.match(r"#### Exercise (\d+)", cell.source) if cell.cell_type == "markdown" else None
        if head:
            out[int(head.group(1))] = int(re.search(r"~\s*(\d+)\s*min", cell.source).group(1))
    return out


def _expected_totals() -> dict[str, tuple[int, list[int]]]:
    by_id = {u.id: u for u in UNITS}
    totals = {}
    for key, plan in json.loads(PLANS_FILE.read_text()).items():
        sessions = []
        for session in plan["sessions"]:
            minutes = 0
            for item in session["items"]:
                if "break" in item:
                    minutes += item["break"]
                    continue
                unit = by_id[item["unit"]]
                ex = _exercise_minutes(unit)
                chosen = sorted(ex) if item["exercises"] == "all" else item["exercises"]
                minutes += _walkthrough_minutes_from_notes(unit) + sum(ex[n] for n in chosen)
            sessions.append(minutes)
        totals[key] = (sum(sessions), sessions)
    return totals


@pytest.fixture(scope="module")
def page() -> str:
    return site_schedule.schedules_markdown(UNITS, site_notes.load_timings())


def test_plans_sum_their_unit_timings(page):
    plans = {p.key: p for p in site_schedule.load_plans(UNITS, site_notes.load_timings())}
    for key, (total, sessions) in _expected_totals().items():
        plan = plans[key]
        assert plan.total_minutes == total
        assert [sum(i.minutes for i in items) for _, items in plan.sessions] == sessions
        assert f"({total} min) of a" in page, f"the page does not state {key}'s total of {total} min"
        for (name, _), minutes in zip(plan.sessions, sessions, strict=True):
            assert f"### {name} ({minutes} min)" in page


def test_plans_fit_their_budget():
    raw = json.loads(PLANS_FILE.read_text())
    for key, (total, _) in _expected_totals().items():
        assert total <= raw[key]["budget_minutes"], f"{key}: {total} min does not fit {raw[key]['budget_minutes']}"
    assert raw["one_day"]["budget_minutes"] == 360


def test_a_plan_naming_a_missing_unit_or_exercise_is_refused(tmp_path):
    bad = {"x": {"title": "t", "budget_minutes": 60, "audience": "a", "skip_when_short": [],
                 "sessions": [{"name": "s", "items": [{"unit": "99", "exercises": "all"}]}]}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="names unit '99'"):
        site_schedule.load_plans(UNITS, site_notes.load_timings(), path)
    bad["x"]["sessions"][0]["items"] = [{"unit": UNITS[0].id, "exercises": [42]}]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"no exercise \[42\]"):
        site_schedule.load_plans(UNITS, site_notes.load_timings(), path)


def test_compute_needs_come_from_preflight(page):
    assert "GiB of GPU memory in bfloat16" in page and "not timed yet" not in page


def test_each_plan_says_whether_it_needs_gemma(page):
    gemma_units = [u.id for u in UNITS if "preflight(" in u.walkthrough.read_text()]
    raw = json.loads(PLANS_FILE.read_text())
    for plan in raw.values():
        used = [i["unit"] for s in plan["sessions"] for i in s["items"] if "unit" in i]
        needed = [u for u in used if u in gemma_units]
        section = page.split(f"## {plan['title']}", 1)[1].split("\n## ", 1)[0]
        if needed:
            assert f"units {', '.join(needed)} load google/gemma-2b" in section
        else:
            assert "every unit runs on GPT-2 small" in section
