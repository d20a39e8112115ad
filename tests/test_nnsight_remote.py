"""NDIF routing without a network: no key or no network refuses before anything is traced; the key is never printed,
never written (nnsight's config files, os.environ) and reaches only the backend of the call; the install hint names
the extra. No test here opens a connection."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from mechlab.backends import nnsight_methods as nm
from mechlab.backends import nnsight_model
from mechlab.core.runs import logit_diff_metric

needs_nnsight = pytest.mark.skipif(not nnsight_model.nnsight_available(),
                                   reason="nnsight is not installed: pip install mechlab[nnsight]")
KEY = "mechlab-test-key-7f3a9c-not-a-real-key"


def test_missing_nnsight_names_the_extra(monkeypatch):
    monkeypatch.setattr(nnsight_model, "nnsight", None)
    with pytest.raises(ImportError, match=r"pip install mechlab\[nnsight\]"):
        nnsight_model.require_nnsight()
    with pytest.raises(ImportError, match=r"mechlab\[nnsight\]"):
        nnsight_model.trace_kwargs(object(), remote=True)


@pytest.fixture(scope="module")
def lm():
    if not nnsight_model.nnsight_available():
        pytest.skip("nnsight is not installed: pip install mechlab[nnsight]")
    from mechlab.core.loading import load_model

    return nnsight_model.twin_of_bridge(load_model("tiny-gpt2", seed=1, verbose=False))


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv(nnsight_model.NDIF_KEY_ENV, raising=False)
    monkeypatch.setattr(nnsight_model, "userdata", None)


@pytest.fixture
def no_connections(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("tests open no connections")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def untraceable(lm, monkeypatch):
    """Tracing fails the test: the refusals must come first."""
    def trace(self, *args, **kwargs):
        raise AssertionError("traced although the call should have been refused")

    monkeypatch.setattr(type(lm), "trace", trace)


def _inputs():
    tokens = torch.tensor([[1, 2, 3, 4]])
    return tokens, torch.tensor([5]), torch.tensor([6])


@needs_nnsight
def test_no_key_refuses_before_tracing(hub_named_lm, no_key, no_connections, monkeypatch):
    lm = hub_named_lm

    def trace(self, *args, **kwargs):
        raise AssertionError("traced although the call should have been refused")

    monkeypatch.setattr(type(lm), "trace", trace)
    tokens, good, bad = _inputs()
    with pytest.raises(ValueError, match="NDIF_API_KEY") as err:
        nm.nnsight_logit_diff_dla(lm, tokens, good, bad, remote=True)
    assert "Nothing was sent" in str(err.value)
    with pytest.raises(ValueError, match="NDIF_API_KEY"):
        nm.nnsight_attribution_patching(lm, tokens, tokens, logit_diff_metric(good, bad), remote=True)


@needs_nnsight
def test_no_network_refuses_before_tracing_and_hides_the_key(hub_named_lm, monkeypatch, no_connections, capsys):
    lm = hub_named_lm

    def trace(self, *args, **kwargs):
        raise AssertionError("traced although the call should have been refused")

    monkeypatch.setattr(type(lm), "trace", trace)
    monkeypatch.setenv(nnsight_model.NDIF_KEY_ENV, KEY)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MECHLAB_OFFLINE", raising=False)
    tokens, good, bad = _inputs()
    with pytest.raises(nnsight_model.NDIFUnavailableError, match="cannot be reached") as err:
        nm.nnsight_activation_patching(lm, tokens, tokens, logit_diff_metric(good, bad), kind="z", remote=True)
    assert KEY not in str(err.value)
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


@needs_nnsight
def test_offline_mode_never_probes(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("probed the network in offline mode")

    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert nnsight_model.ndif_reachable() is False


def _nnsight_config_files() -> list[Path]:
    import nnsight

    files = [Path(nnsight.__file__).parent / "config.yaml"]
    base = os.environ.get("XDG_CONFIG_HOME", "~/.config")
    files.append(Path(os.environ.get("NNSIGHT_CONFIG") or Path(base).expanduser() / "nnsight" / "config.yaml"))
    return [f.expanduser() for f in files]


@pytest.fixture(scope="module")
def hub_named_lm():
    """A tiny model that says it is a hub model (what remote_language_model builds, without the hub)."""
    if not nnsight_model.nnsight_available():
        pytest.skip("nnsight is not installed: pip install mechlab[nnsight]")
    from transformers import AutoModelForCausalLM

    from mechlab.core.loading import load_model

    bridge = load_model("tiny-gpt2", seed=1, verbose=False)
    hf = AutoModelForCausalLM.from_config(bridge.original_model.config)
    hf.config._name_or_path = hf.name_or_path = "openai-community/gpt2"
    return nnsight_model.language_model(hf, bridge.tokenizer)


@needs_nnsight
def test_a_model_no_server_has_is_refused(lm, monkeypatch, untraceable):
    monkeypatch.setenv(nnsight_model.NDIF_KEY_ENV, KEY)
    tokens, good, bad = _inputs()
    with pytest.raises(ValueError, match="hub id") as err:
        nm.nnsight_logit_diff_dla(lm, tokens, good, bad, remote=True)
    assert KEY not in str(err.value)


@needs_nnsight
def test_the_key_goes_to_the_backend_only(hub_named_lm, no_key, monkeypatch, capsys):
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend

    lm = hub_named_lm

    monkeypatch.setattr(nnsight_model, "ndif_reachable", lambda host=None, timeout=2.0: True)
    seen = {}

    class Sent(Exception):
        pass

    def trace(self, *args, **kwargs):  # stands in for the request: nothing leaves the machine
        seen.update(kwargs)
        raise Sent()

    monkeypatch.setattr(type(lm), "trace", trace)
    model_key = 'nnsight.modeling.transformers.TransformersModel:{"repo_id": "openai-community/gpt2"}'
    monkeypatch.setattr(type(lm), "to_model_key", lambda self: model_key)  # nnsight asks the hub for a revision
    before_config = CONFIG.API.APIKEY
    before_files = {f: f.read_text() if f.is_file() else None for f in _nnsight_config_files()}
    tokens, good, bad = _inputs()
    with pytest.raises(Sent):
        nm.nnsight_logit_diff_dla(lm, tokens, good, bad, remote=True, api_key=KEY)
    backend = seen["backend"]
    assert isinstance(backend, RemoteBackend) and backend.api_key == KEY
    assert backend.model_key == model_key
    assert KEY not in os.environ.values()
    assert CONFIG.API.APIKEY == before_config
    for f, text in before_files.items():
        now = f.read_text() if f.is_file() else None
        assert now == text and (now is None or KEY not in now), f"{f} changed"
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


@needs_nnsight
def test_key_sources(monkeypatch, no_key):
    assert nnsight_model.ndif_api_key() is None
    monkeypatch.setenv(nnsight_model.NDIF_KEY_ENV, KEY)
    assert nnsight_model.ndif_api_key() == KEY
    monkeypatch.delenv(nnsight_model.NDIF_KEY_ENV)

    class Secrets:  # what google.colab.userdata offers
        @staticmethod
        def get(name):
            assert name == "NDIF_API_KEY"
            return KEY

    monkeypatch.setattr(nnsight_model, "userdata", Secrets)
    assert nnsight_model.ndif_api_key() == KEY


@needs_nnsight
def test_remote_modes(lm):
    assert nnsight_model.trace_kwargs(lm, False) == {}
    assert nnsight_model.trace_kwargs(lm, "local") == {"remote": "local"}
    with pytest.raises(ValueError, match="expected False"):
        nnsight_model.trace_kwargs(lm, "yes")


def test_the_offline_description_says_what_travels():
    text = nnsight_model.describe_remote_call("meta-llama/Llama-3.1-70B", "DLA", 8, 20,
                                              ["[component, batch] contributions"])
    assert "meta-llama/Llama-3.1-70B" in text and "[8, 20]" in text and "no weights travel" in text
    assert "[component, batch] contributions" in text


@needs_nnsight
def test_the_remote_path_dry_run_gives_the_local_numbers(lm):
    """remote="local": nnsight serialises each trace as for NDIF (mechlab's modules by value), deserialises and runs
    it here; the results must equal the in-process run's."""
    clean = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    corrupted = clean.clone()
    corrupted[:, 2] = torch.tensor([11, 12])
    good, bad = torch.tensor([5, 6]), torch.tensor([8, 9])
    metric = logit_diff_metric(good, bad)
    for remote in (False, "local"):
        out = (nm.nnsight_logit_diff_dla(lm, clean, good, bad, remote=remote).values,
               nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", remote=remote,
                                              progress=False).values,
               nm.nnsight_attribution_patching(lm, clean, corrupted, metric, kinds=["mlp_out"],
                                               remote=remote)["mlp_out"].values,
               nm.nnsight_integrated_gradients(lm, clean, corrupted, metric, kind="resid_pre", steps=3,
                                               remote=remote, progress=False).values)
        if remote is False:
            here = out
    for a, b in zip(here, out, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
