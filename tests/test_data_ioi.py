"""IOI generator: determinism, template semantics, corruptions of equal token length, token positions."""

from __future__ import annotations

import pytest

from mechlab.data import ioi


@pytest.fixture(scope="module")
def tok():
    from mechlab.data.corpus import text_documents
    from mechlab.models.organism.tokenizer import train_tokenizer

    return train_tokenizer(text_documents(3000, seed=5), vocab_size=800, min_frequency=30)


def test_seeded_and_varied():
    a, b = ioi.make_ioi(200, seed=3), ioi.make_ioi(200, seed=3)
    assert a == b
    assert a != ioi.make_ioi(200, seed=4)
    assert {x.template for x in a} == set(range(len(ioi.TEMPLATES)))
    assert {x.order for x in a} == {"ABBA", "BABA"}


def test_semantics_from_the_text():
    for x in ioi.make_ioi(100, seed=0):
        names = [x.prompt[a:b] for a, b in (x.spans["io"], x.spans["s1"], x.spans["s2"])]
        assert names == [x.io, x.s, x.s]
        assert x.io != x.s and x.answer == x.io and x.wrong == x.s
        # the name that appears once is the answer; the repeated one is the subject
        words = x.prompt.replace(",", " ").replace(".", " ").split()
        assert words.count(x.io.strip()) == 1 and words.count(x.s.strip()) == 2
        first = min(x.spans["io"][0], x.spans["s1"][0])
        assert (first == x.spans["io"][0]) == (x.order == "ABBA")


def test_corruptions():
    clean = ioi.make_ioi(50, seed=1)
    abc = ioi.corrupt(clean, "abc", seed=0)
    flip = ioi.corrupt(clean, "flip")
    for c, a, f in zip(clean, abc, flip, strict=True):
        third = a.prompt[slice(*a.spans["s2"])]
        assert third not in (c.io, c.s) and (a.io, a.s) == (c.io, c.s)
        assert a.prompt.replace(third, c.s) == c.prompt
        assert (f.io, f.s) == (c.s, c.io) and f.order != c.order
        words = f.prompt.replace(",", " ").replace(".", " ").split()
        assert words.count(f.io.strip()) == 1 and words.count(f.s.strip()) == 2
    with pytest.raises(ValueError, match="kind"):
        ioi.corrupt(clean, "nonsense")
    with pytest.raises(ValueError, match="already corrupted"):
        ioi.corrupt(abc, "abc")


def test_batch_positions_and_lengths(tok):
    clean = ioi.make_ioi(40, seed=2)
    batch = ioi.ioi_batch(tok, clean)
    corrupted = ioi.ioi_batch(tok, ioi.corrupt(clean, "abc"))
    assert batch.tokens.shape == corrupted.tokens.shape
    assert (batch.end == corrupted.end).all()
    for i, x in enumerate(clean):
        ids = batch.tokens[i].tolist()
        assert ids[0] == tok.bos_token_id
        assert tok.decode([ids[int(batch.io_pos[i])]]) == x.io
        assert tok.decode([ids[int(batch.s1_pos[i])]]) == x.s
        assert tok.decode([ids[int(batch.s2_pos[i])]]) == x.s
        assert tok.decode(ids[1:int(batch.end[i]) + 1]) == x.prompt
        assert tok.decode([int(batch.answer[i])]) == x.io and tok.decode([int(batch.wrong[i])]) == x.s


def test_multi_token_name_is_refused(tok):
    x = ioi.make_ioi(20, seed=0, names=("Mary", "John", "Zxqvbnmwert"))
    with pytest.raises(ValueError, match="single-token"):
        ioi.ioi_batch(tok, x)
    with pytest.raises(ValueError, match="templates"):
        ioi.make_ioi(2, templates=[99])
