"""Each unit-02 checker rejects the blank stub and plausible wrong answers (off-by-one diagonals, the wrong
offset for induction, averaging over queries that have nothing to find), and accepts correct solutions
written with explicit loops over the repeated sequence's offsets."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit02
from mechlab.checks.core import CheckFailed


def stub(*args):
    raise NotImplementedError("Exercise: replace this line with your solution.")


def offset_score(pattern, first_query, offset):
    """Loop: mean over batch and queries q >= first_query of pattern[..., q, q - offset]."""
    batch, n_heads, n, _ = pattern.shape
    total = torch.zeros(n_heads)
    for b in range(batch):
        for q in range(first_query, n):
            total += pattern[b, :, q, q - offset]
    return total / (batch * (n - first_query))


# ---- previous token ------------------------------------------------------------------------------------


def prev_solution(pattern):
    return offset_score(pattern, 1, 1)


def prev_main_diagonal(pattern):  # attends to itself
    return pattern.diagonal(0, -2, -1).mean((0, -1))


def prev_two_back(pattern):
    return offset_score(pattern, 2, 2)


def prev_counts_query_zero(pattern):  # q = 0 has no previous token; padding its row with key 0 skews the mean
    n = pattern.shape[-1]
    return torch.stack([pattern[:, :, q, max(q - 1, 0)] for q in range(n)], -1).mean((0, -1))


def prev_upper_diagonal(pattern):  # diagonal(1): the *next* token, always 0 under a causal mask
    return pattern.diagonal(1, -2, -1).mean((0, -1))


def test_previous_token_accepts_solution(capsys):
    unit02.check_previous_token_scores(prev_solution)
    assert "passed 3 cases" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, prev_main_diagonal, prev_two_back, prev_counts_query_zero,
                                   prev_upper_diagonal])
def test_previous_token_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit02.check_previous_token_scores(wrong)


# ---- duplicate token and induction ---------------------------------------------------------------------


def dup_solution(pattern, seq_len):
    return offset_score(pattern, seq_len + 1, seq_len)


def induction_solution(pattern, seq_len):
    return offset_score(pattern, seq_len + 1, seq_len - 1)


def induction_duplicate_offset(pattern, seq_len):  # looks at the earlier copy itself, not the token after it
    return offset_score(pattern, seq_len + 1, seq_len)


def induction_offset_too_far(pattern, seq_len):
    return offset_score(pattern, seq_len + 1, seq_len + 1)


def induction_over_all_queries(pattern, seq_len):  # averages in the first half too, where there is nothing to find
    diag = pattern.diagonal(-(seq_len - 1), -2, -1)
    return diag.mean((0, -1))


def induction_misses_last_query(pattern, seq_len):
    return offset_score(pattern[..., :-1, :-1], seq_len + 1, seq_len - 1)


def test_duplicate_accepts_solution():
    unit02.check_duplicate_token_scores(dup_solution)


def dup_one_short(pattern, seq_len):
    return offset_score(pattern, seq_len, seq_len - 1)


@pytest.mark.parametrize("wrong", [stub, induction_solution, dup_one_short])
def test_duplicate_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit02.check_duplicate_token_scores(wrong)


def test_induction_accepts_solution():
    unit02.check_induction_scores(induction_solution)


@pytest.mark.parametrize("wrong", [stub, induction_duplicate_offset, induction_offset_too_far,
                                   induction_over_all_queries, induction_misses_last_query])
def test_induction_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit02.check_induction_scores(wrong)


# ---- the repeated random sequence ----------------------------------------------------------------------


def repeated_solution(model, seq_len, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(199, generator=gen)[:seq_len] + 1 for _ in range(batch)])  # 0 is BOS here
    bos = torch.full((batch, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, half, half], dim=1)


def repeated_without_bos(model, seq_len, batch, seed):
    return repeated_solution(model, seq_len, batch, seed)[:, 1:]


def repeated_with_replacement(model, seq_len, batch, seed):  # accidental repeats inside the first half
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(1, 6, (batch, seq_len), generator=gen)
    return torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), half, half], dim=1)


def repeated_unseeded(model, seq_len, batch, seed):
    half = torch.stack([torch.randperm(199)[:seq_len] + 1 for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), half, half], dim=1)


def repeated_same_row(model, seq_len, batch, seed):
    return repeated_solution(model, seq_len, 1, seed).repeat(batch, 1)


def repeated_two_draws(model, seq_len, batch, seed):  # draws the second half anew: nothing repeats
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.stack([torch.randperm(199, generator=gen)[:seq_len] + 1 for _ in range(batch)]) for _ in range(2))
    return torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), a, b], dim=1)


def repeated_with_bos_inside(model, seq_len, batch, seed):
    toks = repeated_solution(model, seq_len, batch, seed)
    toks[:, 1] = toks[:, 1 + seq_len] = model.tokenizer.bos_token_id
    return toks


def test_repeated_tokens_accepts_solution(gpt2_like, capsys):
    unit02.check_repeated_tokens(repeated_solution, gpt2_like)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, repeated_without_bos, repeated_unseeded, repeated_same_row,
                                   repeated_two_draws, repeated_with_bos_inside, repeated_with_replacement])
def test_repeated_tokens_rejects(wrong, gpt2_like):
    with pytest.raises(CheckFailed):
        unit02.check_repeated_tokens(wrong, gpt2_like)


def test_library_generator_passes(gemma_like):
    from mechlab.methods.heads import repeated_random_tokens

    unit02.check_repeated_tokens(lambda m, n, b, s: repeated_random_tokens(m, n, b, seed=s), gemma_like)


def repeated_randint_vocab(model, seq_len, batch, seed):  # with replacement, over the whole vocabulary (BOS too)
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(0, model.cfg.d_vocab, (batch, seq_len), generator=gen)
    return torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), half, half], dim=1)


def repeated_randperm_with_bos(model, seq_len, batch, seed):  # distinct, but drawn from every id, BOS included
    gen = torch.Generator().manual_seed(seed)
    half = torch.stack([torch.randperm(model.cfg.d_vocab, generator=gen)[:seq_len] for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), half, half], dim=1)


def repeated_out_of_range(model, seq_len, batch, seed):
    toks = repeated_solution(model, seq_len, batch, seed)
    toks[:, 1] = toks[:, 1 + seq_len] = model.cfg.d_vocab + 3
    return toks


def repeated_float(model, seq_len, batch, seed):
    return repeated_solution(model, seq_len, batch, seed).float()


def test_randint_over_the_vocabulary_is_rejected_for_repeats_and_bos(gpt2_like):
    with pytest.raises(CheckFailed) as info:
        unit02.check_repeated_tokens(repeated_randint_vocab, gpt2_like)
    text = str(info.value)
    assert "long rows" in text and "a token repeats within the random half" in text and "torch.randint" in text
    assert "contain the BOS id" in text


@pytest.mark.parametrize("wrong, named", [(repeated_randperm_with_bos, "contain the BOS id"),
                                          (repeated_out_of_range, "outside the vocabulary"),
                                          (repeated_float, "dtype torch.float32"),
                                          (repeated_two_draws, "does not repeat the first half exactly"),
                                          (repeated_unseeded, "seeded torch.Generator")])
def test_repeated_tokens_names_the_mistake(wrong, named, gpt2_like):
    with pytest.raises(CheckFailed, match=named):
        unit02.check_repeated_tokens(wrong, gpt2_like)
