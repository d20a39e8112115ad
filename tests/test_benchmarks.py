"""Smoke run of the benchmark at tiny size: every seed / mechlab comparison runs, agrees, and is printed."""

from __future__ import annotations

import math

import pytest

from benchmarks.run import SIZES, format_table, main, run


def test_tiny_benchmark_runs_and_agrees(capsys):
    reports = run("tiny")
    assert [r.model for r in reports] == list(SIZES["tiny"]["models"])
    for rep in reports:
        assert [r.work.split()[0].rstrip(",") for r in rep.rows] == ["generate", "AtP", "exact", "IG", "self-repair"]
        for r in rep.rows:
            for value in (r.seed_wall, r.mech_wall, r.seed_cpu, r.mech_cpu, r.ratio_wall):
                assert math.isfinite(value) and value > 0, (r.work, value)
            assert r.max_diff <= 1e-3 * max(r.scale, 1e-6), r.work  # run() raises first; this restates it
        assert math.isfinite(rep.atp_ratio) and rep.atp_ratio > 0
    out = capsys.readouterr().out
    assert "seed / mechlab" in out and all(r.model in out for r in reports)
    assert format_table(reports).count("\n") == 1 + sum(len(r.rows) for r in reports) + len(reports)


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        run("huge")
    with pytest.raises(SystemExit):
        main(["--size", "huge"])
