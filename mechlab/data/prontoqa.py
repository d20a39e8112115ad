"""PrOntoQA-style reasoning problems: a fictional ontology, distractor facts, 1-3 hops, negations, and the
chain-of-thought proof "(1) ... (2) ... Answer: True/False", with a grader.

A problem states facts about made-up species (wumpus, yumpus, ...), says which species an entity is, and asks
whether the entity has an attribute. The proof walks up the species chain::

    Every wumpus is a yumpus. Every zumpus is hot. Every yumpus is not hot. Fae is a wumpus.
    Question: Is Fae hot?
    (1) Fae is a wumpus.
    (2) Every wumpus is a yumpus.
    (3) Fae is a yumpus.
    (4) Every yumpus is not hot.
    (5) Fae is not hot.
    Answer: False

Two renderings of the same :class:`Problem`:

- ``"seed"``: the format of the Gemma notebook (instruction line, mixed phrasings "Each X is a Y" /
  "Xes are Ys", the entity in two species of which one is a distractor, "Think step-by-step.", proof steps
  written with plurals), assembled few-shot by :func:`few_shot_prompt`;
- ``"compact"``: the organism's format (one phrasing, one species for the entity, no instruction line), short
  enough for a small model to learn the proof as a chain of look-ups.

:func:`grade` scores a model's continuation: the answer, and whether every proof step matches the gold proof
(in either rendering), ignoring case, punctuation and whitespace.

Example::

    from mechlab.data.prontoqa import make_problems, render, grade
    problems = make_problems(4, hops=(1, 2), seed=0, style="compact")
    text = render(problems[0], "compact")          # prompt + gold proof + answer
    prompt = render(problems[0], "compact", with_proof=False)
    grade(text[len(prompt):], problems[0])          # Grade(answer_correct=True, cot_correct=True, ...)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

SPECIES = ("grimpus", "lorpus", "wumpus", "zumpus", "sterpus", "numpus", "jompus", "brimpus", "yumpus", "tumpus",
           "dumpus", "vumpus", "rompus", "lempus", "gorpus", "shumpus", "impus")
ATTRIBUTES = ("sunny", "hot", "cold", "fast", "large", "small", "dull", "shy", "happy", "sad", "mean", "kind",
              "red", "blue", "bright", "loud")
ENTITIES = ("Fae", "Rex", "Sally", "Polly", "Stella", "Wren")
STYLES = ("seed", "compact")
HEADER = "Answer True or False to the following question. Answer as in the examples."


@dataclass(frozen=True)
class Fact:
    """One context sentence: ``subject`` is a species; ``obj`` a species (``is_attr`` False) or an attribute."""

    subject: str  # e.g. "wumpus"
    obj: str  # e.g. "yumpus" or "hot"
    is_attr: bool  # True for "X is (not) hot", False for "X is a Y"
    negated: bool = False  # "not" (attributes only)
    form: int = 0  # phrasing in the seed style: 0 "Every X ...", 1 "Each X ...", 2 "Xes are ..."


@dataclass(frozen=True)
class Problem:
    """A PrOntoQA-style problem with its gold proof.

    ``chain`` is the proof path of species: the entity is ``chain[0]``, each is a kind of the next, and the
    last carries the question's attribute (negated when ``negated``). ``label`` is the answer.
    """

    entity: str  # e.g. "Fae"
    entity_species: tuple  # species the context says the entity is, in prompt order (chain[0] among them)
    facts: tuple  # the ontology's Facts in prompt order (entity facts excluded; they come last)
    attribute: str  # the question's attribute: "Is Fae <attribute>?"
    chain: tuple  # species on the proof path, len == hops
    negated: bool  # the attribute fact on the path says "not"
    label: bool  # the answer: True iff not negated
    hops: int  # number of species links followed (1-3)

    def proof(self, style: str = "compact") -> list[str]:
        """The gold proof steps without their numbers, e.g. ``['Fae is a wumpus.', ...]``."""
        _check_style(style)
        steps = [f"{self.entity} is {_a(self.chain[0])}."]
        for x, y in zip(self.chain[:-1], self.chain[1:], strict=True):
            steps += [_sentence(Fact(x, y, False, form=2), style), f"{self.entity} is {_a(y)}."]
        last = Fact(self.chain[-1], self.attribute, True, self.negated, form=2)
        steps += [_sentence(last, style), f"{self.entity} is {'not ' if self.negated else ''}{self.attribute}."]
        return steps


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {STYLES}.")


def _a(species: str) -> str:
    return ("an " if species[0] in "aeiou" else "a ") + species


def _plural(species: str) -> str:
    return species + "es"


def _sentence(f: Fact, style: str) -> str:
    neg = "not " if f.negated else ""
    if style == "compact" or f.form == 0:
        return f"Every {f.subject} is {neg}{f.obj if f.is_attr else _a(f.obj)}."
    if f.form == 1:
        return f"Each {f.subject} is {neg}{f.obj if f.is_attr else _a(f.obj)}."
    return f"{_plural(f.subject).capitalize()} are {neg}{f.obj if f.is_attr else _plural(f.obj)}."


def _reachable(start: str, links: dict) -> set:
    seen, todo = set(), [start]
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo += links.get(x, [])
    return seen


def _one_problem(rng: random.Random, hops: int, n_distractors: int, style: str) -> Problem | None:
    species = rng.sample(SPECIES, len(SPECIES))
    chain, others = species[:hops], species[hops:]
    attribute = rng.choice(ATTRIBUTES)
    negated = rng.random() < 0.5
    facts = [Fact(x, y, False, form=rng.randrange(3)) for x, y in zip(chain[:-1], chain[1:], strict=True)]
    facts.append(Fact(chain[-1], attribute, True, negated, form=rng.randrange(3)))
    if style == "seed":  # the seed's chain species also carry unrelated attributes
        for x in chain:
            if rng.random() < 0.5:
                a = rng.choice([b for b in ATTRIBUTES if b != attribute])
                facts.append(Fact(x, a, True, rng.random() < 0.5, form=rng.randrange(3)))
    # distractors live among the other species and never link into the chain, so the proof stays unique;
    # the first one is a trap: the question's attribute with the opposite sign on an unrelated species
    links: dict = {}
    distract = [Fact(rng.choice(others), attribute, True, not negated, form=rng.randrange(3))]
    while len(distract) < n_distractors:
        x = rng.choice(others)
        if rng.random() < 0.5:
            y = rng.choice([o for o in others if o != x])
            if x in _reachable(y, links):
                continue  # keep the distractor ontology acyclic
            links.setdefault(x, []).append(y)
            distract.append(Fact(x, y, False, form=rng.randrange(3)))
        else:
            distract.append(Fact(x, rng.choice(ATTRIBUTES), True, rng.random() < 0.5, form=rng.randrange(3)))
    facts += distract
    entity = rng.choice(ENTITIES)
    entity_species = [chain[0]]
    if style == "seed":  # a second species for the entity, from which the attribute is not reachable
        has_attr = {f.subject for f in distract if f.is_attr and f.obj == attribute}
        ok = [o for o in others if not (_reachable(o, links) & has_attr)]
        if not ok:
            return None
        entity_species.append(rng.choice(ok))
    rng.shuffle(facts)
    rng.shuffle(entity_species)
    return Problem(entity=entity, entity_species=tuple(entity_species), facts=tuple(facts), attribute=attribute,
                   chain=tuple(chain), negated=negated, label=not negated, hops=hops)


def make_problems(n: int, *, hops: Sequence[int] = (1, 2), seed: int = 0, n_distractors: int = 4,
                  style: str = "compact") -> list[Problem]:
    """``n`` problems from a private RNG (same seed, same problems); hops drawn uniformly from ``hops``.

    ``style`` shapes the ontology: ``"seed"`` adds unrelated attributes on the chain's species and a second
    (distractor) species for the entity, as in the Gemma notebook; ``"compact"`` keeps the proof a chain of
    single look-ups for the organism.
    """
    _check_style(style)
    if n < 0:
        raise ValueError(f"n={n}: expected a non-negative number of problems.")
    if not hops or any(h not in (1, 2, 3) for h in hops):
        raise ValueError(f"hops={hops}: expected a non-empty subset of (1, 2, 3).")
    if n_distractors < 1:
        raise ValueError(f"n_distractors={n_distractors}: expected at least 1 (the first is the trap fact).")
    rng = random.Random(seed)
    out: list[Problem] = []
    while len(out) < n:
        p = _one_problem(rng, rng.choice(list(hops)), n_distractors, style)
        if p is not None:
            out.append(p)
    return out


def render(problem: Problem, style: str = "compact", *, with_proof: bool = True) -> str:
    """The problem as text: context, question, and (``with_proof``) the numbered proof and the answer.

    ``with_proof=False`` gives the prompt a model continues; the continuation should be :func:`proof_text`.
    """
    _check_style(style)
    entity_facts = [f"{problem.entity} is {_a(s)}." for s in problem.entity_species]
    context = " ".join([_sentence(f, style) for f in problem.facts] + entity_facts)
    question = f"Question: Is {problem.entity} {problem.attribute}?"
    head = f"{context}\n{question}\n" + ("Think step-by-step.\n\n" if style == "seed" else "")
    return head + (proof_text(problem, style) if with_proof else "")


def proof_text(problem: Problem, style: str = "compact") -> str:
    """The gold continuation: ``"(1) ...\\n(2) ...\\nAnswer: True"``."""
    steps = "".join(f"({i}) {s}\n" for i, s in enumerate(problem.proof(style), start=1))
    return steps + f"Answer: {problem.label}"


def few_shot_prompt(shots: Sequence[Problem], query: Problem, style: str = "seed") -> str:
    """Solved examples then the query's prompt, separated by blank lines (the seed's header in ``"seed"``)."""
    _check_style(style)
    parts = ([HEADER] if style == "seed" else []) + [render(p, style) for p in shots]
    return "\n\n".join(parts + [render(query, style, with_proof=False)])


@dataclass(frozen=True)
class Grade:
    """How one continuation scored: ``answer_correct`` (True/False read after "Answer:") and ``cot_correct``
    (every proof step equals the gold one, no step missing or extra)."""

    answer_correct: bool
    cot_correct: bool
    answer: bool | None  # the parsed answer, None when the text has no "Answer: True/False"
    steps: tuple  # the parsed proof steps, normalised


def _normalise(step: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", step.lower()).split())


_ANSWER = re.compile(r"answer\s*[:\-]?\s*(true|false)", re.IGNORECASE)
_STEP = re.compile(r"\(\s*\d+\s*\)")


def grade(pred_text: str, problem: Problem) -> Grade:
    """Grade a model's continuation of the prompt (the text after ``render(..., with_proof=False)``).

    The answer is the first "Answer: True/False" in the text; the proof is the numbered steps before it,
    compared with the gold proof of either style after lower-casing and dropping punctuation and extra
    whitespace. Text after the answer (a model running on into a next example) is ignored.
    """
    if not isinstance(pred_text, str):
        raise ValueError(f"pred_text is a {type(pred_text).__name__}; pass the generated text as a string.")
    m = _ANSWER.search(pred_text)
    answer = None if m is None else m.group(1).lower() == "true"
    body = pred_text if m is None else pred_text[:m.start()]
    pieces = _STEP.split(body)
    steps = tuple(s for s in (_normalise(p) for p in pieces[1:]) if s)
    golds = {tuple(_normalise(s) for s in problem.proof(st)) for st in STYLES}
    return Grade(answer_correct=answer is not None and answer == problem.label,
                 cot_correct=m is not None and steps in golds, answer=answer, steps=steps)


def grade_many(preds: Sequence[str], problems: Sequence[Problem]) -> dict[str, float]:
    """Answer accuracy and exact-CoT accuracy over a set: ``{"answer_acc": ..., "cot_acc": ..., "n": ...}``."""
    if len(preds) != len(problems):
        raise ValueError(f"got {len(preds)} predictions for {len(problems)} problems; pass one per problem.")
    if not problems:
        raise ValueError("grade_many got no problems.")
    grades = [grade(t, p) for t, p in zip(preds, problems, strict=True)]
    return {"answer_acc": sum(g.answer_correct for g in grades) / len(grades),
            "cot_acc": sum(g.cot_correct for g in grades) / len(grades), "n": float(len(grades))}
