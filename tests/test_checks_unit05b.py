"""Unit 05b's checkers: the reference passes, and each usual mistake fails with a message that names it."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit05b
from mechlab.checks.core import CheckFailed

# ---------------------------------------------------------------------------------------------------------
# logit_diff_at


def _ld(logits, correct, incorrect, end):
    rows = torch.arange(logits.shape[0])
    return logits[rows, end, correct] - logits[rows, end, incorrect]


def test_logit_diff_at_reference_passes():
    unit05b.check_logit_diff_at(unit05b.reference_logit_diff_at)
    unit05b.check_logit_diff_at(_ld)


@pytest.mark.parametrize("wrong, named", [
    (lambda lg, c, i, e: -_ld(lg, c, i, e), "sign is flipped"),
    (lambda lg, c, i, e: _ld(lg, c, i, e * 0), "first position was read"),
    (lambda lg, c, i, e: _ld(lg, c, i, e - 1), "off by one position"),
    (lambda lg, c, i, e: _ld(lg, c, i, e * 0 + lg.shape[1] - 1), "right-padded"),
])
def test_logit_diff_at_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=named):
        unit05b.check_logit_diff_at(wrong)


# ---------------------------------------------------------------------------------------------------------
# freeze_hook


def _good_hook(clean_z, corrupted_z, heads):
    def hook(act, hook):
        out = clean_z.clone()
        out[:, :, heads] = corrupted_z[:, :, heads]
        return out
    return hook


def _no_return(clean_z, corrupted_z, heads):
    def hook(act, hook):
        act[:] = clean_z
        act[:, :, heads] = corrupted_z[:, :, heads]
    return hook


def _in_place(clean_z, corrupted_z, heads):
    def hook(act, hook):
        clean_z[:, :, heads] = corrupted_z[:, :, heads]
        return clean_z
    return hook


def _swapped_hook(clean_z, corrupted_z, heads):
    return _good_hook(corrupted_z, clean_z, heads)


def test_an_in_place_edit_is_named_and_undone_for_the_next_check():
    def edits_the_clean_tokens(model, clean, corrupted, metric, sender):
        out = _by_hand(model, clean.clone(), corrupted, metric, sender)
        clean[:, 1] = 7  # the slip: writing into an input tensor (here the cached clean tokens)
        return out

    with pytest.raises(CheckFailed, match="edited in place"):
        unit05b.check_path_patch_to_logits(edits_the_clean_tokens)
    unit05b.check_path_patch_to_logits(_by_hand)  # the shared cases were restored


def test_freeze_hook_reference_passes():
    unit05b.check_freeze_hook(unit05b.reference_freeze_hook)
    unit05b.check_freeze_hook(_good_hook)


@pytest.mark.parametrize("wrong, named", [
    (_no_return, "returns nothing"),
    (_in_place, "edited in place"),
    (_swapped_hook, "noising and denoising are swapped"),
])
def test_freeze_hook_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=named):
        unit05b.check_freeze_hook(wrong)


# ---------------------------------------------------------------------------------------------------------
# path patching by hand: one hand-written version, with switches for the usual mistakes


def _caches(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)


def _by_hand(model, clean, corrupted, metric, sender, receivers=None, *, sign=1, swap=False, no_return=False,
             mlps=True, freeze=True, all_heads=False, baseline=True, step_2=True):
    if swap:
        clean, corrupted = corrupted, clean
    clean_logits, cc = _caches(model, clean)
    _, xc = _caches(model, corrupted)
    base = metric(clean_logits) if baseline else 0.0  # the run patched into (the corrupted one when swapped)
    sl, sh = sender
    hooks = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"

        def z_hook(act, hook, name=name, layer=layer):
            new = cc[name].clone() if freeze else act.clone()
            if layer == sl:
                new[:, :, sh] = xc[name][:, :, sh]
            if no_return:  # the classic slip: rebinding the name changes nothing TL sees
                act = new  # noqa: F841
                return None
            return new
        hooks.append((name, z_hook))
        if mlps and freeze:
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook, layer=layer:
                          cc[f"blocks.{layer}.hook_mlp_out"].clone()))
    with torch.no_grad():
        if receivers is None or not step_2:
            return sign * (metric(model.run_with_hooks(clean, fwd_hooks=hooks)) - base)
        layer = receivers[0][0]
        heads = list(range(model.cfg.n_heads)) if all_heads else [h for _, h in receivers]
        seen = {}
        name = f"blocks.{layer}.attn.hook_q"
        model.run_with_hooks(clean, fwd_hooks=hooks + [(name, lambda act, hook: seen.__setitem__("q", act.clone()))])

        def write(act, hook):
            act = act.clone()
            act[:, :, heads] = seen["q"][:, :, heads]
            return act
        return sign * (metric(model.run_with_hooks(clean, fwd_hooks=[(name, write)])) - base)


def test_path_patch_to_logits_reference_passes():
    unit05b.check_path_patch_to_logits(_by_hand)


@pytest.mark.parametrize("mistake, named", [
    ({"sign": -1}, "sign is flipped"),
    ({"swap": True}, "noising and denoising are swapped"),
    ({"no_return": True}, "returns nothing"),
    ({"mlps": False}, "MLPs were recomputed"),
    ({"freeze": False}, "nothing was frozen"),
    ({"baseline": False}, "clean run's metric was not subtracted"),
])
def test_path_patch_to_logits_names_the_mistake(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05b.check_path_patch_to_logits(lambda *a: _by_hand(*a, **mistake))


def test_path_patch_to_queries_reference_passes():
    unit05b.check_path_patch_to_queries(_by_hand)


@pytest.mark.parametrize("mistake, named", [
    ({"sign": -1}, "sign is flipped"),
    ({"swap": True}, "noising and denoising are swapped"),
    ({"mlps": False}, "MLPs were recomputed"),
    ({"all_heads": True}, "every head in the receivers' layer"),
    ({"baseline": False}, "clean run's metric was not subtracted"),
    ({"step_2": False}, "step 2 is missing"),
])
def test_path_patch_to_queries_names_the_mistake(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05b.check_path_patch_to_queries(lambda *a: _by_hand(*a, **mistake))


# ---------------------------------------------------------------------------------------------------------
# denoising path patching to the logits, as a fraction of the gap


def _restored(model, clean, corrupted, metric, sender, *, gap="own", against="corrupted", **mistake):
    """By hand: the noising path patch with the runs' roles swapped, divided by each prompt's gap."""
    with torch.no_grad():
        m_clean, m_corr = metric(model(clean)), metric(model(corrupted))
    change = _by_hand(model, corrupted, clean, metric, sender, **mistake)  # patched - corrupted, per prompt
    if against == "clean":
        change = change + m_corr - m_clean
    if gap == "none":
        return change
    return change / ((m_clean - m_corr).mean() if gap == "mean" else m_clean - m_corr)


def test_denoising_path_to_logits_reference_passes():
    unit05b.check_denoising_path_to_logits(_restored)
    unit05b.check_denoising_path_to_logits(unit05b.reference_denoising_path_to_logits)


@pytest.mark.parametrize("mistake, named", [
    ({"sign": -1}, "sign is flipped"),
    ({"gap": "none"}, "not divided by the gap"),
    ({"gap": "mean"}, "mean gap over prompts"),
    ({"against": "clean"}, "measured from the clean run"),
    ({"mlps": False}, "MLPs were recomputed"),
    ({"freeze": False}, "nothing was frozen"),
    ({"no_return": True}, "returns nothing"),
])
def test_denoising_path_to_logits_names_the_mistake(mistake, named):
    with pytest.raises(CheckFailed, match=named):
        unit05b.check_denoising_path_to_logits(lambda *a: _restored(*a, **mistake))


def test_denoising_path_to_logits_names_noising_done_instead():
    def noising(model, clean, corrupted, metric, sender):
        with torch.no_grad():
            gap = metric(model(clean)) - metric(model(corrupted))
        return _by_hand(model, clean, corrupted, metric, sender) / gap

    with pytest.raises(CheckFailed, match="noising path patch"):
        unit05b.check_denoising_path_to_logits(noising)
