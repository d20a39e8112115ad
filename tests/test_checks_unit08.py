"""The unit 08 checkers accept the reference solutions and reject the stub and named wrong answers: a write that
never reaches the model, the block's output, off-by-one positions, every position overwritten; the whole sequence
saved, the attention output instead of z; denoising instead of noising, and the right values from one trace per
patch. Each failure names its mistake. Skipped when nnsight is not installed."""

from __future__ import annotations

import pytest
import torch

from mechlab.backends.nnsight_model import blocks, nnsight_available, sites

pytestmark = pytest.mark.skipif(not nnsight_available(),
                                reason="nnsight is not installed: pip install mechlab[nnsight]")


@pytest.fixture(scope="module")
def unit08():
    from mechlab.checks import unit08

    return unit08


def fails(check, fn, *, match: str):
    from mechlab.checks.core import CheckFailed

    with pytest.raises(CheckFailed, match=match):
        check(fn)


def stub(*args):
    raise NotImplementedError("stub")


# exercise 1 -------------------------------------------------------------------------------------------------


def patched_logits(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        resid = blocks(lm)[layer].input
        resid[:, pos] = new_resid  # in place: the block computes on the edited stream
        logits = lm.output.logits.save()
    return logits


def edits_a_copy(lm, tokens, layer, pos, new_resid):
    with torch.no_grad(), lm.trace(tokens):
        resid = blocks(lm)[layer].input.clone()
        resid[:, pos] = new_resid  # never written back
        logits = lm.output.logits.save()
    return logits


def next_position(lm, tokens, layer, pos, new_resid):
    return patched_logits(lm, tokens, layer, (pos + 1) % tokens.shape[1], new_resid)


def test_patched_logits_accepts_solution(unit08):
    unit08.check_patched_logits(patched_logits)


def test_patched_logits_rejects(unit08):
    fails(unit08.check_patched_logits, stub, match="not implemented")
    fails(unit08.check_patched_logits, edits_a_copy, match="never reached the model")
    fails(unit08.check_patched_logits, next_position, match="one position too late")


# exercise 2 -------------------------------------------------------------------------------------------------


def _proj(lm, layer):
    block = blocks(lm)[layer]
    return block.attn.c_proj if sites(lm).family == "gpt2" else block.self_attn.o_proj


def z_at(lm, tokens, layer, pos):
    s = sites(lm)
    with torch.no_grad(), lm.trace(tokens):
        z = _proj(lm, layer).input[:, pos].view(-1, s.n_heads, s.d_head).save()
    return z


def z_whole(lm, tokens, layer, pos):
    s = sites(lm)
    with torch.no_grad(), lm.trace(tokens):
        z = _proj(lm, layer).input.view(*tokens.shape, s.n_heads, s.d_head).save()
    return z


def z_from_attn_output(lm, tokens, layer, pos):
    s = sites(lm)
    block = blocks(lm)[layer]
    attn = block.attn if s.family == "gpt2" else block.self_attn
    with torch.no_grad(), lm.trace(tokens):
        out = attn.output[0][:, pos].reshape(-1, s.n_heads, s.d_head).save()
    return out


def test_z_at_accepts_solution(unit08):
    unit08.check_z_at(z_at)


def test_z_at_rejects(unit08):
    fails(unit08.check_z_at, stub, match="not implemented")
    fails(unit08.check_z_at, z_whole, match="saved the whole sequence")
    fails(unit08.check_z_at, z_from_attn_output, match="attention output")


# exercise 3 -------------------------------------------------------------------------------------------------


def noising_per_position(lm, clean, corrupted, layer, metric):
    batch, n_pos = clean.shape
    stacked = torch.cat([corrupted, clean.repeat(n_pos, 1)])
    with torch.no_grad(), lm.trace(stacked):
        resid = blocks(lm)[layer].input
        source = resid[:batch].clone()
        for p in range(n_pos):
            rows = slice(batch * (1 + p), batch * (2 + p))
            resid[rows, p] = source[:, p]
        logits = lm.output.logits
        values = torch.stack([metric(logits[batch * (1 + p):batch * (2 + p)]).mean() for p in range(n_pos)]).save()
    return values


def one_trace_each(lm, clean, corrupted, layer, metric):
    out = []
    for p in range(clean.shape[1]):
        with torch.no_grad(), lm.trace(corrupted):
            source = blocks(lm)[layer].input[:, p].clone().save()
        with torch.no_grad(), lm.trace(clean):
            blocks(lm)[layer].input[:, p] = source
            out.append(metric(lm.output.logits).mean().save())
    return torch.stack([torch.as_tensor(v) for v in out])


def swapped(lm, clean, corrupted, layer, metric):
    return noising_per_position(lm, corrupted, clean, layer, metric)


def test_noising_accepts_solution(unit08):
    unit08.check_noising_per_position(noising_per_position)


def test_noising_rejects(unit08):
    fails(unit08.check_noising_per_position, stub, match="not implemented")
    fails(unit08.check_noising_per_position, swapped, match="denoising")
    fails(unit08.check_noising_per_position, one_trace_each, match="ONE trace")
