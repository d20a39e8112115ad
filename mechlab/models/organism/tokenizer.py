"""The organism's byte-level BPE tokenizer, trained with HF ``tokenizers`` on the organism's corpus.

Byte-level like GPT-2's: every string round-trips, a word in mid-sentence is one token *with* its leading
space (``" Mary"``), and rare words that the merges never saw often enough are split into pieces
(``" interpretability"`` -> several tokens). ``<|endoftext|>`` is BOS, EOS and padding at once, as in GPT-2.

Example::

    from mechlab.models.organism.tokenizer import load_tokenizer
    tok = load_tokenizer()                           # the shipped one (mechlab/models/organism/checkpoint/)
    tok.convert_ids_to_tokens(tok("When Mary left")["input_ids"])   # ['When', 'ĠMary', 'Ġleft']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL = "<|endoftext|>"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, min_frequency: int = 200):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast``.

    ``min_frequency`` is the count a pair needs before it is merged: it keeps rare words in pieces.
    """

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 (256 bytes + special).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL,
                                   pad_token=SPECIAL, model_max_length=1024)


def load_tokenizer(path: str | Path | None = None):
    """Load the tokenizer saved in ``path`` (default: the shipped checkpoint folder)."""

    path = Path(path) if path is not None else CHECKPOINT_DIR
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"no tokenizer.json in {path}; train one with "
                         "`python -m mechlab.models.organism.train` or pass the folder that holds it.")
    return AutoTokenizer.from_pretrained(str(path))
