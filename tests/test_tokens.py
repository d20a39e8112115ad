import pytest
import torch

from mechlab.core.activations import parse_head
from mechlab.core.results import Labelled
from mechlab.core.tokens import answer_token_ids, clean_corrupted_tokens, logit_diff, token_log_probs


def test_multi_token_answer_is_refused_with_its_pieces(gpt2_like):
    ids = answer_token_ids(gpt2_like, ["a", "b"])
    assert ids.shape == (2,)
    word = "zqxj"   # no merge covers it: the tiny tokenizer splits it into its letters
    pieces = gpt2_like.to_str_tokens(word, prepend_bos=False)
    assert len(pieces) > 1, f"{word!r} became one token {pieces}; pick a word this tokenizer splits"
    with pytest.raises(ValueError, match="single-token answer") as err:
        answer_token_ids(gpt2_like, [word])
    assert f"is {len(pieces)} tokens {pieces}" in str(err.value), str(err.value)   # the pieces, shown


def test_different_lengths_show_both_tokenizations(gpt2_like):
    with pytest.raises(ValueError, match="clean is .* tokens but corrupted is") as err:
        clean_corrupted_tokens(gpt2_like, ["ab cd"], ["ab cde"])
    assert "clean:" in str(err.value) and "corrupted:" in str(err.value)
    c, r = clean_corrupted_tokens(gpt2_like, ["ab cd"], ["ab ce"])
    assert c.shape == r.shape


def test_token_log_probs_matches_a_hand_computation():
    logits = torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5))
    lp = token_log_probs(logits, tokens)
    b, p = 1, 2
    expected = logits[b, p].log_softmax(-1)[tokens[b, p + 1]]
    assert torch.allclose(lp[b, p], expected)


def test_logit_diff_against_a_set_is_the_mean():
    logits = torch.arange(10.0).repeat(3, 2, 1)  # batch 3, pos 2
    d = logit_diff(logits, torch.tensor([9, 9, 9]), torch.tensor([[1, 3], [1, 3], [0, 2]]))
    assert torch.allclose(d, torch.tensor([7.0, 7.0, 8.0]))


def test_labelled_top_and_errors():
    r = Labelled(torch.tensor([0.1, -2.0, 0.7]), ["embed", "L0H0", "L0 mlp"], unit="logit diff")
    assert r.top(2) == [("L0H0", -2.0), ("L0 mlp", pytest.approx(0.7))]
    with pytest.raises(ValueError, match="unknown label"):
        r["L9H9"]
    with pytest.raises(ValueError, match="labels"):
        Labelled(torch.zeros(2), ["a"])


def test_parse_head_refuses_unknown_heads():
    assert parse_head("L1H3", 2, 4) == (1, 3) == parse_head("1.3", 2, 4)
    with pytest.raises(ValueError, match="does not exist"):
        parse_head("L2H0", 2, 4)
