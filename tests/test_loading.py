import pytest
import torch

from mechlab.core.loading import ModelUnavailableError, course_model, load_model, organism_available, resolve_model_name


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


@pytest.mark.skipif(not organism_available(), reason="needs the shipped organism checkpoint")
def test_a_loaded_model_does_not_change_when_its_checkpoint_file_is_rewritten_in_place(tmp_path):
    """safetensors memory-maps the checkpoint; before the fix, rewriting the file's bytes in place (cp over it,
    save_file to the same path) changed all 58 weights of a model already loaded from it, between two cells."""
    import shutil

    from mechlab.core.loading import ORGANISM_CHECKPOINT

    folder = tmp_path / "ckpt"
    shutil.copytree(ORGANISM_CHECKPOINT, folder)
    model = load_model(str(folder), verbose=False)
    tokens = torch.tensor([[0, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        before = model(tokens).clone()
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    for i in range(8 + header + 16, len(data) - 16, 97):  # flip bits in the tensor data, same file (same inode)
        data[i] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), weights[k])]
    assert not changed, f"{len(changed)} weights changed with the file: {changed[:3]}"
    with torch.no_grad():
        assert torch.equal(model(tokens), before)
    hf = model.original_model
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "tied embeddings must stay tied"
