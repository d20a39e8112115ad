"""Models the course trains itself.

- :mod:`mechlab.models.toy`: unit 03's 1-layer attention-only transformer, its training and circuit tables
- :mod:`mechlab.models.organism`: the shipped organism (tokenizer, training recipe, checkpoint, model card)
"""
