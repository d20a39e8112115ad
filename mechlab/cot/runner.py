"""The chain-of-thought experiment: few-shot PrOntoQA prompts -> greedy CoT -> graded rows in a results file.

The runner appends one JSON line per problem as soon as it is graded (flushed and synced), so a Colab
disconnect loses at most the chunk being generated. Running it again on the same file skips the problems
already there: nothing is generated twice and no row is duplicated.

Columns of a row: ``id``, ``prompt``, ``gold_cot`` (the gold proof steps), ``output`` (the model's
continuation), ``pred_cot`` (the proof steps read from it, normalised), ``label``, ``pred`` (True, False or
None when no answer was found), ``correct_pred``, ``correct_cot``, ``hops``, ``finish`` (why generation
stopped: "stop", "eos", "length").

Example::

    from mechlab.core.loading import load_model
    from mechlab.data.prontoqa import make_problems
    from mechlab.cot.runner import make_items, run_cot, summary_by_hops
    model = load_model("offline", verbose=False)   # the organism; Gemma-2b with 7 "seed"-style shots on a GPU
    pool = make_problems(20, hops=(1, 2), seed=1, style="compact", n_distractors=1)
    problems = make_problems(6, hops=(1, 2), seed=2, style="compact", n_distractors=1)
    items = make_items(problems, pool, n_shots=0, style="compact")
    rows = run_cot(model, items, "results/cot.jsonl", max_new_tokens=48)   # rerun: skips what is done
    summary_by_hops(rows)          # answer / CoT accuracy per number of hops
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechlab.core.results import Labelled
from mechlab.data.prontoqa import few_shot_prompt
from mechlab.data.prontoqa import grade as prontoqa_grade
from mechlab.methods.generate import generate

COLUMNS = ("id", "prompt", "gold_cot", "output", "pred_cot", "label", "pred", "correct_pred", "correct_cot",
           "hops", "finish")
DEFAULT_STOP = ("Answer: True", "Answer: False", "\n\n")  # the answer ends a proof; a blank line ends an example
SUMMARY_METRICS = ("answer_acc", "cot_acc", "both_acc")


@dataclass(frozen=True)
class CotItem:
    """One prompt of the experiment: a few-shot prompt whose last problem the model must solve."""

    id: str  # stable across runs: the problem's index and a hash of the prompt
    prompt: str  # the few-shot prompt, ending where the model's proof should start
    problem: object  # a mechlab.data.prontoqa.Problem: gold proof, label, hops
    style: str = "seed"  # the rendering of the proof ("seed" or "compact")

    @property
    def gold_cot(self) -> list[str]:
        return list(self.problem.proof(self.style))

    @property
    def label(self) -> bool:
        return bool(self.problem.label)

    @property
    def hops(self) -> int:
        return int(self.problem.hops)


def make_items(problems: Sequence, shots_pool: Sequence, *, n_shots: int = 7, style: str = "seed",
               seed: int = 0) -> list[CotItem]:
    """A few-shot prompt per problem, its ``n_shots`` solved examples drawn from ``shots_pool`` (seeded).

    The seed notebook used 7 shots in the ``"seed"`` style; the organism reads the ``"compact"`` style.
    """

    if n_shots < 0 or n_shots > len(shots_pool):
        raise ValueError(f"n_shots={n_shots} but the shots pool holds {len(shots_pool)} problems; pass a larger "
                         "pool (make_problems(n, seed=another_seed)) or fewer shots.")
    rng = random.Random(seed)
    items = []
    for i, problem in enumerate(problems):
        candidates = [p for p in shots_pool if p != problem]
        if len(candidates) < n_shots:
            raise ValueError(f"problem {i} is in the shots pool, which leaves {len(candidates)} shots for "
                             f"n_shots={n_shots}; use a pool made with another seed.")
        prompt = few_shot_prompt(rng.sample(candidates, n_shots), problem, style=style)
        digest = hashlib.sha1(prompt.encode()).hexdigest()[:8]
        items.append(CotItem(id=f"{i:04d}-{digest}", prompt=prompt, problem=problem, style=style))
    return items


# ---------------------------------------------------------------------------------------------------------
# the results file


def load_results(path: str | Path) -> list[dict]:
    """The rows of a results file (JSON lines). A half-written last line (an interrupt mid-write) is dropped
    from the file, with a message, so that the next row starts on a line of its own."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        print(f"mechlab: {path} ends in a half-written row ({len(raw) - keep} bytes, an interrupt mid-write); "
              "dropping it, its problem will be run again.")
        with open(path, "r+b") as f:
            f.truncate(keep)
        raw = raw[:keep]
    rows = []
    for n, line in enumerate(raw.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n} is not JSON ({err}); this file is not a mechlab results file, or "
                             "was edited. Pass another path, or fix or delete that line.") from None
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path} line {n} lacks the columns {missing}; it was not written by run_cot. "
                             "Pass another path.")
        rows.append(row)
    return rows


def _append(f, row: dict) -> None:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())  # on disk before the next problem starts: a disconnect loses nothing written


def _graded_row(item: CotItem, output: str, finish: str, grade_fn: Callable) -> dict:
    grade = grade_fn(output, item.problem)
    return {"id": item.id, "prompt": item.prompt, "gold_cot": item.gold_cot, "output": output,
            "pred_cot": list(grade.steps), "label": item.label, "pred": grade.answer,
            "correct_pred": bool(grade.answer_correct), "correct_cot": bool(grade.cot_correct),
            "hops": item.hops, "finish": finish}


def _check_items(items: Sequence[CotItem]) -> None:
    if not items:
        raise ValueError("run_cot got no items; build them with make_items(problems, shots_pool).")
    bad = [type(x).__name__ for x in items if not all(hasattr(x, a) for a in ("id", "prompt", "problem"))]
    if bad:
        raise ValueError(f"run_cot needs items with id, prompt and problem (CotItem); got {sorted(set(bad))}. "
                         "Build them with make_items(problems, shots_pool).")
    ids = [x.id for x in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"item ids must be unique, since the results file is keyed by them; these repeat: {dup}.")


def run_cot(
    model,
    items: Sequence[CotItem],
    path: str | Path,
    *,
    max_new_tokens: int = 128,
    stop: Sequence[str] = DEFAULT_STOP,
    batch_size: int = 8,
    grade_fn: Callable | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Generate, grade and append a row per item to ``path`` (JSON lines); skip items already in the file.

    Items are generated ``batch_size`` at a time (greedy, KV cache, via ``mechlab.methods.generate``); each row is
    written and synced as soon as its chunk is graded. ``grade_fn(output, problem)`` defaults to
    ``mechlab.data.prontoqa.grade``. ``on_row(row)`` is called after each row is written.

    Returns every row for ``items`` (earlier runs' and this run's), in the order of ``items``.
    """
    _check_items(items)
    if grade_fn is None:
        grade_fn = prontoqa_grade
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["id"]: row for row in load_results(path)}
    for item in items:
        if item.id in done and done[item.id]["prompt"] != item.prompt:
            raise ValueError(f"{path} holds a row with id {item.id!r} whose prompt differs from this item's; the "
                             "file comes from another experiment. Pass a new path.")
    pending = [x for x in items if x.id not in done]
    if done:
        print(f"mechlab: {path}: {len(items) - len(pending)} of {len(items)} items already done, "
              f"{len(pending)} to go.")
    pending.sort(key=lambda x: -len(x.prompt))  # similar lengths share a batch: less padding
    with open(path, "a", encoding="utf-8") as f, \
            tqdm(total=len(pending), desc="chain-of-thought", unit="problem", disable=not pending) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            with torch.no_grad():
                out = generate(model, [x.prompt for x in chunk], max_new_tokens=max_new_tokens, stop=stop,
                               batch_size=batch_size, progress=False)
            for item, text, finish in zip(chunk, out.texts, out.finish, strict=True):
                row = _graded_row(item, text, finish, grade_fn)
                _append(f, row)
                done[item.id] = row
                bar.update(1)
                if on_row is not None:
                    on_row(row)
    return [done[x.id] for x in items]


# ---------------------------------------------------------------------------------------------------------
# summaries


def summary_by_hops(rows: Sequence[dict]) -> Labelled:
    """Accuracy per number of hops, and over all rows: of the answer, of the CoT, of both.

    Labels ``"1 hop"``, ``"2 hops"``, ..., ``"all"``; columns ``SUMMARY_METRICS`` (in ``meta["metric"]``); the
    number of rows behind each label is in ``meta["n"]``.
    """
    if not rows:
        raise ValueError("summary_by_hops got no rows; run run_cot first or load them with load_results(path).")
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["hops"]):
        groups.setdefault(f"{row['hops']} hop" + ("s" if row["hops"] != 1 else ""), []).append(row)
    groups["all"] = list(rows)
    values = []
    for group in groups.values():
        n = len(group)
        answer = sum(bool(r["correct_pred"]) for r in group) / n
        cot = sum(bool(r["correct_cot"]) for r in group) / n
        both = sum(bool(r["correct_pred"] and r["correct_cot"]) for r in group) / n
        values.append([answer, cot, both])
    return Labelled(torch.tensor(values), list(groups), unit="fraction correct", axes=("hops", "metric"),
                    meta={"metric": SUMMARY_METRICS, "n": {label: len(group) for label, group in groups.items()}})


def solved(rows: Sequence[dict]) -> list[dict]:
    """The rows with both the right answer and the exact gold proof: the problems the analyses explain."""
    return [r for r in rows if r["correct_pred"] and r["correct_cot"]]
