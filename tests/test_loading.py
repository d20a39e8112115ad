import pytest
import torch

from mechlab.core.loading import ModelUnavailableError, course_model, load_model, resolve_model_name


def test_tiny_families_have_the_promised_architectures(gpt2_like, gemma_like):
    assert gpt2_like.cfg.normalization_type.startswith("LN")
    assert gpt2_like.cfg.positional_embedding_type == "standard"
    assert gemma_like.cfg.uses_rms_norm and gemma_like.cfg.positional_embedding_type == "rotary"
    assert gemma_like.cfg.n_key_value_heads == 1 < gemma_like.cfg.n_heads


def test_random_init_is_seeded():
    a = load_model("tiny-gpt2", seed=3, verbose=False)
    b = load_model("tiny-gpt2", seed=3, verbose=False)
    c = load_model("tiny-gpt2", seed=4, verbose=False)
    toks = a.to_tokens("seeded")
    with torch.no_grad():
        la, lb, lc = a(toks), b(toks), c(toks)
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)


def test_load_prints_what_it_loaded(capsys):
    model = load_model("tiny-gemma", verbose=True)
    out = capsys.readouterr().out
    assert "tiny-gemma" in out and "random init" in out and "no folding" in out
    assert model.mechlab_info.name == "tiny-gemma"


def test_offline_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="organism"):
        load_model("gpt2", verbose=False)


def test_gated_model_without_token_is_a_value_error(monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("mechlab.core.loading.hf_token", lambda: None)
    with pytest.raises(ValueError, match="gated model.*HF_TOKEN"):
        load_model("google/gemma-2b", verbose=False)


def test_bad_device_and_dtype_are_value_errors():
    with pytest.raises(ValueError, match="device"):
        load_model("tiny-gpt2", device="tpu", verbose=False)
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-gpt2", dtype="float8", verbose=False)


def test_course_model_override_is_printed(monkeypatch, capsys):
    monkeypatch.setenv("MECHLAB_MODEL", "tiny-gpt2")
    model = course_model("gpt2", verbose=True)
    out = capsys.readouterr().out
    assert "overrides" in out and "'gpt2'" in out and "tiny-gpt2" in out
    assert model.mechlab_info.requested == "tiny-gpt2"


def test_offline_resolves_to_a_loadable_model():
    assert resolve_model_name("offline") in {"organism", "tiny-gpt2"}
    assert resolve_model_name("gpt2") == "gpt2"
