"""The chain-of-thought experiment: few-shot PrOntoQA prompts -> greedy CoT -> graded rows in a results file.

The runner appends one JSON line per problem as soon as it is graded (flushed and synced), so a Colab
disconnect loses at most the chunk being generated. Running it again on the same file skips the problems
already there: nothing is generated twice and no row is duplicated. Nothing is ever cut from the file: a line
that cannot be read (a row half-written when the session died) is reported, skipped and left where it is, and its
problem is run again.

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
import warnings
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


class ResultsFileWarning(UserWarning):
    """A line of a results file could not be read and was skipped (the file itself is never changed)."""


def load_results(path: str | Path) -> list[dict]:
    """The complete rows of a results file (JSON lines); reading never changes the file.

    A line that cannot be read (a half-written last row after an interrupt, a corrupt line, bytes that are not
    UTF-8) is reported with a ``ResultsFileWarning`` naming the file and the line, and skipped: its problem is
    run again by :func:`run_cot`, and the line itself stays on disk for you to inspect. A valid last row without
    its final newline is a complete row and is kept. A JSON row without the runner's columns is a ``ValueError``
    (the file was not written by ``run_cot``).
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, row, reason in _scan(path.read_bytes()):
        if reason is not None:
            warnings.warn(f"{path} line {n}: {reason}; skipped (the file is left as it is), so its problem will be "
                          "run again.", ResultsFileWarning, stacklevel=2)
            continue
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path} line {n} lacks the columns {missing}; it was not written by run_cot. "
                             "Pass another path.")
        rows.append(row)
    return rows


def _scan(data: bytes):
    """``(line number, row or None, why it is unreadable or None)`` for every non-blank line of ``data``."""
    lines = data.split(b"\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last_unterminated = n == len(lines)  # data does not end in a newline: maybe an interrupted write
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield n, None, f"bytes that are not UTF-8 ({err.reason} at byte {err.start})"
            continue
        except json.JSONDecodeError as err:
            what = "a half-written row (an interrupt mid-write?)" if last_unterminated else "not JSON"
            yield n, None, f"{what} ({len(line)} bytes; {err.msg} at column {err.colno})"
            continue
        if not isinstance(row, dict):
            yield n, None, f"JSON {type(row).__name__}, not a row object"
            continue
        yield n, row, None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
    if pending and path.exists() and path.stat().st_size and not _ends_with_newline(path):
        with open(path, "ab") as f:  # the next row starts on a line of its own; nothing is cut or rewritten
            f.write(b"\n")
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
