"""mechlab.course.sizes: the tier follows the model and the device; cuts are applied and printed."""

from __future__ import annotations

import dataclasses
import types

import pytest

from mechlab.core.loading import ModelInfo
from mechlab.course.sizes import SIZES_ENV, course_sizes, size_tier

FULL = {"n_prompts": 16, "ig_steps": 16, "n_pos": 100}
CPU = {"n_prompts": 4, "ig_steps": 8}
CI = {"n_prompts": 2}


def fake(source: str, device: str = "cpu", standin: bool = False, name: str = "gpt2"):
    info = ModelInfo(name=name, requested=name, source=source, device=device, dtype="float32", weights="raw",
                     standin=standin)
    return types.SimpleNamespace(mechlab_info=info)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(SIZES_ENV, raising=False)


def test_the_organism_and_tiny_models_keep_the_full_sizes(monkeypatch, gpt2_like):
    monkeypatch.setenv(SIZES_ENV, "ci")  # even in CI: the organism's committed outputs must not change
    for model in (fake("shipped organism", name="organism"), gpt2_like):
        size = course_sizes(model, FULL, cpu=CPU, ci=CI, verbose=False)
        assert size.tier == "full" and dict(size) == FULL and not size.is_cut


def test_a_real_size_model_on_the_cpu_gets_the_cpu_cuts(capsys):
    size = course_sizes(fake("hub"), FULL, cpu=CPU, ci=CI)
    assert size.tier == "cpu" and dict(size) == {"n_prompts": 4, "ig_steps": 8, "n_pos": 100}
    assert size.cut == {"n_prompts": (16, 4), "ig_steps": (16, 8)}
    out = capsys.readouterr().out
    assert "n_prompts 16 -> 4" in out and "ig_steps 16 -> 8" in out and "n_pos" not in out
    assert "GPU runtime runs the full size" in out and "gpt2 on the CPU" in out


def test_on_a_gpu_the_full_sizes(capsys):
    size = course_sizes(fake("hub", device="cuda"), FULL, cpu=CPU, ci=CI)
    assert size.tier == "full" and dict(size) == FULL
    assert "full (gpt2 on a GPU)" in capsys.readouterr().out


def test_ci_cuts_go_on_top_of_the_cpu_cuts_for_a_stand_in(monkeypatch, capsys):
    monkeypatch.setenv(SIZES_ENV, "ci")
    size = course_sizes(fake("hub, mechlab stand-in", standin=True), FULL, cpu=CPU, ci=CI)
    assert size.tier == "ci" and dict(size) == {"n_prompts": 2, "ig_steps": 8, "n_pos": 100}
    assert "gpt2 (stand-in)" in capsys.readouterr().out


def test_the_env_var_can_force_full_or_cpu(monkeypatch):
    monkeypatch.setenv(SIZES_ENV, "full")
    assert dict(course_sizes(fake("hub"), FULL, cpu=CPU, verbose=False)) == FULL
    monkeypatch.setenv(SIZES_ENV, "cpu")
    assert course_sizes(fake("hub", device="cuda"), FULL, cpu=CPU, verbose=False)["n_prompts"] == 4


def test_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="that full does not have"):
        course_sizes(fake("hub"), FULL, cpu={"n_promts": 4})
    with pytest.raises(ValueError, match="positive int"):
        course_sizes(fake("hub"), FULL, ci={"n_prompts": 0})
    with pytest.raises(ValueError, match="non-empty mapping"):
        course_sizes(fake("hub"), {"n": 1.5})
    with pytest.raises(ValueError, match="mechlab_info"):
        size_tier(object())
    monkeypatch.setenv(SIZES_ENV, "tiny")
    with pytest.raises(ValueError, match="expected one of"):
        size_tier(fake("hub"))
    monkeypatch.delenv(SIZES_ENV)
    size = course_sizes(fake("shipped organism"), FULL, verbose=False)
    with pytest.raises(KeyError, match="this notebook's sizes are"):
        size["steps"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        size.tier = "cpu"
