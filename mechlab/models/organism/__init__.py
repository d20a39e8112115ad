"""The model organism: a tiny GPT-2-style model trained in-repo with known circuits (see ``README.md``).

- ``tokenizer``: the byte-level BPE trained on the organism's corpus
- ``train``: ``python -m mechlab.models.organism.train`` (seeded; writes ``checkpoint/``)
- its model card and ``evaluation.json`` are written by ``python -m mechlab.course.organism_card`` (built on
  ``mechlab.methods``, so it lives in the course layer)

Load it with ``mechlab.load_model("organism")``.
"""

from pathlib import Path

ORGANISM_DIR = Path(__file__).resolve().parent  # card, heads.json and checkpoint/
HEADS_FILE = ORGANISM_DIR / "heads.json"  # the head types the card's evaluation detected
