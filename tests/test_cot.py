"""mechlab.cot.runner: the resumable chain-of-thought runner, its results file and the summary by hops."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mechlab.cot.runner import (
    COLUMNS,
    CotItem,
    ResultsFileWarning,
    load_results,
    make_items,
    run_cot,
    solved,
    summary_by_hops,
)
from mechlab.data.prontoqa import make_problems, proof_text, render
from mechlab.methods.generate import generate

N_NEW = 12  # the random tiny models write nonsense; a short run is enough to test the bookkeeping


@pytest.fixture(scope="module")
def items() -> list[CotItem]:
    # zero shots: the byte-level tokenizer of the random models makes one token per character
    problems = make_problems(5, hops=(1, 2, 3), seed=3, style="compact", n_distractors=1)
    return make_items(problems, make_problems(4, seed=4, style="compact", n_distractors=1), n_shots=0,
                      style="compact")


class Interrupt(Exception):
    pass


def _raise_after(k: int):
    seen = []

    def on_row(row):
        seen.append(row["id"])
        if len(seen) == k:
            raise Interrupt(f"simulated disconnect after {k} rows")
    return on_row


def _ids_in_file(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_runner_resumes_after_an_interrupt_without_duplicates(tiny_model, items, tmp_path):
    path = tmp_path / "cot.jsonl"
    with pytest.raises(Interrupt):  # the interrupt falls in the middle of the second chunk of two
        run_cot(tiny_model, items, path, max_new_tokens=N_NEW, batch_size=2, on_row=_raise_after(3))
    first = _ids_in_file(path)
    assert len(first) == 3  # every row graded before the interrupt is on disk

    resumed = []
    rows = run_cot(tiny_model, items, path, max_new_tokens=N_NEW, batch_size=2, on_row=lambda r: resumed.append(r))
    ids = _ids_in_file(path)
    assert len(ids) == len(set(ids)) == len(items)
    assert set(ids) == {x.id for x in items}
    assert ids[:3] == first  # earlier rows are kept as they were
    assert len(resumed) == len(items) - 3  # only the missing items were generated again
    assert [r["id"] for r in rows] == [x.id for x in items]

    # resuming gives the same rows as a run that was never interrupted
    clean = run_cot(tiny_model, items, tmp_path / "clean.jsonl", max_new_tokens=N_NEW, batch_size=5)
    assert rows == clean

    # a third run has nothing left to do
    again = []
    run_cot(tiny_model, items, path, max_new_tokens=N_NEW, on_row=lambda r: again.append(r))
    assert again == [] and _ids_in_file(path) == ids


def test_rows_hold_the_generated_continuation_and_the_item(gpt2_like, items, tmp_path):
    rows = run_cot(gpt2_like, items, tmp_path / "cot.jsonl", max_new_tokens=N_NEW, batch_size=3)
    for item, row in zip(items, rows, strict=True):
        assert tuple(row) == COLUMNS
        alone = generate(gpt2_like, item.prompt, max_new_tokens=N_NEW, stop=("Answer: True", "Answer: False", "\n\n"))
        assert row["output"] == alone.texts[0] and row["finish"] == alone.finish[0]
        assert row["prompt"] == item.prompt and row["label"] == item.problem.label
        assert row["hops"] == item.problem.hops == len(item.problem.chain)
        assert row["gold_cot"] == item.problem.proof("compact")
        assert not (row["correct_pred"] and row["correct_cot"])  # a random model does not write the proof


def test_a_half_written_row_is_kept_on_disk_skipped_and_run_again(gpt2_like, items, tmp_path):
    path = tmp_path / "cot.jsonl"
    with pytest.raises(Interrupt):
        run_cot(gpt2_like, items, path, max_new_tokens=N_NEW, batch_size=2, on_row=_raise_after(2))
    half = '{"id": "0002-abc", "prompt": "Every wum'
    with open(path, "a") as f:  # a disconnect in the middle of writing the third row
        f.write(half)
    before = path.read_bytes()
    with pytest.warns(ResultsFileWarning, match=r"cot.jsonl line 3: a half-written row"):
        assert len(load_results(path)) == 2
    assert path.read_bytes() == before  # reading wrote nothing
    with pytest.warns(ResultsFileWarning):
        rows = run_cot(gpt2_like, items, path, max_new_tokens=N_NEW, batch_size=2)
    after = path.read_bytes()
    assert after.startswith(before + b"\n")  # the half row is still there, closed by a newline; nothing was cut
    lines = after.decode().splitlines()
    assert lines[2] == half
    ids = [json.loads(line)["id"] for i, line in enumerate(lines) if i != 2]
    assert len(ids) == len(set(ids)) == len(items) == len(rows)


# ---------------------------------------------------------------------------------------------------------
# the results file is never changed by reading it, and every complete row comes back


def _row(i: int) -> dict:
    return {c: None for c in COLUMNS} | {"id": f"{i:04d}-row", "prompt": f"prompt {i}", "output": f"text {i}"}


def _lines(*rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _read_keeping_bytes(path, warn: str | None) -> list[dict]:
    """load_results, checking the file's bytes are unchanged and a warning naming the file and line (or none)."""
    before = path.read_bytes()
    if warn is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rows = load_results(path)
    else:
        with pytest.warns(ResultsFileWarning, match=warn):
            rows = load_results(path)
    assert path.read_bytes() == before
    return rows


def test_a_valid_last_row_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(_lines(_row(0)) + json.dumps(_row(1)).encode())
    assert _read_keeping_bytes(path, warn=None) == [_row(0), _row(1)]


def test_a_one_row_file_is_read_whole(tmp_path):
    path = tmp_path / "r.jsonl"
    for data in (_lines(_row(0)), json.dumps(_row(0)).encode()):  # with and without the final newline
        path.write_bytes(data)
        assert _read_keeping_bytes(path, warn=None) == [_row(0)]


def test_a_half_row_is_reported_and_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(_lines(_row(0), _row(1)) + json.dumps(_row(2)).encode()[:25])
    assert _read_keeping_bytes(path, warn=r"r\.jsonl line 3: a half-written row") == [_row(0), _row(1)]
    path.write_bytes(json.dumps(_row(0)).encode()[:25])  # the first row of a run, cut short
    assert _read_keeping_bytes(path, warn=r"r\.jsonl line 1: a half-written row") == []


def test_a_corrupt_middle_line_is_reported_and_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(_lines(_row(0)) + b'{"id": "0001-row", "prom\n' + b"[1, 2]\n" + _lines(_row(3)))
    with pytest.warns(ResultsFileWarning, match=r"line 3: JSON list"):
        rows = _read_keeping_bytes(path, warn=r"r\.jsonl line 2: not JSON")
    assert rows == [_row(0), _row(3)]


def test_bytes_that_are_not_utf8_are_reported_and_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(_lines(_row(0)) + b'{"id": "\xff\xfe"}\n' + _lines(_row(2)))
    assert _read_keeping_bytes(path, warn=r"r\.jsonl line 2: bytes that are not UTF-8") == [_row(0), _row(2)]


def test_resuming_after_a_row_without_its_newline_appends_on_a_new_line(items, tmp_path, monkeypatch):
    class Canned:  # stands in for generate(): a fixed text per prompt
        def __init__(self, prompts):
            self.texts = [f"out {p[-8:]}" for p in prompts]
            self.finish = ["length"] * len(prompts)

    calls = []
    monkeypatch.setattr("mechlab.cot.runner.generate",
                        lambda model, prompts, **kw: calls.append(list(prompts)) or Canned(prompts))
    path = tmp_path / "cot.jsonl"
    first = run_cot(None, items[:2], path, batch_size=1)
    data = path.read_bytes().rstrip(b"\n")  # as if the newline of the last row had not reached the disk
    path.write_bytes(data)
    calls.clear()
    rows = run_cot(None, items, path, batch_size=2)
    assert rows[:2] == first  # both complete rows are kept, neither is generated again
    assert sorted(p for chunk in calls for p in chunk) == sorted(x.prompt for x in items[2:])
    after = path.read_bytes()
    assert after.startswith(data + b"\n")  # appended after a newline; nothing before it was rewritten
    assert {json.loads(line)["id"] for line in after.decode().splitlines()[:2]} == {x.id for x in items[:2]}
    on_disk = _read_keeping_bytes(path, warn=None)
    assert len(on_disk) == len(items) and {r["id"] for r in on_disk} == {x.id for x in items}


def test_grading_of_a_gold_and_a_wrong_continuation(gemma_like, items, tmp_path, monkeypatch):
    """The runner's columns come from the grader: the gold proof is right; the gold proof with the answer
    flipped has a right CoT and a wrong answer."""
    first, second = items[0].problem, items[1].problem
    gold = proof_text(first, "compact")
    flipped = proof_text(second, "compact").replace(f"Answer: {second.label}", f"Answer: {not second.label}")
    canned = {items[0].prompt: gold, items[1].prompt: flipped}

    class Canned:  # stands in for generate(): what a perfect and a wrong model would write
        def __init__(self, prompts):
            self.texts = [canned[p] for p in prompts]
            self.finish = ["stop"] * len(prompts)

    monkeypatch.setattr("mechlab.cot.runner.generate", lambda model, prompts, **kw: Canned(prompts))
    right, wrong = run_cot(gemma_like, items[:2], tmp_path / "cot.jsonl", batch_size=1)
    assert right["output"] == gold and wrong["output"] == flipped
    assert right["correct_pred"] and right["correct_cot"] and right["pred"] == first.label
    assert len(right["pred_cot"]) == len(right["gold_cot"]) == 2 * first.hops + 1
    assert not wrong["correct_pred"] and wrong["correct_cot"] and wrong["pred"] == (not second.label)
    assert solved([right, wrong]) == [right]


def test_rows_from_another_experiment_are_refused(gpt2_like, items, tmp_path):
    path = tmp_path / "cot.jsonl"
    run_cot(gpt2_like, items[:1], path, max_new_tokens=4)
    other = CotItem(id=items[0].id, prompt=items[0].prompt + " (changed)", problem=items[0].problem,
                    style="compact")
    with pytest.raises(ValueError, match="another experiment"):
        run_cot(gpt2_like, [other], path, max_new_tokens=4)
    with pytest.raises(ValueError, match="unique"):
        run_cot(gpt2_like, [items[1], items[1]], path, max_new_tokens=4)
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="lacks the columns"):
        load_results(path)


def test_make_items_is_seeded_and_ends_with_the_query():
    pool = make_problems(12, seed=1, style="seed")
    queries = make_problems(3, seed=2, style="seed")
    a = make_items(queries, pool, n_shots=7, style="seed", seed=5)
    b = make_items(queries, pool, n_shots=7, style="seed", seed=5)
    c = make_items(queries, pool, n_shots=7, style="seed", seed=6)
    assert [x.prompt for x in a] == [x.prompt for x in b]
    assert [x.prompt for x in a] != [x.prompt for x in c]
    for item, query in zip(a, queries, strict=True):
        assert item.prompt.endswith(render(query, "seed", with_proof=False))
        assert item.prompt.count("\nAnswer: ") == 7  # seven solved examples
        assert item.gold_cot == query.proof("seed") and item.hops == query.hops and item.label == query.label
    assert len({x.id for x in a}) == 3
    with pytest.raises(ValueError, match="n_shots"):
        make_items(queries, pool[:3], n_shots=7)


def test_summary_by_hops_counts_by_hand():
    def row(hops, pred, cot):
        return {"hops": hops, "correct_pred": pred, "correct_cot": cot}

    rows = [row(1, True, True), row(1, True, False), row(2, False, False), row(2, True, True), row(2, True, True),
            row(3, False, True)]
    s = summary_by_hops(rows)
    assert s.labels == ["1 hop", "2 hops", "3 hops", "all"]
    assert s.meta["metric"] == ("answer_acc", "cot_acc", "both_acc")
    assert s.meta["n"] == {"1 hop": 2, "2 hops": 3, "3 hops": 1, "all": 6}
    expected = torch.tensor([[2 / 2, 1 / 2, 1 / 2], [2 / 3, 2 / 3, 2 / 3], [0, 1, 0], [4 / 6, 4 / 6, 3 / 6]])
    torch.testing.assert_close(s.values, expected)
    with pytest.raises(ValueError, match="no rows"):
        summary_by_hops([])
