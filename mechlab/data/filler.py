"""Plain filler text from a small seeded grammar, so the organism is a language model and not a classifier.

Words follow a Zipf-like frequency: common words become single BPE tokens, while the rare long words at the
tail (``RARE_WORDS``) are seen too seldom to earn a token and are split into pieces, the behaviour the
tokenization lesson shows.

Example::

    from mechlab.data.filler import make_filler
    make_filler(2, seed=0)   # ['The old farmer walked to the river ...', ...]
"""

from __future__ import annotations

import random

SUBJECTS = ("farmer", "teacher", "child", "doctor", "king", "woman", "man", "dog", "cat", "bird", "student",
            "sailor", "baker", "girl", "boy", "painter", "queen", "fox", "horse", "writer")
ADJECTIVES = ("old", "young", "small", "big", "quiet", "happy", "tired", "clever", "brave", "kind", "little",
              "strange", "lonely", "busy", "gentle", "proud")
VERBS = ("walked to", "looked at", "ran to", "sat near", "found", "saw", "liked", "carried", "painted",
         "visited", "watched", "left", "opened", "cleaned", "remembered")
SCENES = ("the river", "the house", "the market", "the forest", "the village", "the hill", "the garden",
          "the road", "the school", "the table", "the window", "the bridge", "a boat", "a tree", "the door")
TIMES = ("In the morning", "Later that day", "At night", "Every day", "One day", "After dinner", "Before noon",
         "In the winter", "Last summer")
CLAUSES = ("and it was quiet", "because it was late", "but nobody came", "and then went home", "and smiled",
           "while the sun was setting", "and the wind was cold", "as the rain began")
RARE_WORDS = ("extraordinarily", "incomprehensible", "photosynthesis", "interpretability", "transformational",
              "counterintuitive", "unbelievably", "mischievousness", "electromagnetic", "archaeologist")


def _zipf(rng: random.Random, words: tuple) -> str:
    weights = [1.0 / (i + 1) for i in range(len(words))]
    return rng.choices(words, weights=weights)[0]


def _sentence(rng: random.Random) -> str:
    start = _zipf(rng, TIMES) + ", the" if rng.random() < 0.3 else "The"
    adj = _zipf(rng, ADJECTIVES) + " " if rng.random() < 0.6 else ""
    text = f"{start} {adj}{_zipf(rng, SUBJECTS)} {_zipf(rng, VERBS)} {_zipf(rng, SCENES)}"
    if rng.random() < 0.4:
        text += " " + _zipf(rng, CLAUSES)
    if rng.random() < 0.03:
        text += f", which was {_zipf(rng, RARE_WORDS)}"
    return text + "."


def make_filler(n: int, *, seed: int = 0, sentences: tuple[int, int] = (2, 5)) -> list[str]:
    """``n`` short paragraphs of ``sentences[0]..sentences[1]`` sentences each, from a private RNG."""
    lo, hi = sentences
    if n < 0 or not 1 <= lo <= hi:
        raise ValueError(f"n={n}, sentences={sentences}: expected n >= 0 and 1 <= sentences[0] <= sentences[1].")
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(lo, hi))) for _ in range(n)]
