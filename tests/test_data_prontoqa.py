"""PrOntoQA generator and grader: proofs checked by forward chaining over the facts, grader robustness."""

from __future__ import annotations

import re

import pytest

from mechlab.data import prontoqa as pq


def _derive(problem: pq.Problem) -> dict[str, bool]:
    """Forward-chain the facts from each entity species: attribute -> True / False (negated) where derivable."""
    links, attrs = {}, {}
    for f in problem.facts:
        if f.is_attr:
            attrs.setdefault(f.subject, []).append((f.obj, not f.negated))
        else:
            links.setdefault(f.subject, []).append(f.obj)
    out: dict[str, list[bool]] = {}
    todo, seen = list(problem.entity_species), set()
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        for a, v in attrs.get(s, []):
            out.setdefault(a, []).append(v)
        todo += links.get(s, [])
    return {a: vs[0] for a, vs in out.items() if len(set(vs)) == 1}


@pytest.mark.parametrize("style", pq.STYLES)
def test_label_follows_from_the_facts(style):
    problems = pq.make_problems(300, hops=(1, 2, 3), seed=0, style=style)
    assert problems == pq.make_problems(300, hops=(1, 2, 3), seed=0, style=style)
    assert {p.hops for p in problems} == {1, 2, 3}
    assert 0.35 < sum(p.label for p in problems) / len(problems) < 0.65
    for p in problems:
        assert _derive(p)[p.attribute] == p.label
        assert len(p.chain) == p.hops and p.chain[0] in p.entity_species
        # a trap: the question's attribute with the other sign sits on a species off the proof path
        assert any(f.is_attr and f.obj == p.attribute and f.negated != p.negated for f in p.facts)
    if style == "seed":
        assert all(len(p.entity_species) == 2 for p in problems)


def test_proof_steps_are_stated_or_derived():
    for p in pq.make_problems(100, hops=(1, 2, 3), seed=1, style="compact"):
        text = pq.render(p, "compact", with_proof=False)
        steps = p.proof("compact")
        assert len(steps) == 2 * p.hops + 1
        assert all(s in text for s in steps[1::2])  # rule steps are quoted from the context
        assert steps[-1] == f"{p.entity} is {'not ' if p.negated else ''}{p.attribute}."


def test_seed_format():
    shots = pq.make_problems(3, seed=2, style="seed")
    query = pq.make_problems(1, seed=3, style="seed")[0]
    prompt = pq.few_shot_prompt(shots, query, "seed")
    assert prompt.startswith(pq.HEADER)
    assert prompt.count("Think step-by-step.") == 4 and prompt.count("Answer: ") == 3
    assert prompt.endswith(f"Question: Is {query.entity} {query.attribute}?\nThink step-by-step.\n\n")
    assert re.search(r"\(1\) \w+ is an? \w+\.\n\(2\) [A-Z]\w+es are ", prompt)


def test_grader():
    p = pq.make_problems(1, hops=(2,), seed=4)[0]
    gold = pq.proof_text(p, "compact")
    assert pq.grade(gold, p) == pq.Grade(True, True, p.label, pq.grade(gold, p).steps)
    assert pq.grade(pq.proof_text(p, "seed"), p).cot_correct  # either phrasing counts
    messy = "  " + gold.replace("\n", "   ").replace(".", " .").upper() + "\n\nEvery wumpus (1) junk"
    g = pq.grade(messy, p)
    assert g.answer_correct and g.cot_correct
    flipped = gold.replace(f"Answer: {p.label}", f"Answer: {not p.label}")
    g = pq.grade(flipped, p)
    assert not g.answer_correct and g.cot_correct
    steps = gold.split("\n")
    dropped = "\n".join(steps[:2] + steps[3:])
    assert pq.grade(dropped, p).answer_correct and not pq.grade(dropped, p).cot_correct
    wrong_species = gold.replace(p.chain[1], "impus" if p.chain[1] != "impus" else "numpus")
    assert not pq.grade(wrong_species, p).cot_correct
    assert pq.grade(gold.split("Answer")[0], p) == pq.Grade(False, False, None, pq.grade(gold, p).steps)
    assert pq.grade_many([gold, flipped], [p, p]) == {"answer_acc": 0.5, "cot_acc": 1.0, "n": 2.0}
    with pytest.raises(ValueError, match="predictions"):
        pq.grade_many([gold], [p, p])
