"""The bottom layer: loading models, tokens, labelled results, activation names and the shared intervention
engine. Nothing here imports another mechlab layer.

- :mod:`mechlab.core.loading`: ``load_model`` / ``course_model`` (hub, local folder, organism, random init)
- :mod:`mechlab.core.preflight`: Gemma in Colab (token, licence, VRAM, dtype) with an offline fallback
- :mod:`mechlab.core.tokens`: answer tokens, clean/corrupted alignment, logit differences, log-probs
- :mod:`mechlab.core.results`: ``Labelled`` results
- :mod:`mechlab.core.activations`: activation kinds, hook names, layer checks, row and head labels
- :mod:`mechlab.core.runs`: metrics, ``Patch``, narrow cached runs and batched patched runs
"""
