"""mechlab.core.preflight: each case simulated (no network, no GPU here): token, licence, offline, GPU sizes."""

from __future__ import annotations

import types

import httpx
import pytest

from mechlab.core import loading, preflight
from mechlab.core.preflight import GpuInfo, Plan

OFFLINE = loading.resolve_model_name("offline")
TRUE_HF_TOKEN = loading.hf_token  # kept before any test replaces it
T4 = GpuInfo(name="Tesla T4", total_gib=14.7, native_bf16=False)
A100 = GpuInfo(name="NVIDIA A100-SXM4-40GB", total_gib=39.4, native_bf16=True)
SMALL = GpuInfo(name="NVIDIA GeForce GTX 1650", total_gib=3.8, native_bf16=False)


def _http_error(cls, status: int):
    request = httpx.Request("GET", "https://huggingface.co/api/models/google/gemma-2b/auth-check")
    return cls(f"{status} Client Error", response=httpx.Response(status, request=request))


@pytest.fixture
def hub(monkeypatch):
    """A reachable hub, no local copy, no token and no GPU unless a test says otherwise; records hub calls."""
    calls = []
    state = types.SimpleNamespace(calls=calls, error=None)

    def fake_auth_check(repo_id, *, token=None, **kw):
        calls.append((repo_id, token))
        if state.error is not None:
            raise state.error

    monkeypatch.setattr(preflight, "auth_check", fake_auth_check)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(loading, "in_local_hf_cache", lambda name: False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loading, "hf_token", lambda: None)
    monkeypatch.setattr(preflight, "gpu_info", lambda: None)
    return state


def test_no_token_falls_back_with_the_licence_url(hub, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    plan = preflight.preflight("google/gemma-2b")
    assert plan.fallback and plan.model == OFFLINE and plan.dtype == "float32"
    text = capsys.readouterr().out
    assert "https://huggingface.co/google/gemma-2b" in text and "HF_TOKEN" in text and preflight.TOKEN_URL in text
    assert f"falling back to {OFFLINE!r}" in text
    assert hub.calls == []  # nothing to ask the hub without a token


def test_licence_not_accepted_gives_the_url(hub, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    monkeypatch.setattr(loading, "hf_token", lambda: "hf_env_token")
    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    hub.error = _http_error(GatedRepoError, 403)
    plan = preflight.preflight("google/gemma-2b", verbose=False)
    assert hub.calls == [("google/gemma-2b", "hf_env_token")]
    assert plan.fallback and plan.model == OFFLINE
    said = "\n".join(plan.reasons)
    assert "licence of google/gemma-2b is not accepted" in said and "https://huggingface.co/google/gemma-2b" in said
    assert "HF_TOKEN environment variable" in said


def test_unknown_repo_and_hub_errors_fall_back(hub, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    hub.error = _http_error(RepositoryNotFoundError, 404)
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert plan.fallback and "knows no model" in "\n".join(plan.reasons)
    hub.error = _http_error(HfHubHTTPError, 500)
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert plan.fallback and "could not be asked" in "\n".join(plan.reasons)


def test_token_from_colab_secrets_reaches_the_hub_check(hub, monkeypatch):
    monkeypatch.setattr(loading, "hf_token", TRUE_HF_TOKEN)  # the real lookup, with a fake Colab
    secrets = {"HF_TOKEN": "hf_colab_secret"}
    monkeypatch.setattr(loading, "userdata", types.SimpleNamespace(get=lambda key: secrets[key]))
    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    plan = preflight.preflight("google/gemma-2b", verbose=False)
    assert hub.calls == [("google/gemma-2b", "hf_colab_secret")]
    assert not plan.fallback and plan.model == "google/gemma-2b"
    assert "Colab secrets" in "\n".join(plan.reasons)



def test_large_gpu_gets_float32(hub, monkeypatch):
    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert (plan.model, plan.device, plan.dtype, plan.fallback) == ("google/gemma-2b", "cuda", "float32", False)


def test_t4_gets_bfloat16(hub, monkeypatch):
    monkeypatch.setattr(preflight, "gpu_info", lambda: T4)
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert (plan.model, plan.device, plan.dtype, plan.fallback) == ("google/gemma-2b", "cuda", "bfloat16", False)
    said = "\n".join(plan.reasons)
    assert "no native bf16" in said and "float16" in said


def test_dtype_thresholds_by_hand():
    # Gemma-2b: 2.51e9 params; fp32 weights 2.51e9 * 4 B = 9.35 GiB, x 2.5 headroom = 23.4 GiB;
    # bf16 weights 4.67 GiB, x 1.5 = 7.0 GiB
    assert preflight.needed_gib(2.51e9, "float32") == pytest.approx(2.51e9 * 4 * 2.5 / 2**30)
    assert preflight.needed_gib(2.51e9, "float32") == pytest.approx(23.37, abs=0.01)
    assert preflight.needed_gib(2.51e9, "bfloat16") == pytest.approx(7.01, abs=0.01)
    l4 = GpuInfo("NVIDIA L4", 22.0, True)
    assert preflight.advise_dtype(2.51e9, l4)[0] == "bfloat16"  # 22 GiB < 23.4 GiB
    assert preflight.advise_dtype(2.51e9, GpuInfo("x", 23.5, True))[0] == "float32"
    assert preflight.advise_dtype(2.51e9, GpuInfo("x", 6.9, True))[0] is None
    assert preflight.advise_dtype(2.51e9, GpuInfo("x", 7.1, True))[0] == "bfloat16"


def test_small_gpu_falls_back(hub, monkeypatch):
    monkeypatch.setattr(preflight, "gpu_info", lambda: SMALL)
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert plan.fallback and plan.model == OFFLINE
    assert "even bfloat16 needs ~7.0 GiB" in "\n".join(plan.reasons)


def test_no_gpu_falls_back_for_gemma_but_not_for_gpt2(hub):
    plan = preflight.preflight("google/gemma-2b", token="hf_x", verbose=False)
    assert plan.fallback and "no CUDA GPU" in "\n".join(plan.reasons)
    plan = preflight.preflight("gpt2", verbose=False)
    assert (plan.model, plan.device, plan.dtype, plan.fallback) == ("gpt2", "cpu", "float32", False)
    assert hub.calls == [("google/gemma-2b", "hf_x")]  # gpt2 is not gated: no licence to check


def test_offline_falls_back_and_says_why(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real probe answers False at once
    monkeypatch.setattr(loading, "in_local_hf_cache", lambda name: False)
    monkeypatch.setattr(preflight, "gpu_info", lambda: A100)
    plan = preflight.preflight("google/gemma-2b", token="hf_x")
    assert plan.fallback and plan.model == OFFLINE
    out = capsys.readouterr().out
    assert out.startswith(f"mechlab preflight: {OFFLINE} on ") and "hub is unreachable" in out


def test_a_local_copy_needs_no_hub(hub, monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(loading, "in_local_hf_cache", lambda name: True)
    monkeypatch.setattr(preflight, "gpu_info", lambda: T4)
    plan = preflight.preflight("google/gemma-2b", verbose=False)
    assert not plan.fallback and plan.dtype == "bfloat16" and hub.calls == []


def test_plan_prints_its_choice_and_reasons():
    plan = Plan("google/gemma-2b", "organism", "cpu", "float32", True, ("a reason", "another"))
    assert str(plan).splitlines() == ["mechlab preflight: organism on cpu in float32 (instead of google/gemma-2b)",
                                      "  - a reason", "  - another"]


def test_refuses_unknown_size():
    with pytest.raises(ValueError, match="n_params"):
        preflight.preflight("someone/unknown-model", verbose=False)


@pytest.fixture
def standin_cache(hub, monkeypatch, tmp_path):
    """A cached stand-in of google/gemma-2b: marked in its config, with a small safetensors file of its own."""
    import torch
    from safetensors.torch import save_file

    tensors = {"embed.weight": torch.zeros(300, 16), "blocks.0.w": torch.zeros(16, 48), "norm.weight": torch.ones(16)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    monkeypatch.setattr(loading, "standin_marked", lambda name: name == "google/gemma-2b")
    monkeypatch.setattr(loading, "in_local_hf_cache", lambda name: name == "google/gemma-2b")
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(preflight, "try_to_load_from_cache",
                        lambda name, filename: str(path) if filename == "model.safetensors" else None)
    monkeypatch.delenv(preflight.DTYPE_ENV, raising=False)
    return sum(t.numel() for t in tensors.values())


def test_a_cached_stand_in_runs_on_the_cpu_at_its_own_size(standin_cache, capsys):
    assert preflight.standin_params("google/gemma-2b") == standin_cache
    plan = preflight.preflight("google/gemma-2b")
    assert not plan.fallback and plan.model == "google/gemma-2b" and (plan.device, plan.dtype) == ("cpu", "float32")
    out = capsys.readouterr().out
    assert "mechlab stand-in" in out and "small enough" in out


def test_the_dtype_can_be_forced_for_ci(standin_cache, monkeypatch, capsys):
    monkeypatch.setenv(preflight.DTYPE_ENV, "bfloat16")
    plan = preflight.preflight("google/gemma-2b")
    assert plan.dtype == "bfloat16" and not plan.fallback
    assert "MECHLAB_DTYPE=bfloat16" in capsys.readouterr().out
    monkeypatch.setenv(preflight.DTYPE_ENV, "float16")
    with pytest.raises(ValueError, match="expected one of"):
        preflight.preflight("google/gemma-2b")


def test_no_token_on_a_t4_falls_back_and_never_raises(hub, monkeypatch, capsys):
    """Notebook 06's Gemma cell in Colab on a GPU runtime without a token: the reason is printed, nothing raises."""
    monkeypatch.setattr(preflight, "gpu_info", lambda: T4)
    plan = preflight.preflight("google/gemma-2b")
    assert plan.fallback and plan.model == OFFLINE
    assert "no Hugging Face token found" in capsys.readouterr().out
