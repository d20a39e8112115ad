"""GPT-2's tokenizer rebuilt from openai-whisper's rank file (PyPI): real GPT-2 ids, offline once fetched."""

import base64
import subprocess

import pytest

from mechlab.core import gpt2_tokenizer as g2
from mechlab.core.loading import ModelUnavailableError


@pytest.fixture(scope="module")
def tok():
    return g2.gpt2_tokenizer()  # fetches openai-whisper's sdist from PyPI into the mechlab cache the first time


def test_the_seed_prompt_has_gpt2s_ids(tok):
    assert tok("Hullo, my name is")["input_ids"] == [39, 724, 78, 11, 616, 1438, 318]
    assert tok(" John")["input_ids"] == [1757]
    assert tok.convert_ids_to_tokens([39, 724, 78]) == ["H", "ull", "o"]
    assert tok.bos_token_id == tok.eos_token_id == g2.EOT_ID == 50256 and len(tok) == 50257
    assert tok("<|endoftext|>Hullo")["input_ids"] == [50256, 39, 724, 78]


@pytest.mark.parametrize("text", ["Hello world!", "naïve café, 東京 and 🤗 emoji", "  two  spaces\n\n\ttab",
                                  "Quomatarus was a wumpus. Every wumpus is a zumpus."])
def test_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < 50257 for i in ids)


def test_known_ids(tok):
    assert tok("Hello world!")["input_ids"] == [15496, 995, 0]  # GPT-2's published ids
    assert tok("\n")["input_ids"] == [198] and tok(" the")["input_ids"] == [262]


def test_merges_file_has_gpt2s_50000_merges():
    folder = g2.gpt2_tokenizer_dir()
    lines = (folder / "merges.txt").read_text().splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 50001
    assert lines[1:4] == ["Ġ t", "Ġ a", "h e"]  # GPT-2's first merges: " t", " a", "he" (ranks 256-258)
    assert (folder / "SOURCE.txt").read_text().startswith("Rebuilt by mechlab")


def test_bytes_to_unicode_is_a_bijection_onto_printables():
    table = g2.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_merges_follow_from_the_ranks_on_a_toy_table():
    # ranks: bytes a,b,c then "ab"(3), "abc"(4), "bc"(5), "abcbc"(6): "abcbc" must split as "abc" + "bc"
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"bc": 5, b"abcbc": 6}
    assert g2.split_by_lower_ranks(b"abc", ranks) == (b"ab", b"c")
    assert g2.split_by_lower_ranks(b"abcbc", ranks) == (b"abc", b"bc")
    vocab, merges = g2.vocab_and_merges(ranks)
    assert merges == [("a", "b"), ("ab", "c"), ("b", "c"), ("abc", "bc")] and vocab["<|endoftext|>"] == 7


def test_a_table_that_is_not_bpe_is_refused():
    with pytest.raises(ValueError, match="lower-ranked"):
        g2.split_by_lower_ranks(b"xyz", {b"x": 0, b"y": 1, b"z": 2, b"xyz": 3})
    bad = "\n".join(f"{base64.b64encode(t).decode()} {r}" for t, r in [(b"a", 0), (b"b", 2)])
    with pytest.raises(ValueError, match="gaps"):
        g2.parse_ranks(bad)


def test_missing_source_without_fetch_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(g2, "_ranks_from_installed_whisper", lambda: None)
    with pytest.raises(ModelUnavailableError, match="python -m mechlab.core.gpt2_tokenizer"):
        g2.gpt2_tokenizer_dir(fetch=False)


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(g2, "_ranks_from_installed_whisper", lambda: None)
    calls = []

    def refuse(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(g2.subprocess, "run", refuse)
    with pytest.raises(ModelUnavailableError, match="Could not download openai-whisper==20250625.*No matching"):
        g2.gpt2_tokenizer_dir(fetch=True, quiet=True)
    assert calls and all(c[c.index("download") + 1:][:1] == ["--no-deps"] for c in calls)
    assert all("openai-whisper==20250625" in c for c in calls)
