"""Indirect-object identification (IOI) prompts: seeded, several templates, ABBA and BABA orders.

An IOI prompt names two people, then repeats one of them (the subject, S) and asks who received something:
the answer is the other name (the indirect object, IO)::

    When Mary and John went to the store, John gave a drink to   ->  " Mary"
         IO       S1                      S2                         (ABBA: IO first)
    When John and Mary went to the store, John gave a drink to   ->  " Mary"   (BABA: S first)

Every :class:`IOISample` carries its names, its answer text and the character spans of the three names, so
methods never re-derive what a prompt means. :func:`corrupt` builds counterparts of equal token length
(``"abc"``: S2 replaced by a third name, so the repeated name is gone; ``"flip"``: S2 replaced by the IO,
so the right answer flips). :func:`ioi_batch` tokenizes samples with a model's (or any HF) tokenizer and
finds the names' token positions.

Example::

    from mechlab.data.ioi import make_ioi, corrupt, ioi_batch
    samples = make_ioi(8, seed=0)
    samples[0].prompt, samples[0].answer, samples[0].wrong     # ('When ... gave a drink to', ' Mary', ' John')
    abc = corrupt(samples, "abc", seed=1)                       # same lengths, no repeated name
    # batch = ioi_batch(model, samples)   # tokens, answer ids, positions of io / s1 / s2 / end
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int
from torch import Tensor

# names that are single tokens (with their leading space) in the organism's tokenizer and in GPT-2's
NAMES = ("Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Kate", "Paul", "Lisa",
         "Mark", "Sarah", "Jack", "Emma", "Ben", "Alex", "Ryan", "Max", "Sam", "Eve", "Luke", "Rose")
PLACES = ("store", "park", "school", "garden", "office", "house", "station", "river")
OBJECTS = ("drink", "book", "ring", "ball", "cake", "letter", "key", "bag")

# {A} is the first name, {B} the second, {S2} the repeated subject. ABBA: A=IO, B=S; BABA: A=S, B=IO.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S2} gave a {obj} to",
    "Then, {A} and {B} had a long talk at the {place}. {S2} handed the {obj} to",
    "After {A} and {B} arrived at the {place}, {S2} passed a {obj} to",
    "While {A} and {B} were at the {place}, {S2} showed the {obj} to",
    "Friends {A} and {B} found a {obj} at the {place}. {S2} gave it to",
)
ORDERS = ("ABBA", "BABA")
CORRUPTIONS = ("abc", "flip")


@dataclass(frozen=True)
class IOISample:
    """One IOI prompt and what it means. Names are stored with their leading space (``" Mary"``).

    ``spans`` holds the character ``(start, end)`` of each name in ``prompt`` under the keys ``io``, ``s1``
    (the subject's first mention) and ``s2`` (its repeat), leading space included; they survive any tokenizer.
    """

    prompt: str  # the text up to and including the final " to"
    io: str  # indirect object, the right answer, e.g. " Mary"
    s: str  # the subject, e.g. " John"
    template: int  # index into TEMPLATES
    order: str  # "ABBA" (IO named first) or "BABA" (subject named first)
    spans: dict  # name -> (start, end) character span in prompt: keys "io", "s1", "s2"
    corruption: str = ""  # "" for a clean prompt, else the kind passed to corrupt()

    @property
    def answer(self) -> str:
        """The token the model should predict next (the IO, with its leading space)."""
        return self.io

    @property
    def wrong(self) -> str:
        """The competing answer a logit difference subtracts (the subject)."""
        return self.s


def _render(template: int, order: str, io: str, s: str, s2: str, place: str, obj: str) -> tuple[str, dict]:
    """Fill a template; return the prompt and the character spans of io, s1, s2 (with leading spaces)."""
    first, second = (io, s) if order == "ABBA" else (s, io)
    text = TEMPLATES[template]
    fields = {"A": first.strip(), "B": second.strip(), "S2": s2.strip()}
    out, spans, i = "", {}, 0
    while i < len(text):
        if text[i] == "{":
            j = text.index("}", i)
            key = text[i + 1:j]
            if key in fields:
                start = len(out) - 1  # the space before the placeholder belongs to the name token
                out += fields[key]
                role = {"A": "io" if order == "ABBA" else "s1", "B": "s1" if order == "ABBA" else "io",
                        "S2": "s2"}[key]
                spans[role] = (start, len(out))
            else:
                out += place if key == "place" else obj
            i = j + 1
        else:
            out += text[i]
            i += 1
    return out, spans


def make_ioi(n: int, *, seed: int = 0, templates: Sequence[int] | None = None, orders: Sequence[str] = ORDERS,
             names: Sequence[str] = NAMES) -> list[IOISample]:
    """``n`` IOI samples drawn with their own RNG (the same seed always gives the same list).

    Args:
        n: number of samples.
        seed: seed of a private ``random.Random``.
        templates: template indices to draw from (default all of :data:`TEMPLATES`).
        orders: ``"ABBA"``, ``"BABA"`` or both (each sample draws one at random).
        names: the name pool, without leading spaces.
    """
    templates = list(range(len(TEMPLATES))) if templates is None else list(templates)
    if n < 0:
        raise ValueError(f"n={n}: expected a non-negative number of samples.")
    bad = [t for t in templates if not 0 <= t < len(TEMPLATES)]
    if bad or not templates:
        raise ValueError(f"templates={templates}: expected indices in 0..{len(TEMPLATES) - 1}.")
    if not orders or any(o not in ORDERS for o in orders):
        raise ValueError(f"orders={orders}: expected a non-empty subset of {ORDERS}.")
    if len(set(names)) < 3:
        raise ValueError(f"names={names}: need at least 3 distinct names (the 'abc' corruption uses a third).")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        io, s = rng.sample(list(names), 2)
        t, order = rng.choice(templates), rng.choice(list(orders))
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        prompt, spans = _render(t, order, " " + io, " " + s, " " + s, place, obj)
        out.append(IOISample(prompt, " " + io, " " + s, t, order, spans))
    return out


def corrupt(samples: Sequence[IOISample], kind: str = "abc", *, seed: int = 0,
            names: Sequence[str] = NAMES) -> list[IOISample]:
    """Corrupted counterparts of ``samples``, one each, with the same number of tokens (names are single tokens).

    - ``"abc"``: S2 becomes a third name C, so no name repeats and nothing says which of IO / S is the answer.
      ``io`` and ``s`` keep the clean sample's names, so a logit difference is measured on the clean answers.
    - ``"flip"``: S2 becomes the IO; the repeated name is now the old IO, so the right answer is the old S
      (``io`` and ``s`` are swapped in the returned sample).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind={kind!r}: expected one of {CORRUPTIONS}.")
    rng = random.Random(seed)
    out = []
    for x in samples:
        if x.corruption:
            raise ValueError(f"sample {x.prompt!r} is already corrupted ({x.corruption!r}); corrupt clean samples.")
        a, b = x.spans["s2"]
        if kind == "abc":
            c = " " + rng.choice([m for m in names if " " + m not in (x.io, x.s)])
            prompt = x.prompt[:a] + c + x.prompt[b:]
            spans = dict(x.spans, s2=(a, a + len(c)))
            out.append(replace(x, prompt=prompt, spans=spans, corruption=kind))
        else:
            prompt = x.prompt[:a] + x.io + x.prompt[b:]
            spans = {"io": x.spans["s1"], "s1": x.spans["io"], "s2": (a, a + len(x.io))}
            order = "BABA" if x.order == "ABBA" else "ABBA"
            out.append(replace(x, prompt=prompt, io=x.s, s=x.io, order=order, spans=spans, corruption=kind))
    return out


@dataclass
class IOIBatch:
    """Tokenized IOI samples. Rows are right-padded; ``end`` is each row's last prompt position."""

    tokens: Int[Tensor, "batch pos"]  # token ids (BOS first when prepend_bos)
    answer: Int[Tensor, " batch"]  # token id of the IO (the right answer)
    wrong: Int[Tensor, " batch"]  # token id of the subject
    io_pos: Int[Tensor, " batch"]  # position of the IO name
    s1_pos: Int[Tensor, " batch"]  # position of the subject's first mention
    s2_pos: Int[Tensor, " batch"]  # position of the repeated subject
    end: Int[Tensor, " batch"]  # position of the final " to" (where the answer is predicted)
    samples: list  # the IOISample of each row

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _tokenizer_of(model_or_tokenizer):
    return getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer


def ioi_batch(model_or_tokenizer, samples: Sequence[IOISample], *, prepend_bos: bool = True) -> IOIBatch:
    """Tokenize ``samples`` with the model's tokenizer (or a HF fast tokenizer) and locate the names.

    Raises a ``ValueError`` when a name or answer is not a single token: choose names from a pool that the
    tokenizer keeps whole (:data:`NAMES` is, for the organism and GPT-2).
    """
    if not samples:
        raise ValueError("ioi_batch got no samples; pass a non-empty list from make_ioi().")
    tok = _tokenizer_of(model_or_tokenizer)
    bos = tok.bos_token_id
    if prepend_bos and bos is None:
        raise ValueError("prepend_bos=True but the tokenizer has no bos_token_id; pass prepend_bos=False.")
    rows, cols = [], {k: [] for k in ("answer", "wrong", "io_pos", "s1_pos", "s2_pos", "end")}
    for x in samples:
        enc = tok(x.prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        shift = 1 if prepend_bos else 0
        for role in ("io", "s1", "s2"):
            a, b = x.spans[role]
            hits = [i for i, (s, e) in enumerate(offsets) if s < b and e > a]
            if len(hits) != 1:
                pieces = [x.prompt[s:e] for s, e in offsets]
                raise ValueError(f"name {x.prompt[a:b]!r} in {x.prompt!r} is {len(hits)} tokens ({pieces}); IOI "
                                 "needs single-token names. Use names from mechlab.data.ioi.NAMES or check them "
                                 "with mechlab.core.tokens.answer_token_ids.")
            cols[f"{role}_pos"].append(hits[0] + shift)
        for key, word in (("answer", x.io), ("wrong", x.s)):
            wid = tok(word, add_special_tokens=False)["input_ids"]
            if len(wid) != 1:
                raise ValueError(f"answer {word!r} is {len(wid)} tokens; IOI needs single-token names.")
            cols[key].append(wid[0])
        cols["end"].append(len(ids) - 1 + shift)
        rows.append(([bos] if prepend_bos else []) + ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (bos if bos is not None else 0)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return IOIBatch(tokens=tokens, samples=list(samples),
                    **{k: torch.tensor(v, dtype=torch.long) for k, v in cols.items()})
