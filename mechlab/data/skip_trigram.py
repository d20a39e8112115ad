"""The skip-trigram task of unit 03: a seeded generator and the task's accuracy ceiling, computed from the data.

Vocabulary (11 tokens): ``0`` is the "answer now" token, ``1..4`` are signal tokens, ``5..10`` are filler.

- **signal** sequences read ``a, f, ..., f, b, 0``: a signal token ``a`` first, filler in the middle, a second
  signal token ``b`` just before the end, and ``0`` last. The label is the index of the unordered pair
  ``{a, b}`` in :data:`PAIRS` (10 pairs, labels ``0..9``): ``a ... b 0 -> label`` is a skip-trigram.
- **noise** sequences are filler only and their label is drawn uniformly from ``0..10``: no model can beat
  chance (1/11) on them.

So the best possible accuracy is about ``p_signal * 1 + (1 - p_signal) / 11`` (54.5 % at ``p_signal = 0.5``);
:func:`accuracy_ceiling` measures it from a data set rather than trusting the formula.

Example::

    from mechlab.data.skip_trigram import make_skip_trigram, accuracy_ceiling
    data = make_skip_trigram(2_000, seed=0)
    data.tokens[:2], data.labels[:2]          # [[a, f, b, 0], ...] and their labels
    accuracy_ceiling(data).report()           # prints signal / noise / overall ceilings
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

D_VOCAB = 11  # tokens 0..10
END_TOKEN = 0  # the last token of every signal sequence: "answer now"
SIGNAL_TOKENS = (1, 2, 3, 4)  # the tokens a and b of a skip-trigram
FILLER_TOKENS = tuple(range(5, D_VOCAB))  # 5..10: the middle of signal sequences, all of a noise sequence
PAIRS = tuple((a, b) for a in SIGNAL_TOKENS for b in SIGNAL_TOKENS if a <= b)  # label i <-> PAIRS[i]
N_LABELS = D_VOCAB  # noise labels range over 0..10; signal labels over 0..9


def pair_label(a: int, b: int) -> int:
    """The label of the unordered pair ``{a, b}`` of signal tokens (``pair_label(3, 1) == pair_label(1, 3)``)."""
    if a not in SIGNAL_TOKENS or b not in SIGNAL_TOKENS:
        raise ValueError(f"pair_label: a={a}, b={b}; both must be signal tokens {SIGNAL_TOKENS}.")
    return PAIRS.index((min(a, b), max(a, b)))


def pair_names() -> list[str]:
    """``['1,1', '1,2', ..., '4,4']``: a name per signal label, for tables and plots."""
    return [f"{a},{b}" for a, b in PAIRS]


@dataclass
class SkipTrigramData:
    """A labelled set of skip-trigram sequences; row ``i`` of every tensor describes sample ``i``."""

    tokens: Int[Tensor, "batch pos"]  # the input sequences
    labels: Int[Tensor, " batch"]  # the target at the last position
    is_signal: Bool[Tensor, " batch"]  # True for a ... b 0 sequences, False for noise
    seed: int  # the generator seed that made this set

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, idx) -> SkipTrigramData:
        return SkipTrigramData(self.tokens[idx], self.labels[idx], self.is_signal[idx], self.seed)


def make_skip_trigram(
    n: int,
    *,
    seed: int,
    p_signal: float = 0.5,
    n_ctx: int = 4,
) -> SkipTrigramData:
    """``n`` sequences of length ``n_ctx``, each signal with probability ``p_signal``; the same seed gives the
    same data (a private ``torch.Generator``: the global RNG is neither read nor changed).

    Example::

        data = make_skip_trigram(1000, seed=1)
        (data.tokens[data.is_signal, -1] == 0).all()   # every signal sequence ends in 0
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"make_skip_trigram: n={n!r}; expected a positive int (the number of sequences).")
    if not 0.0 <= p_signal <= 1.0:
        raise ValueError(f"make_skip_trigram: p_signal={p_signal!r}; expected a probability in [0, 1].")
    if not isinstance(n_ctx, int) or n_ctx < 3:
        raise ValueError(f"make_skip_trigram: n_ctx={n_ctx!r}; a skip-trigram a ... b 0 needs n_ctx >= 3.")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = FILLER_TOKENS[0], FILLER_TOKENS[-1] + 1
    tokens = torch.randint(lo, hi, (n, n_ctx), generator=gen)
    is_signal = torch.rand(n, generator=gen) < p_signal
    a = torch.randint(SIGNAL_TOKENS[0], SIGNAL_TOKENS[-1] + 1, (n,), generator=gen)
    b = torch.randint(SIGNAL_TOKENS[0], SIGNAL_TOKENS[-1] + 1, (n,), generator=gen)
    noise_labels = torch.randint(0, N_LABELS, (n,), generator=gen)

    tokens[is_signal, 0] = a[is_signal]
    tokens[is_signal, -2] = b[is_signal]
    tokens[is_signal, -1] = END_TOKEN
    lookup = torch.full((SIGNAL_TOKENS[-1] + 1, SIGNAL_TOKENS[-1] + 1), -1, dtype=torch.long)
    for i, (x, y) in enumerate(PAIRS):
        lookup[x, y] = lookup[y, x] = i
    labels = torch.where(is_signal, lookup[a, b], noise_labels)
    return SkipTrigramData(tokens=tokens, labels=labels, is_signal=is_signal, seed=seed)


def signal_prompts(n_ctx: int = 4) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"], list[str]]:
    """Every signal sequence of length ``n_ctx`` (all pairs, both orders, all filler choices), with its label
    and its pair name; the exhaustive set the interpretation tables average over."""
    if not isinstance(n_ctx, int) or n_ctx < 3:
        raise ValueError(f"signal_prompts: n_ctx={n_ctx!r}; a skip-trigram a ... b 0 needs n_ctx >= 3.")
    rows, labels, names = [], [], []
    fillers = torch.cartesian_prod(*[torch.tensor(FILLER_TOKENS)] * (n_ctx - 3)) if n_ctx > 3 else None
    for a in SIGNAL_TOKENS:
        for b in SIGNAL_TOKENS:
            middles = [[]] if fillers is None else fillers.reshape(len(fillers), -1).tolist()
            for mid in middles:
                rows.append([a, *mid, b, END_TOKEN])
                labels.append(pair_label(a, b))
                names.append(f"{min(a, b)},{max(a, b)}")
    return torch.tensor(rows), torch.tensor(labels), names


@dataclass
class Ceiling:
    """The best accuracy any predictor can reach on a data set, split into its signal and noise parts."""

    signal: float  # best accuracy on signal sequences (1.0 when the label is a function of the input)
    noise: float  # best accuracy on noise sequences: chance, 1 / (number of distinct noise labels)
    frac_signal: float  # fraction of the data set that is signal
    n: int  # size of the data set

    @property
    def total(self) -> float:
        """The overall ceiling: the signal and noise ceilings weighted by their share of the data."""
        return self.frac_signal * self.signal + (1 - self.frac_signal) * self.noise

    def report(self) -> str:
        """Print (and return) one line per part; rounded, so notebooks can compare it across runs."""
        text = (f"accuracy ceiling on {self.n} sequences ({self.frac_signal:.1%} signal):\n"
                f"  signal {self.signal:.1%} (label determined by the input)\n"
                f"  noise  {self.noise:.1%} (chance: the label is independent of the input)\n"
                f"  total  {self.total:.2%}")
        print(text)
        return text


def accuracy_ceiling(data: SkipTrigramData) -> Ceiling:
    """Measure the best achievable accuracy on ``data``.

    Signal: for each distinct signal sequence, the best guess is its most frequent label; the ceiling is the
    share of signal samples that guess gets right (1.0 exactly when the label is a function of the input).
    Noise: its labels are drawn independently of the input, so nothing beats a constant guess, whose expected
    accuracy is 1 / (number of distinct noise labels). (The largest *observed* label frequency would be
    biased upwards by sampling noise, so it is not used.)
    """
    if len(data) == 0:
        raise ValueError("accuracy_ceiling: the data set is empty; make one with make_skip_trigram(n, seed=...).")
    sig = data.is_signal
    n_sig = int(sig.sum())
    signal = 0.0
    if n_sig:
        _, inverse = torch.unique(data.tokens[sig], dim=0, return_inverse=True)
        counts = torch.zeros(int(inverse.max()) + 1, N_LABELS, dtype=torch.long)
        counts.index_put_((inverse, data.labels[sig]), torch.ones_like(inverse), accumulate=True)
        signal = float(counts.max(dim=1).values.sum()) / n_sig
    noise_labels = data.labels[~sig]
    noise = 1.0 / len(torch.unique(noise_labels)) if len(noise_labels) else 0.0
    return Ceiling(signal=signal, noise=noise, frac_signal=n_sig / len(data), n=len(data))


__all__ = ["D_VOCAB", "END_TOKEN", "FILLER_TOKENS", "N_LABELS", "PAIRS", "SIGNAL_TOKENS", "Ceiling",
           "SkipTrigramData", "accuracy_ceiling", "make_skip_trigram", "pair_label", "pair_names", "signal_prompts"]
