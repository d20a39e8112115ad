"""Clean/corrupted prompt pairs for the four subtasks of a PrOntoQA chain of thought (unit 07).

A proof such as ``(1) Fae is a wumpus. (2) Every wumpus is a yumpus. (3) Fae is a yumpus. (4) Every yumpus is not
hot. (5) Fae is not hot. Answer: False`` makes four kinds of decision. Each pair stops the text right before one
of them (prompt + the chain of thought written so far) and reads the logit difference *correct - incorrect* at
the last position:

    S1  species choice      "(1) Fae is a" -> the entity's species (the chain's first) vs another species of the
                            context (seed style: the entity's second species; compact: the trap fact's species).
                            Corruption: the two species swap names throughout the problem.
    S2  attribute recall    "(4) Every yumpus is [not]" -> the question's attribute vs another attribute of the
                            context. Corruption: the chain's attribute fact and another attribute fact exchange
                            their attributes, so the species now carries the other one.
    S3  negation carried    "(5) Fae is" -> " not" vs the attribute (or the reverse). Corruption: the signs of the
                            chain's attribute fact and of the trap fact (same attribute, other species, opposite
                            sign) swap, and the proof step already written flips with them: the label flips.
    S4  answer              "...Answer:" -> " True" vs " False". Corruption as S3, with both signed proof steps.

The CoT prefix is the gold proof in the prompt's style: for a problem the model solved (right answer, exact
proof) that is what it wrote, up to the spacing and case the grader ignores. Patching position ``p`` only means
something when ``p`` is the same token in both prompts, so clean and corrupted must tokenize to the same length.
S3 and S4 flip "not" in the proof steps, which changes the length; the count is restored by flipping the sign of
as many off-path attribute facts (facts no proof step reads). A pair that cannot be made equal, or whose answer
words share their first token, or whose item was not solved, is **skipped** and the skip is kept with its reason:
nothing is dropped silently.

Example::

    from mechlab.core.loading import load_model
    from mechlab.data.prontoqa import make_problems
    from mechlab.cot.runner import make_items
    from mechlab.cot.pairs import build_pairs
    model = load_model("organism", verbose=False)
    items = make_items(make_problems(8, seed=1, n_distractors=3), [], n_shots=0, style="compact")
    s1 = build_pairs(model, items, "S1")      # rows=run_cot(...) keeps only the solved problems
    print(s1.summary())                       # "S1 (species choice): 7 pairs, 1 skipped: ..."
    clean, corrupted, correct, incorrect, pos = s1.tensors()
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.data.prontoqa import Fact, Problem, render

SUBTASKS = {"S1": "species choice", "S2": "attribute recall", "S3": "negation carried to the conclusion",
            "S4": "answer"}


class _Skip(Exception):
    """A pair that cannot be built; the message is the reason reported."""


@dataclass(frozen=True)
class CotPair:
    """One clean/corrupted pair, cut right before the decision of its subtask."""

    item_id: str  # the CotItem it comes from
    subtask: str  # "S1".."S4"
    clean: str  # prompt + CoT prefix, ending right before the decided token
    corrupted: str  # the same with the subtask's corruption
    clean_tokens: Int[Tensor, " pos"]  # model.to_tokens(clean) (BOS included), on the CPU
    corrupted_tokens: Int[Tensor, " pos"]  # same length as clean_tokens
    correct_id: int  # the token the clean prompt calls for (first token of `correct`)
    incorrect_id: int  # the alternative, which the corrupted prompt calls for
    correct: str  # e.g. " wumpus"
    incorrect: str  # e.g. " zumpus"
    edits: tuple[str, ...]  # what the corruption changed, in words
    hops: int
    label: bool

    @property
    def pos(self) -> int:
        """The position the metric is read at: the last token of the prefix."""
        return len(self.clean_tokens) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.clean_tokens)


@dataclass
class PairSet:
    """The pairs of one subtask, and every item that gave no pair, as ``(item id, subtask, reason)``."""

    subtask: str
    pairs: list[CotPair]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PairSet(self.subtask, self.pairs[i], list(self.skipped))
        return self.pairs[i]

    def reasons(self) -> Counter:
        """How many items were skipped for each reason (reasons with their numbers stripped)."""
        return Counter(_reason_kind(r) for _, _, r in self.skipped)

    def summary(self) -> str:
        """One line: pairs made, skips by reason."""
        head = f"{self.subtask} ({SUBTASKS[self.subtask]}): {len(self.pairs)} pairs, {len(self.skipped)} skipped"
        if not self.skipped:
            return head
        return head + ": " + "; ".join(f"{n} x {r}" for r, n in self.reasons().most_common())

    def __repr__(self) -> str:
        return f"PairSet({self.summary()})"

    def tensors(self, device=None) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"],
                                            Int[Tensor, " batch"], Int[Tensor, " batch"]]:
        """``(clean, corrupted, correct, incorrect, pos)`` for a batched run.

        Prompts of different lengths are right-padded (with the last real token; a causal model never reads a
        later position, so padding changes nothing at ``pos``); ``pos[b]`` is pair b's decision position.
        """
        if not self.pairs:
            raise ValueError(f"{self.subtask} has no pairs ({self.summary()}); build pairs from more (solved) items "
                             "before running an analysis.")
        width = max(p.n_tokens for p in self.pairs)

        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t[-1:].expand(width - len(t))])

        clean = torch.stack([pad(p.clean_tokens) for p in self.pairs])
        corrupted = torch.stack([pad(p.corrupted_tokens) for p in self.pairs])
        correct = torch.tensor([p.correct_id for p in self.pairs])
        incorrect = torch.tensor([p.incorrect_id for p in self.pairs])
        pos = torch.tensor([p.pos for p in self.pairs])
        return tuple(t.to(device) if device is not None else t for t in (clean, corrupted, correct, incorrect, pos))


def _reason_kind(reason: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", reason)


# ---------------------------------------------------------------------------------------------------------
# text helpers


def swap_words(text: str, a: str, b: str) -> str:
    """Exchange the whole words ``a`` and ``b`` in ``text``, their plurals (``+es``) and capitalised forms too.

    Whole words only: swapping "impus" leaves "grimpus" alone (the seed's ``str.replace`` did not). Both
    directions happen in one pass, so ``a -> b`` does not turn back into ``a``.

    >>> swap_words("Grimpuses are impuses. Each impus is sunny.", "impus", "grimpus")
    'Impuses are grimpuses. Each grimpus is sunny.'

    Articles ("a"/"an") are not adjusted.
    """
    if not a or not b or a == b:
        raise ValueError(f"swap_words needs two different non-empty words; got {a!r} and {b!r}.")
    other = {a.lower(): b.lower(), b.lower(): a.lower()}
    pattern = re.compile(rf"\b({re.escape(a)}|{re.escape(b)})(es)?\b", re.IGNORECASE)

    def sub(m: re.Match) -> str:
        word = other[m.group(1).lower()]
        if m.group(1)[0].isupper():
            word = word[0].upper() + word[1:]
        return word + (m.group(2) or "")

    return pattern.sub(sub, text)


def _article(species: str) -> str:
    return "an" if species[0] in "aeiou" else "a"


def _lines(steps: Sequence[str]) -> str:
    return "".join(f"({i}) {s}\n" for i, s in enumerate(steps, start=1))


def _chain_fact(problem: Problem) -> Fact:
    for f in problem.facts:
        if f.is_attr and f.subject == problem.chain[-1] and f.obj == problem.attribute:
            return f
    raise _Skip("no attribute fact on the chain (not a mechlab PrOntoQA problem?)")


def _trap_fact(problem: Problem) -> Fact:
    for f in problem.facts:
        if f.is_attr and f.obj == problem.attribute and f.subject != problem.chain[-1] \
                and f.negated != problem.negated:
            return f
    raise _Skip("no trap fact (the question's attribute with the opposite sign on another species)")


def _replace_facts(problem: Problem, new: dict[int, Fact], **fields) -> Problem:
    facts = tuple(new.get(i, f) for i, f in enumerate(problem.facts))
    return replace(problem, facts=facts, **fields)


# ---------------------------------------------------------------------------------------------------------
# the four corruptions: each returns (clean continuation, corrupted continuation, correct, incorrect, edits) of
# the query problem (its prompt + CoT prefix), or raises _Skip


def _s1(problem: Problem, style: str):
    first = problem.chain[0]
    if style == "seed" or len(problem.entity_species) > 1:
        others = [s for s in problem.entity_species if s != first]
        if not others:
            raise _Skip("the entity has no second species")
        alt, where = others[0], "the entity's other species"
    else:
        alt, where = _trap_fact(problem).subject, "the trap fact's species"
    if _article(first) != _article(alt):
        raise _Skip(f"the two species take different articles, which would give the answer away "
                    f"('{_article(first)} {first}' vs '{_article(alt)} {alt}')")
    rename = {first: alt, alt: first}

    def ren(x: str) -> str:
        return rename.get(x, x)

    swapped = replace(problem,
                      facts=tuple(replace(f, subject=ren(f.subject), obj=f.obj if f.is_attr else ren(f.obj))
                                  for f in problem.facts),
                      entity_species=tuple(ren(s) for s in problem.entity_species),
                      chain=tuple(ren(s) for s in problem.chain))
    prefix = f"(1) {problem.entity} is {_article(first)}"
    return (render(problem, style, with_proof=False) + prefix, render(swapped, style, with_proof=False) + prefix,
            " " + first, " " + alt, (f"species '{first}' and '{alt}' ({where}) swapped in the problem",))


def _s2(problem: Problem, style: str):
    chain_fact = _chain_fact(problem)
    candidates = [(i, f) for i, f in enumerate(problem.facts) if f.is_attr and f.obj != problem.attribute
                  and f.subject != problem.chain[-1]]
    if not candidates:
        raise _Skip("no other attribute fact in the context to swap attributes with")
    j, other = candidates[0]
    i = problem.facts.index(chain_fact)
    corrupted = _replace_facts(problem, {i: replace(chain_fact, obj=other.obj),
                                         j: replace(other, obj=problem.attribute)})
    steps = problem.proof(style)
    step = steps[-2]  # "Every yumpus is [not] hot." / "Yumpuses are [not] hot."
    suffix = f" {problem.attribute}."
    assert step.endswith(suffix), step
    prefix = _lines(steps[:-2]) + f"({len(steps) - 1}) " + step[:-len(suffix)]
    return (render(problem, style, with_proof=False) + prefix, render(corrupted, style, with_proof=False) + prefix,
            " " + problem.attribute, " " + other.obj,
            (f"attributes of '{chain_fact.subject} ... {problem.attribute}' and '{other.subject} ... {other.obj}' "
             "exchanged",))


def _sign_flip(problem: Problem, style: str, n_steps: int):
    """Flip the label: swap the signs of the chain fact and the trap, rebalance "not" with off-path facts."""
    chain_fact, trap = _chain_fact(problem), _trap_fact(problem)
    i, t = problem.facts.index(chain_fact), problem.facts.index(trap)
    # the proof's signed steps lose (or gain) n_steps "not"s; as many off-path facts of the other sign flip back
    want = not problem.negated
    spare = [(j, f) for j, f in enumerate(problem.facts) if f.is_attr and j not in (i, t) and f.negated == want
             and f.obj != problem.attribute]
    if len(spare) < n_steps:
        raise _Skip(f"too few off-path attribute facts to rebalance the 'not' count (need {n_steps}, "
                    f"found {len(spare)})")
    new = {i: replace(chain_fact, negated=not chain_fact.negated), t: replace(trap, negated=not trap.negated)}
    new.update({j: replace(f, negated=not f.negated) for j, f in spare[:n_steps]})
    corrupted = _replace_facts(problem, new, negated=not problem.negated, label=not problem.label)
    edits = (f"signs of '{chain_fact.subject} ... {problem.attribute}' and of the trap '{trap.subject} ... "
             f"{problem.attribute}' swapped", f"{n_steps} signed proof step(s) flipped",
             "rebalanced by flipping " + ", ".join(f"'{f.subject} ... {f.obj}'" for _, f in spare[:n_steps]))
    return corrupted, edits


def _s3(problem: Problem, style: str):
    corrupted, edits = _sign_flip(problem, style, 1)
    steps, csteps = problem.proof(style), corrupted.proof(style)
    tail = f"({len(steps)}) {problem.entity} is"
    not_first = problem.negated
    correct, incorrect = (" not", " " + problem.attribute) if not_first else (" " + problem.attribute, " not")
    return (render(problem, style, with_proof=False) + _lines(steps[:-1]) + tail,
            render(corrupted, style, with_proof=False) + _lines(csteps[:-1]) + tail, correct, incorrect, edits)


def _s4(problem: Problem, style: str):
    corrupted, edits = _sign_flip(problem, style, 2)
    correct, incorrect = (" True", " False") if problem.label else (" False", " True")
    return (render(problem, style, with_proof=False) + _lines(problem.proof(style)) + "Answer:",
            render(corrupted, style, with_proof=False) + _lines(corrupted.proof(style)) + "Answer:",
            correct, incorrect, edits)


_BUILDERS = {"S1": _s1, "S2": _s2, "S3": _s3, "S4": _s4}


# ---------------------------------------------------------------------------------------------------------
# building


def _check_inputs(items, subtask, rows):
    if subtask not in SUBTASKS:
        raise ValueError(f"subtask={subtask!r}; expected one of {list(SUBTASKS)} ({', '.join(SUBTASKS.values())}).")
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"items must be a non-empty list of CotItems (mechlab.cot.runner.make_items); got "
                         f"{type(items).__name__}. Build them with make_items(problems, shots_pool).")
    bad = sorted({type(x).__name__ for x in items
                  if not all(hasattr(x, a) for a in ("id", "prompt", "problem", "style"))
                  or not isinstance(getattr(x, "problem", None), Problem)})
    if bad:
        raise ValueError(f"items must be CotItems holding a mechlab.data.prontoqa.Problem (id, prompt, problem, "
                         f"style); got {bad}. Pairs are built from the problem's structure, not from its text: pass "
                         "the items given to run_cot, not its result rows.")
    if rows is not None:
        if isinstance(rows, dict) or not all(isinstance(r, dict) and "id" in r for r in rows):
            raise ValueError("rows must be the list of result rows from mechlab.cot.runner.run_cot / load_results "
                             "(dicts with 'id', 'correct_pred', 'correct_cot'); or None to use every item.")


def _row_reason(row: dict | None) -> str | None:
    if row is None:
        return "no result row (not run yet)"
    if not row.get("correct_pred"):
        return "not solved (wrong answer)"
    if not row.get("correct_cot"):
        return "not solved (CoT differs from the gold proof)"
    return None


def _tokens(model, text: str) -> Int[Tensor, " pos"]:
    return model.to_tokens(text, prepend_bos=True, truncate=False)[0].cpu()


def _next_token(model, prefix_ids: list[int], text: str, word: str) -> int:
    """The token ``word`` starts with when it follows ``text``."""
    full = _tokens(model, text + word).tolist()
    if full[:len(prefix_ids)] != prefix_ids or len(full) == len(prefix_ids):
        raise _Skip(f"the answer merges with the token before it ('{word.strip()}')")
    return full[len(prefix_ids)]


def build_pairs(model, items: Sequence, subtask: str, *, rows: Sequence[dict] | None = None) -> PairSet:
    """Clean/corrupted pairs of ``subtask`` ("S1".."S4") from ``items`` (see the module docstring).

    Args:
        model: any model with a tokenizer (``model.to_tokens``); only its tokenizer is used.
        items: ``CotItem``s (``mechlab.cot.runner.make_items``); each gives at most one pair.
        subtask: "S1" species choice, "S2" attribute recall, "S3" negation carried, "S4" answer.
        rows: the run's result rows (``run_cot`` / ``load_results``): only items the model solved (right answer
            and exact proof) give pairs, the others are skipped with the reason. None uses every item, with the
            gold proof as the CoT prefix (teacher forcing); then filter with :func:`keep_decided`.

    Returns:
        a :class:`PairSet`: ``.pairs`` and ``.skipped`` = [(item id, subtask, reason)], ``.summary()``.
    """
    _check_inputs(items, subtask, rows)
    by_id = None if rows is None else {r["id"]: r for r in rows}
    pairs, skipped = [], []
    for item in items:
        try:
            if by_id is not None and (why := _row_reason(by_id.get(item.id))):
                raise _Skip(why)
            pairs.append(_one_pair(model, item, subtask))
        except _Skip as skip:
            skipped.append((item.id, subtask, str(skip)))
    return PairSet(subtask, pairs, skipped)


def _one_pair(model, item, subtask: str) -> CotPair:
    problem, style = item.problem, item.style
    query = render(problem, style, with_proof=False)
    if not item.prompt.endswith(query):
        raise ValueError(f"item {item.id!r}: its prompt does not end with its problem rendered in style {style!r}; "
                         "build items with mechlab.cot.runner.make_items, which keeps the two consistent.")
    shots = item.prompt[:-len(query)]
    clean_q, corr_q, correct, incorrect, edits = _BUILDERS[subtask](problem, style)
    clean, corrupted = shots + clean_q, shots + corr_q
    ct, rt = _tokens(model, clean), _tokens(model, corrupted)
    if len(ct) + 1 > model.cfg.n_ctx:
        raise _Skip(f"longer than the model's context ({len(ct)} tokens + the answer > {model.cfg.n_ctx})")
    if len(ct) != len(rt):
        raise _Skip(f"clean and corrupted tokenize to different lengths ({len(ct)} vs {len(rt)} tokens)")
    if torch.equal(ct, rt):
        raise _Skip("the corruption changed no token")
    good = _next_token(model, ct.tolist(), clean, correct)
    bad = _next_token(model, ct.tolist(), clean, incorrect)
    if good == bad:
        raise _Skip(f"the two answers share their first token ('{correct.strip()}' vs '{incorrect.strip()}')")
    return CotPair(item_id=item.id, subtask=subtask, clean=clean, corrupted=corrupted, clean_tokens=ct,
                   corrupted_tokens=rt, correct_id=good, incorrect_id=bad, correct=correct, incorrect=incorrect,
                   edits=edits, hops=problem.hops, label=problem.label)


# ---------------------------------------------------------------------------------------------------------
# the metric and the model's own verdict


def decision_logit_diff(logits, pos, correct, incorrect):
    """``logits[b, pos[b], correct[b]] - logits[b, pos[b], incorrect[b]]`` for right-padded batches: [batch].

    Shapes: logits [batch, pos, d_vocab]; pos, correct, incorrect [batch] (integer).
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    pos, correct, incorrect = (torch.as_tensor(x, device=logits.device).long() for x in (pos, correct, incorrect))
    at = logits[rows, pos].float()
    return at[rows, correct] - at[rows, incorrect]


@torch.no_grad()
def pair_logit_diffs(model, pairs: PairSet, *, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """The logit difference (correct - incorrect) at each pair's decision: (clean [n], corrupted [n]), fp32 CPU."""
    clean, corrupted, good, bad, pos = pairs.tensors()
    device = next(model.parameters()).device
    out = []
    for toks in (clean, corrupted):
        parts = []
        for s in range(0, len(toks), batch_size):
            sl = slice(s, s + batch_size)
            logits = model(toks[sl].to(device))
            parts.append(decision_logit_diff(logits, pos[sl], good[sl], bad[sl]).cpu())
        out.append(torch.cat(parts))
    return out[0], out[1]


def keep_decided(model, pairs: PairSet, *, min_diff: float = 0.0) -> PairSet:
    """The pairs whose clean prompt the model decides right (logit diff > ``min_diff``); the others become skips.

    Use it when pairs come from teacher-forced proofs (``rows=None``): a pair the model gets wrong explains
    nothing about how it gets it right.
    """
    if not pairs.pairs:
        return PairSet(pairs.subtask, [], list(pairs.skipped))
    clean, _ = pair_logit_diffs(model, pairs)
    kept, skipped = [], list(pairs.skipped)
    for p, d in zip(pairs.pairs, clean.tolist(), strict=True):
        if d > min_diff:
            kept.append(p)
        else:
            skipped.append((p.item_id, p.subtask, f"model decides it wrong ({p.correct.strip()!r} - "
                                                  f"{p.incorrect.strip()!r} = {d:+.2f})"))
    return PairSet(pairs.subtask, kept, skipped)


__all__ = ["SUBTASKS", "CotPair", "PairSet", "build_pairs", "decision_logit_diff", "keep_decided",
           "pair_logit_diffs", "swap_words"]
