"""The model organism: a tiny GPT-2-style model trained in-repo with known circuits (see ``README.md``).

- ``tokenizer``: the byte-level BPE trained on the organism's corpus
- ``train``: ``python -m mechlab.organism.train`` (seeded; writes ``checkpoint/``)
- ``evaluate``: ``python -m mechlab.organism.evaluate`` (targets and circuits; writes ``evaluation.json``)

Load it with ``mechlab.load_model("organism")``.
"""
