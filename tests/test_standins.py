"""Stand-ins: random weights under real hub names, always marked and printed as STAND-IN."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechlab.checks.core import expect_learned
from mechlab.core.loading import STANDIN_KEY, load_model, standin_marked
from mechlab.models import standins

ROOT = Path(__file__).resolve().parents[1]


def test_gpt2_config_is_gpt2_smalls():
    c = standins.standin_config("gpt2")
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size) == (12, 12, 768, 1024, 50257)
    assert c.activation_function == "gelu_new" and c.layer_norm_epsilon == 1e-5 and getattr(c, STANDIN_KEY)


def test_gemma_config_has_the_family_traits():
    c = standins.standin_config("google/gemma-2b")
    assert c.num_key_value_heads == 1 < c.num_attention_heads and c.model_type == "gemma"
    assert getattr(c, STANDIN_KEY)
    with pytest.raises(ValueError, match="no stand-in"):
        standins.standin_config("gpt2-xl")


@pytest.fixture(scope="module")
def gemma_hub(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin")
    return standins.build_standins(out, ("google/gemma-2b",))


def test_snapshot_is_marked_and_loads_as_standin(gemma_hub, capsys):
    snap = standins.snapshot_dir(gemma_hub, "google/gemma-2b")
    assert json.loads((snap / "config.json").read_text())[STANDIN_KEY] is True
    assert (snap.parents[1] / "refs" / "main").read_text() == snap.name
    organism = ROOT / "mechlab" / "models" / "organism" / "checkpoint"
    assert standin_marked(str(snap)) and not standin_marked(str(organism))
    capsys.readouterr()
    model = load_model(str(snap))
    out = capsys.readouterr().out
    assert model.mechlab_info.standin and "STAND-IN" in out and "STAND-IN" in str(model.mechlab_info)
    assert model.cfg.n_key_value_heads == 1 and model.cfg.positional_embedding_type == "rotary"
    assert model.to_tokens("Hullo, my name is").tolist() == [[50256, 39, 724, 78, 11, 616, 1438, 318]]
    for dtype in (torch.float32, torch.bfloat16):
        m = load_model(str(snap), dtype=dtype, verbose=False)
        with torch.no_grad():
            logits = m(m.to_tokens("a short prompt"))
        assert logits.dtype == dtype and torch.isfinite(logits.float()).all()
    assert not expect_learned(model, "a learned behaviour", False, "skipped")  # skips instead of raising
    assert "skipped on a stand-in model: a learned behaviour" in capsys.readouterr().out


def test_rebuild_is_a_no_op_and_real_models_are_not_standins(gemma_hub):
    snap = standins.snapshot_dir(gemma_hub, "google/gemma-2b")
    before = (snap / "model.safetensors").stat().st_mtime_ns
    standins.build_standins(gemma_hub.parent, ("google/gemma-2b",))
    assert (snap / "model.safetensors").stat().st_mtime_ns == before
    assert not load_model("tiny-gpt2", verbose=False).mechlab_info.standin
    assert not load_model("organism", verbose=False).mechlab_info.standin


def test_hub_name_serves_the_standin_offline(gemma_hub):
    # a fresh process: the hub library reads HF_HUB_CACHE at import time
    env = {**os.environ, "HF_HUB_CACHE": str(gemma_hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MECHLAB_MODEL", None)
    code = ("from mechlab.core.loading import course_model\n"
            "m = course_model('google/gemma-2b')\n"
            "assert m.mechlab_info.name == 'google/gemma-2b' and m.mechlab_info.standin\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded google/gemma-2b [hub, mechlab stand-in" in done.stdout and "STAND-IN" in done.stdout
