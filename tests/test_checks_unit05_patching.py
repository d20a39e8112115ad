"""The unit 05 exact-patching checkers accept hand-written solutions and reject named wrong versions with a message
that names the mistake: a sign flip, noising and denoising swapped, an off-by-one position, a hook that returns
nothing, an in-place edit of a cached tensor, the first position read instead of the last, and a few more."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit05
from mechlab.checks.core import CheckFailed


def _cache(model, tokens, names):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return cache


def _mean_metric(model, tokens, metric, hooks=()):
    with torch.no_grad():
        return metric(model.run_with_hooks(tokens, fwd_hooks=list(hooks))).mean()


# --- solutions, as a learner would write them, with switches for the mistakes


def patching_hook(source, pos=None, head=None, *, mistake=None):
    p = slice(None) if pos is None else pos
    if mistake == "off by one" and pos is not None:
        p = pos + 1  # the learner's off-by-one; a whole-axis patch (pos None) has no position to shift

    def hook(act, hook):
        if mistake == "no return":
            act = act.clone()
            act[:, p] = source[:, p]  # rebinding a copy and returning nothing: a silent no-op
            return None
        if mistake == "in place":
            patched = source  # the cached tensor itself
            keep = torch.ones(act.shape[1], dtype=torch.bool)
            keep[p] = False
            patched[:, keep] = act[:, keep]
            return patched
        out = act.clone()
        if head is None or mistake == "every head":
            out[:, p] = source[:, p]
        else:
            out[:, p, head] = source[:, p, head]
        return out

    return hook


def resid_pre_patching(model, clean, corrupted, metric, direction="noising", *, mistake=None):
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    if mistake == "swapped":
        base, src = src, base
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    src_cache, base_cache = _cache(model, src, names), _cache(model, base, names)
    m_base = _mean_metric(model, base, metric)
    n_pos = base.shape[1]
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for layer, name in enumerate(names):
        for pos in range(n_pos):
            if mistake == "in place":
                patched = base_cache[name]  # no clone: earlier patches stay in the cache
                patched[:, pos] = src_cache[name][:, pos]

                def hook(act, hook, patched=patched):
                    return patched  # the cache itself, carrying every earlier patch of this layer
            else:
                p = pos - 1 if mistake == "off by one" else pos

                def hook(act, hook, name=name, p=p):
                    out_act = act.clone()
                    out_act[:, p] = src_cache[name][:, p]
                    return out_act
            effect = _mean_metric(model, base, metric, [(name, hook)]) - m_base
            out[layer, pos] = -effect if mistake == "sign" else effect
    return out


def head_patching(model, clean, corrupted, metric, kind="z", direction="noising", *, mistake=None):
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    if mistake == "swapped":
        base, src = src, base
    names = [f"blocks.{layer}.attn.hook_{kind}" for layer in range(model.cfg.n_layers)]
    src_cache = _cache(model, src, names)
    m_base = _mean_metric(model, base, metric)
    n_heads = src_cache[names[0]].shape[2]
    out = torch.zeros(model.cfg.n_layers, n_heads)
    for layer, name in enumerate(names):
        for head in range(n_heads):
            def hook(act, hook, name=name, head=head):
                if mistake == "no return":
                    act = src_cache[name]  # noqa: F841  (rebinds a local name: nothing reaches the model)
                    return None
                out_act = act.clone()
                if mistake == "whole layer":
                    out_act[:] = src_cache[name]
                else:
                    out_act[:, :, head] = src_cache[name][:, :, head]
                return out_act
            effect = _mean_metric(model, base, metric, [(name, hook)]) - m_base
            out[layer, head] = -effect if mistake == "sign" else effect
    return out


def head_position_patching(model, clean, corrupted, metric, direction="noising", *, mistake=None):
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    if mistake == "swapped":
        base, src = src, base
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    src_cache = _cache(model, src, names)
    m_base = _mean_metric(model, base, metric)
    n_pos = base.shape[1]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, n_pos)
    for layer, name in enumerate(names):
        for head in range(model.cfg.n_heads):
            for pos in range(n_pos):
                p = min(pos + 1, n_pos - 1) if mistake == "off by one" else pos

                def hook(act, hook, name=name, head=head, p=p):
                    out_act = act.clone()
                    out_act[:, p, head] = src_cache[name][:, p, head]
                    return out_act
                effect = _mean_metric(model, base, metric, [(name, hook)]) - m_base
                out[layer, head, pos] = -effect if mistake == "sign" else effect
    return out


def pattern_patching(model, clean, corrupted, metric, direction="noising", *, mistake=None):
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    if mistake == "swapped":
        base, src = src, base
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    src_cache = _cache(model, src, names)
    m_base = _mean_metric(model, base, metric)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer, name in enumerate(names):
        for head in range(model.cfg.n_heads):
            def hook(pattern, hook, name=name, head=head):
                if mistake == "no return":
                    pattern = src_cache[name]  # noqa: F841
                    return None
                out_p = pattern.clone()
                if mistake == "wrong axis":
                    out_p[:, :, head] = src_cache[name][:, :, head]
                else:
                    out_p[:, head] = src_cache[name][:, head]
                return out_p
            effect = _mean_metric(model, base, metric, [(name, hook)]) - m_base
            out[layer, head] = -effect if mistake == "sign" else effect
    return out


def calibrated_metric(logits, answer, wrong, clean_value, corrupted_value, *, mistake=None):
    pos = {"first": 0, "off by one": -2}.get(mistake, -1)
    final = logits[:, pos]
    ld = final.gather(-1, answer[:, None])[:, 0] - final.gather(-1, wrong[:, None])[:, 0]
    if mistake == "sign":
        ld = -ld
    if mistake == "reversed":
        return (ld - clean_value) / (corrupted_value - clean_value)
    return (ld - corrupted_value) / (clean_value - corrupted_value)


# --- the tests


def _with(fn, mistake):
    return lambda *args: fn(*args, mistake=mistake)


def _stub(*args):
    raise NotImplementedError("stub")


def test_patching_hook_accepts_solution():
    unit05.check_patching_hook(patching_hook)


@pytest.mark.parametrize(("mistake", "named"), [
    ("no return", "return"),
    ("in place", "in-place edit of a cached tensor"),
    ("off by one", "off-by-one"),
    ("every head", "every head"),
])
def test_patching_hook_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_patching_hook(lambda source, pos=None, head=None: patching_hook(source, pos, head,
                                                                                   mistake=mistake))


def test_resid_pre_checker_accepts_solution():
    unit05.check_resid_pre_patching(resid_pre_patching)


@pytest.mark.parametrize(("mistake", "named"), [
    ("sign", "sign flip"),
    ("swapped", "noising and denoising swapped"),
    ("off by one", "off-by-one"),
    ("in place", "in-place edit of a cached tensor"),
])
def test_resid_pre_checker_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_resid_pre_patching(_with(resid_pre_patching, mistake))


def test_head_checker_accepts_solution():
    unit05.check_head_patching(head_patching)


@pytest.mark.parametrize(("mistake", "named"), [
    ("sign", "sign flip"),
    ("swapped", "noising and denoising swapped"),
    ("no return", "return"),
    ("whole layer", "whole layer"),
])
def test_head_checker_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_head_patching(_with(head_patching, mistake))


def test_head_position_checker_accepts_solution():
    unit05.check_head_position_patching(head_position_patching)


@pytest.mark.parametrize(("mistake", "named"), [
    ("sign", "sign flip"),
    ("swapped", "noising and denoising swapped"),
    ("off by one", "off-by-one"),
])
def test_head_position_checker_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_head_position_patching(_with(head_position_patching, mistake))


def test_pattern_checker_accepts_solution():
    unit05.check_pattern_patching(pattern_patching)


@pytest.mark.parametrize(("mistake", "named"), [
    ("sign", "sign flip"),
    ("swapped", "noising and denoising swapped"),
    ("no return", "return"),
    ("wrong axis", "wrong axis"),
])
def test_pattern_checker_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_pattern_patching(_with(pattern_patching, mistake))


def test_calibrated_metric_accepts_solution():
    unit05.check_calibrated_metric(calibrated_metric)


@pytest.mark.parametrize(("mistake", "named"), [
    ("first", "first position"),
    ("off by one", "off-by-one"),
    ("sign", "sign flipped"),
    ("reversed", "calibration reversed"),
])
def test_calibrated_metric_rejects(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05.check_calibrated_metric(_with(calibrated_metric, mistake))


@pytest.mark.parametrize("check", [unit05.check_patching_hook, unit05.check_resid_pre_patching,
                                   unit05.check_head_patching, unit05.check_head_position_patching,
                                   unit05.check_pattern_patching, unit05.check_calibrated_metric])
def test_checkers_reject_the_stub(check):
    with pytest.raises(CheckFailed, match="not implemented"):
        check(_stub)
