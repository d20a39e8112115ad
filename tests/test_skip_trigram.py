"""The skip-trigram generator and its accuracy ceiling, checked against hand-written rules and counts."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch

from mechlab.data.skip_trigram import (
    SkipTrigramData,
    accuracy_ceiling,
    make_skip_trigram,
    pair_label,
    signal_prompts,
)

# the seed notebook's answer map, written out by hand: the label of the sorted pair (a, b)
ANS_MAP = {(1, 1): 0, (1, 2): 1, (1, 3): 2, (1, 4): 3, (2, 2): 4, (2, 3): 5, (2, 4): 6, (3, 3): 7, (3, 4): 8,
           (4, 4): 9}


def test_same_seed_same_data_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b = make_skip_trigram(500, seed=3), make_skip_trigram(500, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    c = make_skip_trigram(500, seed=4)
    assert not torch.equal(a.tokens, c.tokens)


def test_signal_and_noise_follow_the_seed_definition():
    data = make_skip_trigram(4000, seed=0, n_ctx=5)
    for row, label, sig in zip(data.tokens.tolist(), data.labels.tolist(), data.is_signal.tolist(), strict=True):
        if sig:
            assert row[-1] == 0 and 1 <= row[0] <= 4 and 1 <= row[-2] <= 4
            assert all(5 <= t <= 10 for t in row[1:-2])
            assert label == ANS_MAP[tuple(sorted((row[0], row[-2])))]
        else:
            assert all(5 <= t <= 10 for t in row)
            assert 0 <= label <= 10


def test_proportions_and_uniform_noise_labels():
    data = make_skip_trigram(40_000, seed=1, p_signal=0.3)
    assert abs(data.is_signal.float().mean().item() - 0.3) < 0.01
    noise = Counter(data.labels[~data.is_signal].tolist())
    n = sum(noise.values())
    assert sorted(noise) == list(range(11))
    assert all(abs(c / n - 1 / 11) < 0.01 for c in noise.values())


def test_ceiling_matches_hand_count():
    data = make_skip_trigram(20_000, seed=2)
    ceiling = accuracy_ceiling(data)
    frac = data.is_signal.float().mean().item()
    assert ceiling.signal == 1.0 and ceiling.noise == pytest.approx(1 / 11)
    assert ceiling.total == pytest.approx(frac + (1 - frac) / 11)
    assert abs(ceiling.total - (0.5 + 0.5 / 11)) < 0.01
    assert "54." in ceiling.report() or "55." in ceiling.report()


def test_ceiling_drops_when_signal_labels_are_inconsistent():
    data = make_skip_trigram(3000, seed=5)
    labels = data.labels.clone()
    sig_idx = data.is_signal.nonzero().flatten()
    labels[sig_idx[::3]] = 10  # a third of the signal samples get a label that contradicts their input
    broken = SkipTrigramData(data.tokens, labels, data.is_signal, data.seed)
    groups: dict[tuple, Counter] = defaultdict(Counter)
    for i in sig_idx.tolist():
        groups[tuple(data.tokens[i].tolist())][int(labels[i])] += 1
    by_hand = sum(max(c.values()) for c in groups.values()) / len(sig_idx)
    got = accuracy_ceiling(broken)
    assert got.signal == pytest.approx(by_hand) and got.signal < 0.9


def test_pairs_and_exhaustive_signal_prompts():
    assert pair_label(3, 1) == pair_label(1, 3) == ANS_MAP[(1, 3)]
    tokens, labels, names = signal_prompts(4)
    assert tokens.shape == (16 * 6, 4) and len(torch.unique(tokens, dim=0)) == 96
    for row, label, name in zip(tokens.tolist(), labels.tolist(), names, strict=True):
        a, b = sorted((row[0], row[2]))
        assert label == ANS_MAP[(a, b)] and name == f"{a},{b}"


@pytest.mark.parametrize("kwargs", [dict(n=0, seed=0), dict(n=10, seed=0, p_signal=1.5), dict(n=10, seed=0, n_ctx=2)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_skip_trigram(**kwargs)
    with pytest.raises(ValueError):
        pair_label(0, 5)
