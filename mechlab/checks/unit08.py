"""Checkers for unit 08 (scaling up: the same methods through nnsight), each against mechlab's reference.

The learner writes, on an ``nnsight.TransformersModel`` ``lm`` (``blocks(lm)[layer]`` is block ``layer`` for GPT-2 and
Llama / Gemma alike, :func:`mechlab.backends.nnsight_model.blocks`):

    patched_logits(lm, tokens, layer, pos, new_resid)       -> Float[Tensor, "batch pos d_vocab"]
        the logits when the residual stream entering block ``layer`` at position ``pos`` is replaced by
        ``new_resid`` [batch, d_model]: a write inside a trace.
    z_at(lm, tokens, layer, pos)                            -> Float[Tensor, "batch head d_head"]
        every head's z (the input of the attention output projection) at one position: save only that slice.
    noising_per_position(lm, clean, corrupted, layer, metric) -> Float[Tensor, "pos"]
        the mean metric on the clean run with the corrupted run's residual stream entering ``layer`` patched in at one
        position at a time, every position in ONE trace (copies of the batch stacked along the batch axis).

Each check runs small cases on tiny random models of both families (weights scaled up so that every patch moves
the output) and names the likely mistake: a write that never reaches the model, an off-by-one position or layer,
the block's output instead of its input, the attention output instead of z, the whole sequence saved, the
direction swapped, or one trace per patch.

Example::

    from mechlab.checks import unit08
    unit08.check_patched_logits(patched_logits)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from mechlab.backends.nnsight_methods import nnsight_activation_patching
from mechlab.backends.nnsight_model import attention, blocks, lm_device, sites, twin_of_bridge
from mechlab.checks.core import Case, CheckFailed, compare_tensors, run_cases
from mechlab.core.loading import load_model
from mechlab.core.runs import logit_diff_metric


@functools.cache
def _tiny(name: str):
    """A tiny random model of one family, weights scaled x6 (at std 0.02 a patch barely moves the logits)."""
    bridge = load_model(name, seed=5, verbose=False)
    with torch.no_grad():
        for p in bridge.parameters():
            if p.ndim >= 2:
                p.mul_(6.0)
    return twin_of_bridge(bridge)


def _models():
    return [("GPT-2-like", _tiny("tiny-gpt2")), ("Gemma-like", _tiny("tiny-gemma"))]


def _tokens(lm, batch: int, n_pos: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, min(600, lm.config.vocab_size), (batch, n_pos), generator=gen)


# ---------------------------------------------------------------------------------------------------------
# exercise 1: a write inside a trace


def _reference_patched_logits(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        resid = blocks(lm)[layer].input.clone()
        resid[:, pos] = new_resid
        blocks(lm)[layer].input = resid
        logits = lm.output.logits.save()
    return torch.as_tensor(logits)


def _unpatched(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        logits = lm.output.logits.save()
    return torch.as_tensor(logits)


def _block_output_patched(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        out = blocks(lm)[layer].output
        out = out[0] if isinstance(out, tuple) else out
        out[:, pos] = new_resid
        logits = lm.output.logits.save()
    return torch.as_tensor(logits)


def _shifted(fn, shift: int):
    def wrong(lm, tokens, layer, pos, new_resid):
        return fn(lm, tokens, layer, (pos + shift) % tokens.shape[1], new_resid)
    return wrong


def _every_position(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        resid = blocks(lm)[layer].input.clone()
        resid[:] = new_resid[:, None]
        blocks(lm)[layer].input = resid
        logits = lm.output.logits.save()
    return torch.as_tensor(logits)


def _patch_cases() -> list[Case]:
    cases = []
    for k, (family, lm) in enumerate(_models()):
        d_model = sites(lm).d_model
        gen = torch.Generator().manual_seed(20 + k)
        for layer, pos, batch in ((0, 2, 2), (1, 4, 3)):
            tokens = _tokens(lm, batch, 6, seed=30 + 7 * k + layer)
            new = (torch.randn(batch, d_model, generator=gen) * 3).to(lm_device(lm))  # on the model's device
            cases.append(Case(f"{family}, layer {layer}, position {pos}, batch {batch}",
                              (lm, tokens, layer, pos, new)))
    first = cases[0]
    cases.append(Case("last layer, last position", (first.args[0], first.args[1], 1, 5, first.args[4]),
                      hint="is the write made to the block's input (the residual stream entering it)?"))
    return cases


PATCH_MISTAKES = {
    "the write never reached the model (it returns the unpatched logits: you edited a copy, or assigned to a "
    "local name instead of the module's .input)": _unpatched,
    "patched the block's output (the stream entering the NEXT block), not its input": _block_output_patched,
    "patched one position too late": _shifted(_reference_patched_logits, 1),
    "patched one position too early": _shifted(_reference_patched_logits, -1),
    "overwrote every position instead of one": _every_position,
}


def check_patched_logits(fn: Callable) -> None:
    """``fn(lm, tokens, layer, pos, new_resid) -> logits [batch, pos, d_vocab]`` against a reference trace."""
    run_cases(fn, _reference_patched_logits, _patch_cases(), name="patched_logits", mistakes=PATCH_MISTAKES,
              compare=lambda got, want: compare_tensors(got, want, atol=1e-4, what="logits"))


# ---------------------------------------------------------------------------------------------------------
# exercise 2: save only what you need


def _projection(lm, layer):
    s = sites(lm)
    attn = attention(blocks(lm)[layer], s.family)
    return attn.c_proj if s.family == "gpt2" else attn.o_proj


def _reference_z_at(lm, tokens, layer, pos):
    s = sites(lm)
    with torch.no_grad(), lm.trace(tokens):
        z = _projection(lm, layer).input[:, pos].reshape(-1, s.n_heads, s.d_head).save()
    return torch.as_tensor(z)


def _whole_sequence(lm, tokens, layer, pos):
    s = sites(lm)
    with torch.no_grad(), lm.trace(tokens):
        z = _projection(lm, layer).input.reshape(tokens.shape[0], tokens.shape[1], s.n_heads, s.d_head).save()
    return torch.as_tensor(z)


def _attn_output_instead(lm, tokens, layer, pos):
    s = sites(lm)
    with torch.no_grad(), lm.trace(tokens):
        out = attention(blocks(lm)[layer], s.family).output[0][:, pos].reshape(-1, s.n_heads, s.d_head).save()
    return torch.as_tensor(out)


def _z_layer_shift(lm, tokens, layer, pos):
    return _reference_z_at(lm, tokens, (layer + 1) % sites(lm).n_layers, pos)


def _z_cases() -> list[Case]:
    cases = []
    for k, (family, lm) in enumerate(_models()):
        for layer, pos in ((0, 3), (1, 1)):
            cases.append(Case(f"{family}, layer {layer}, position {pos}", (lm, _tokens(lm, 2, 5, 40 + k), layer, pos)))
    return cases


Z_MISTAKES = {
    "saved the whole sequence [batch, pos, head, d_head]: slice the position inside the trace and save only that "
    "(on NDIF every saved element is downloaded)": _whole_sequence,
    "read the attention output (after W_O, summed over heads) instead of z, the input of the output projection":
        _attn_output_instead,
    "read the next layer": _z_layer_shift,
    "read one position too late": lambda lm, tokens, layer, pos: _reference_z_at(lm, tokens, layer,
                                                                                 (pos + 1) % tokens.shape[1]),
}


def check_z_at(fn: Callable) -> None:
    """``fn(lm, tokens, layer, pos) -> z [batch, head, d_head]`` against a reference trace."""
    run_cases(fn, _reference_z_at, _z_cases(), name="z_at", mistakes=Z_MISTAKES,
              compare=lambda got, want: compare_tensors(got, want, atol=1e-5, what="z at the position"))


# ---------------------------------------------------------------------------------------------------------
# exercise 3: a batch of interventions in one trace


def _reference_noising(lm, clean, corrupted, layer, metric):
    result = nnsight_activation_patching(lm, clean, corrupted, metric, kind="resid_pre", layers=[layer],
                                         progress=False)
    return result.values[0]


def _denoising(lm, clean, corrupted, layer, metric):
    result = nnsight_activation_patching(lm, clean, corrupted, metric, kind="resid_pre", layers=[layer],
                                         direction="denoising", progress=False)
    return result.values[0]


def _clean_metric_everywhere(lm, clean, corrupted, layer, metric):
    with torch.no_grad(), lm.trace(clean):
        value = metric(lm.output.logits).mean().save()
    return torch.as_tensor(value).expand(clean.shape[1]).clone()


def _next_layer(lm, clean, corrupted, layer, metric):
    n = sites(lm).n_layers
    if layer + 1 >= n:
        raise ValueError("no next layer")
    return _reference_noising(lm, clean, corrupted, layer + 1, metric)


def _noising_cases() -> list[Case]:
    cases = []
    for k, (family, lm) in enumerate(_models()):
        clean = _tokens(lm, 2, 6, 50 + k)
        corrupted = clean.clone()
        corrupted[:, 2] = _tokens(lm, 2, 1, 60 + k)[:, 0]
        corrupted[:, 4] = _tokens(lm, 2, 1, 70 + k)[:, 0]
        metric = logit_diff_metric(torch.tensor([5, 6]), torch.tensor([8, 9]))
        for layer in (0, 1):
            cases.append(Case(f"{family}, layer {layer}", (lm, clean, corrupted, layer, metric)))
    return cases


NOISING_MISTAKES = {
    "the patches never reached the model (every entry is the clean metric)": _clean_metric_everywhere,
    "patched clean activations into the corrupted run (denoising) instead of corrupted into clean (noising)":
        _denoising,
    "patched the next layer's residual stream": _next_layer,
}


def check_noising_per_position(fn: Callable) -> None:
    """``fn(lm, clean, corrupted, layer, metric) -> [pos]`` against :func:`mechlab.backends.nnsight_methods.
    nnsight_activation_patching` (kind ``resid_pre``, noising), then that it used one trace, not one per position."""
    cases = _noising_cases()
    run_cases(fn, _reference_noising, cases, name="noising_per_position", mistakes=NOISING_MISTAKES,
              compare=lambda got, want: compare_tensors(got, want, atol=1e-4, what="metric per patched position"))
    lm = cases[0].args[0]
    traces = _count_traces(lm, lambda: fn(*cases[0].args))
    if traces != 1:
        raise CheckFailed(f"noising_per_position: the values are right, but it ran {traces} traces for "
                          f"{cases[0].args[1].shape[1]} patches. Put every patched copy in ONE trace: stack copies of "
                          "the clean batch along the batch axis (one per position) together with the corrupted run, "
                          "and let each copy take its position from the corrupted rows. On NDIF every trace is a "
                          "network round-trip and a queue wait.")
    print("noising_per_position: one trace for every position.")


def _count_traces(lm, call) -> int:
    cls = type(lm)
    original = cls.trace
    count = [0]

    def counting(self, *args, **kwargs):
        count[0] += 1
        return original(self, *args, **kwargs)

    cls.trace = counting
    try:
        call()
    finally:
        cls.trace = original
    return count[0]


__all__ = ["NOISING_MISTAKES", "PATCH_MISTAKES", "Z_MISTAKES", "check_noising_per_position", "check_patched_logits",
           "check_z_at"]
