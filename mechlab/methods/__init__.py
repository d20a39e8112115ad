"""Interpretability methods, one module each, built on :mod:`mechlab.core`.

- :mod:`mechlab.methods.dla`: direct logit attribution with the final norm scale frozen
- :mod:`mechlab.methods.patching`: exact activation patching (noising / denoising), batched
- :mod:`mechlab.methods.attribution`: attribution patching (AtP), integrated gradients
- :mod:`mechlab.methods.ablation`: zero / mean / resample ablation
- :mod:`mechlab.methods.self_repair`: direct effects, ablation sweeps, backup slopes
- :mod:`mechlab.methods.heads`: previous-token / duplicate-token / induction scores
- :mod:`mechlab.methods.generate`: batched greedy generation with a KV cache
"""
