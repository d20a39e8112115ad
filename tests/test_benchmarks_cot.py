"""Smoke run of benchmarks.cot at tiny size: both measurements run and report finite numbers."""

from __future__ import annotations

import math

import pytest

from benchmarks.cot import SEED_S4_SECONDS, main, measure


def test_tiny_cot_benchmark_runs(capsys):
    row = measure("tiny")
    for key in ("s4_generate_s", "s4_total_s", "s4_speedup_vs_seed", "atp_s", "atp_peak_gib"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["s4_total_s"] >= row["s4_generate_s"]
    assert row["s4_speedup_vs_seed"] == pytest.approx(SEED_S4_SECONDS / row["s4_total_s"])
    main(["--size", "tiny"])
    out = capsys.readouterr().out
    assert "S4 generate" in out and "AtP" in out


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        measure("huge")
