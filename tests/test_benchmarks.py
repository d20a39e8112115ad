"""Smoke run of the benchmark at tiny size: it runs, its batched and looped computations agree, it prints a table."""

from __future__ import annotations

import math

import pytest

from benchmarks.run import SIZES, format_table, main, run


def test_tiny_benchmark_runs_and_agrees(capsys):
    rows = run("tiny")
    assert [r.model for r in rows] == list(SIZES["tiny"][0])
    for r in rows:
        for value in (r.fwd_s, r.fwd_bwd_s, r.atp_s, r.patch_loop_s, r.patch_batched_s, r.ig_loop_s, r.ig_batched_s,
                      r.peak_mem_mb):
            assert math.isfinite(value) and value > 0
        assert r.patch_max_diff < 1e-4 and math.isfinite(r.ig_max_diff)
    out = capsys.readouterr().out
    assert "AtP/(f+fb)" in out and all(r.model in out for r in rows)
    assert format_table(rows, "cpu").count("\n") == len(rows) + 3


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        run("huge")
    with pytest.raises(SystemExit):
        main(["--size", "huge"])
