"""mechlab.data.text: the OpenWebText source against a stub that behaves like `datasets` 4, and the offline path."""

from __future__ import annotations

import pytest
import torch

from mechlab.data import text
from mechlab.data.text import OWT_NAME, text_tokens

SCRIPT_DATASETS = {"stas/openwebtext-10k", "openwebtext"}  # hub datasets that ship a loading script


def _documents(n: int) -> list[dict]:
    """Rows as a parquet text dataset yields them: every third one too short to give a long prompt."""
    short = "Short."
    return [{"text": short if i % 3 == 2 else f"Document {i} talks about the weather in town number {i} " * 8}
            for i in range(n)]


class Datasets4Stub:
    """``datasets.load_dataset`` as `datasets` 4 behaves: script datasets refused, parquet ones stream rows."""

    def __init__(self, parquet: dict[str, list[dict]]):
        self.parquet = parquet
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, path: str, name=None, *, split=None, streaming=False, **kwargs):
        self.calls.append((path, {"split": split, "streaming": streaming, **kwargs}))
        if "trust_remote_code" in kwargs:
            raise TypeError("load_dataset() got an unexpected keyword argument 'trust_remote_code'")
        if path in SCRIPT_DATASETS:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {path.split('/')[-1]}.py")
        if path not in self.parquet:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        if split != "train":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'train\'].')
        rows = self.parquet[path]
        return iter(rows) if streaming else list(rows)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(text, "hub_reachable", lambda timeout=2.0: True)


def test_the_stub_refuses_the_seeds_script_dataset():
    stub = Datasets4Stub({OWT_NAME: _documents(3)})
    with pytest.raises(RuntimeError, match="Dataset scripts are no longer supported"):
        stub("stas/openwebtext-10k", split="train")


def test_openwebtext_loads_through_datasets_4(gpt2_like, online, monkeypatch):
    docs = _documents(30)
    stub = Datasets4Stub({OWT_NAME: docs})
    monkeypatch.setattr(text, "load_dataset", stub)
    clean, resample = text_tokens(gpt2_like, n_prompts=4, n_pos=12, source="openwebtext")
    assert clean.shape == resample.shape == (4, 12)
    assert stub.calls[0][0] == OWT_NAME and stub.calls[0][1]["streaming"], "streamed, from the parquet dataset"
    # the first 8 long documents, in order, cut to 12 tokens with BOS first (an independent tokenization)
    long_docs = [d["text"] for d in docs if d["text"] != "Short."][:8]
    bos = gpt2_like.tokenizer.bos_token_id
    want = torch.tensor([[bos] + gpt2_like.tokenizer.encode(t, add_special_tokens=False)[:11] for t in long_docs])
    assert torch.equal(torch.cat([clean, resample]).cpu(), want)
    assert not any(torch.equal(c, r) for c in clean for r in resample), "clean and resample texts are disjoint"


def test_auto_picks_openwebtext_when_the_hub_answers(gpt2_like, online, monkeypatch):
    monkeypatch.setattr(text, "load_dataset", Datasets4Stub({OWT_NAME: _documents(30)}))
    auto = text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="auto")
    owt = text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="openwebtext")
    organism = text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="organism")
    assert torch.equal(auto[0], owt[0]) and not torch.equal(auto[0], organism[0])


def test_too_few_long_documents_is_one_clear_error(gpt2_like, online, monkeypatch):
    monkeypatch.setattr(text, "load_dataset", Datasets4Stub({OWT_NAME: _documents(6)}))  # 4 long ones
    with pytest.raises(ValueError, match="has only 4 documents of at least 12 tokens"):
        text_tokens(gpt2_like, n_prompts=3, n_pos=12, source="openwebtext")


def test_a_changed_column_is_named(gpt2_like, online, monkeypatch):
    monkeypatch.setattr(text, "load_dataset", Datasets4Stub({OWT_NAME: [{"content": "x"}]}))
    with pytest.raises(ValueError, match="not 'text'"):
        text_tokens(gpt2_like, n_prompts=1, n_pos=4, source="openwebtext")


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_openwebtext_fails_at_once_and_auto_falls_back(gpt2_like, online, monkeypatch, var):
    stub = Datasets4Stub({OWT_NAME: _documents(30)})
    monkeypatch.setattr(text, "load_dataset", stub)
    monkeypatch.setenv(var, "1")
    if var == "HF_HUB_OFFLINE":  # the real probe answers False at once when HF_HUB_OFFLINE is set
        monkeypatch.setattr(text, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ValueError, match="source='organism'"):
        text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="openwebtext")
    auto = text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="auto")
    assert torch.equal(auto[0], text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="organism")[0])
    assert stub.calls == [], "offline, datasets is never asked"


def test_the_real_probe_says_offline_under_hf_hub_offline(gpt2_like, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not reachable"):
        text_tokens(gpt2_like, n_prompts=2, n_pos=10, source="openwebtext")


def test_bad_arguments(gpt2_like):
    with pytest.raises(ValueError, match="expected one of"):
        text_tokens(gpt2_like, source="wikipedia")
    with pytest.raises(ValueError, match="at least 1 prompt"):
        text_tokens(gpt2_like, n_prompts=0, source="organism")
