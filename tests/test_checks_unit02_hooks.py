"""The unit-02 hook checkers accept hand-written solutions (plain hooks, no mechlab method) and reject the
mistakes learners make with a message that names each one: a hook that returns nothing, an in-place edit, a hook
left attached, off-by-one positions, a sign flip."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit02
from mechlab.checks.core import CheckFailed
from mechlab.core.activations import FINAL_NORM_SCALE, hook_name, parse_head


def stub(*args):
    raise NotImplementedError("Exercise: replace this line with your solution.")


def rejects(check, wrong, match):
    with pytest.raises(CheckFailed, match=match):
        check(wrong)


# ---- 1. recording ----------------------------------------------------------------------------------------


def record_solution(model, tokens, name):
    stored = {}

    def keep(act, hook):
        stored["act"] = act.detach().clone()

    with model.hooks(fwd_hooks=[(name, keep)]):
        logits = model(tokens)
    return logits, stored["act"]


def record_leaks_hook(model, tokens, name):
    stored = {}
    model.add_hook(name, lambda act, hook: stored.__setitem__("act", act))
    return model(tokens), stored["act"]


def record_edits_in_place(model, tokens, name):
    stored = {}

    def keep(act, hook):
        act -= act.mean(-1, keepdim=True)  # "centre it for plotting": also centres what the model uses next
        stored["act"] = act

    with model.hooks(fwd_hooks=[(name, keep)]):
        logits = model(tokens)
    return logits, stored["act"]


def record_rebinds(model, tokens, name):
    stored = None

    def keep(act, hook):
        stored = act  # noqa: F841 - the bug: a local name, gone when the hook returns

    with model.hooks(fwd_hooks=[(name, keep)]):
        logits = model(tokens)
    return logits, stored


def record_first_prompt(model, tokens, name):
    logits, act = record_solution(model, tokens, name)
    return logits, act[0]


def record_layer_off_by_one(model, tokens, name):
    layer = int(name.split(".")[1])
    other = name.replace(f"blocks.{layer}.", f"blocks.{1 - layer}.")
    logits, _ = record_solution(model, tokens, name)
    return logits, record_solution(model, tokens, other)[1]


def test_record_accepts_solution(capsys):
    unit02.check_record_activation(record_solution)
    assert "passed 6 cases" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, match", [
    (stub, "not implemented"),
    (record_leaks_hook, "still attached"),
    (record_edits_in_place, "in-place edit"),
    (record_rebinds, "rebind a local name"),
    (record_first_prompt, "first prompt"),
    (record_layer_off_by_one, "off by one layer"),
])
def test_record_rejects(wrong, match):
    rejects(unit02.check_record_activation, wrong, match)


def test_record_leak_is_cleaned_up(gpt2_like):
    with pytest.raises(CheckFailed):
        unit02.check_record_activation(record_leaks_hook)
    for model in (unit02._tiny("gpt2"), unit02._tiny("gemma")):
        assert unit02._attached_hooks(model) == [], "the checker must remove the hook it reported"


# ---- 2. ablating a head ----------------------------------------------------------------------------------


def ablation_solution(head, mean=None):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0 if mean is None else mean[:, head]
        return z
    return hook


def ablation_in_place_solution(head, mean=None):  # editing the activation in place and returning it is fine
    def hook(z, hook):
        z[:, :, head] = 0.0 if mean is None else mean[:, head]
        return z
    return hook


def ablation_no_op(head, mean=None):  # the seed's bug: rebinds a local name, returns nothing
    def hook(z, hook):
        new = z.clone()
        new[:, :, head] = 0.0 if mean is None else mean[:, head]
        z = new  # noqa: F841
    return hook


def ablation_wrong_axis(head, mean=None):
    def hook(z, hook):
        z = z.clone()
        z[:, head] = 0.0 if mean is None else mean[head]
        return z
    return hook


def ablation_edits_mean(head, mean=None):
    def hook(z, hook):
        if mean is None:
            z = z.clone()
            z[:, :, head] = 0.0
            return z
        out = mean.expand_as(z).clone()
        mean[:, :head] = z[0, :, :head]  # "borrow the other heads": writes into the cached mean
        out[:, :, :head] = z[:, :, :head]
        out[:, :, head + 1:] = z[:, :, head + 1:]
        return out
    return hook


def ablation_all_heads(head, mean=None):
    def hook(z, hook):
        return torch.zeros_like(z) if mean is None else mean.expand_as(z).clone()
    return hook


def ablation_ignores_mean(head, mean=None):
    return ablation_solution(head, None)


def test_ablation_accepts_solutions():
    unit02.check_head_ablation_hook(ablation_solution)
    unit02.check_head_ablation_hook(ablation_in_place_solution)


@pytest.mark.parametrize("wrong, match", [
    (stub, "not implemented"),
    (ablation_no_op, "returns nothing"),
    (ablation_wrong_axis, "ablated position"),
    (ablation_edits_mean, "edited `mean` in place"),
    (ablation_all_heads, "every head"),
    (ablation_ignores_mean, "zero-ablated although a mean"),
])
def test_ablation_rejects(wrong, match):
    rejects(unit02.check_head_ablation_hook, wrong, match)


# ---- 3. induction scores in one pass -----------------------------------------------------------------------


def induction_solution(model, tokens, seq_len):
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)

    def score(pattern, hook):
        layer = int(hook.name.split(".")[1])
        for q in range(seq_len + 1, 2 * seq_len + 1):
            scores[layer] += pattern[:, :, q, q - seq_len + 1].mean(0).cpu()

    with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), score)]):
        model(tokens)
    return scores / seq_len


def induction_with_offset(offset_from_seq_len, first_query_from_seq_len=1):
    def fn(model, tokens, seq_len):
        out = []

        def score(pattern, hook):
            q = torch.arange(seq_len + first_query_from_seq_len, 2 * seq_len + 1)
            out.append(pattern[:, :, q, q - seq_len + offset_from_seq_len].mean((0, -1)).cpu())

        with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), score)]):
            model(tokens)
        return torch.stack(out)
    return fn


def induction_one_pass_per_layer(model, tokens, seq_len):
    rows = []
    for layer in range(model.cfg.n_layers):
        def score(pattern, hook):
            q = torch.arange(seq_len + 1, 2 * seq_len + 1)
            rows.append(pattern[:, :, q, q - seq_len + 1].mean((0, -1)).cpu())
        with model.hooks(fwd_hooks=[(hook_name("pattern", layer), score)]):
            model(tokens)
    return torch.stack(rows)


def induction_last_layer_only(model, tokens, seq_len):
    return induction_solution(model, tokens, seq_len)[-1]


def test_induction_accepts_solution():
    unit02.check_induction_one_pass(induction_solution)


@pytest.mark.parametrize("wrong, match", [
    (stub, "not implemented"),
    (induction_with_offset(0), "duplicate-token key"),
    (induction_with_offset(2), "one past the induction key"),
    (induction_with_offset(1, -1), "first-half queries"),
    (induction_with_offset(1, 2), "first second-half query"),
    (induction_one_pass_per_layer, "forward passes"),
    (induction_last_layer_only, "one layer's heads"),
])
def test_induction_rejects(wrong, match):
    rejects(unit02.check_induction_one_pass, wrong, match)


# ---- 4. second-half loss under ablation --------------------------------------------------------------------


def _zero_heads_hooks(model, ablate):
    by_layer = {}
    for label in ablate:
        layer, head = parse_head(label, model.cfg.n_layers, model.cfg.n_heads)
        by_layer.setdefault(layer, []).append(head)

    def make(heads):
        def hook(z, hook):
            z = z.clone()
            z[:, :, heads] = 0.0
            return z
        return hook
    return [(hook_name("z", layer), make(hs)) for layer, hs in by_layer.items()]


def loss_solution(model, tokens, seq_len, ablate):
    with model.hooks(fwd_hooks=_zero_heads_hooks(model, ablate)):
        logits = model(tokens)
    log_probs = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return -log_probs[:, seq_len + 1:].mean()


def loss_variant(start_shift=1, sign=-1.0, shifted=True, no_op=False):
    def fn(model, tokens, seq_len, ablate):
        with model.hooks(fwd_hooks=[] if no_op else _zero_heads_hooks(model, ablate)):
            logits = model(tokens)
        if shifted:
            lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        else:
            lp = logits.log_softmax(-1).gather(-1, tokens[:, :, None])[..., 0]
        return sign * lp[:, seq_len + start_shift:].mean()
    return fn


def loss_no_op_hook(model, tokens, seq_len, ablate):
    def hook(z, hook):
        z = torch.zeros_like(z)  # noqa: F841
    names = {hook_name("z", parse_head(a, model.cfg.n_layers, model.cfg.n_heads)[0]) for a in ablate}
    with model.hooks(fwd_hooks=[(n, hook) for n in names]):
        logits = model(tokens)
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return -lp[:, seq_len + 1:].mean()


def test_loss_accepts_solution():
    unit02.check_second_half_loss(loss_solution)


@pytest.mark.parametrize("wrong, match", [
    (stub, "not implemented"),
    (loss_variant(sign=1.0), "sign flip"),
    (loss_variant(start_shift=0), "predicts r_1"),
    (loss_variant(start_shift=2), "first predictable token"),
    (loss_variant(shifted=False), "not shifted"),
    (loss_no_op_hook, "not ablated"),
])
def test_loss_rejects(wrong, match):
    rejects(unit02.check_second_half_loss, wrong, match)


# ---- 5. copying DLA, by hand (independent of mechlab.methods.dla) -----------------------------------------


def dla_solution(model, tokens, seq_len, *, shift=1, first=None, sign=1.0):
    first = seq_len + 1 if first is None else first
    names = [hook_name("z", layer) for layer in range(model.cfg.n_layers)] + [FINAL_NORM_SCALE]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    pos = torch.arange(first, 2 * seq_len)
    target = tokens[:, pos + shift]  # [batch, n]
    readout = model.W_U.detach().T[target]  # [batch, n, d_model]
    weight = model.ln_final.weight.detach()
    if model.cfg.normalization_type != "LN":
        weight = weight + 1.0  # Gemma's RMSNorm multiplies by 1 + weight
    scale = cache[FINAL_NORM_SCALE][:, pos]  # [batch, n, 1]
    rows = []
    for layer in range(model.cfg.n_layers):
        out = torch.einsum("bnhd,hdm->bnhm", cache[hook_name("z", layer)][:, pos], model.W_O[layer].detach())
        if model.cfg.normalization_type == "LN":
            out = out - out.mean(-1, keepdim=True)
        rows.append(torch.einsum("bnhm,bnm->h", out / scale[..., None] * weight, readout) / pos.numel()
                    / tokens.shape[0])
    return sign * torch.stack(rows).cpu()


def test_dla_accepts_hand_solution():
    unit02.check_copying_dla(dla_solution)


@pytest.mark.parametrize("wrong, match", [
    (stub, "not implemented"),
    (lambda m, t, n: dla_solution(m, t, n, sign=-1.0), "sign flip"),
    (lambda m, t, n: dla_solution(m, t, n, shift=0), "current token"),
    (lambda m, t, n: dla_solution(m, t, n, first=n), "predicting r_1"),
    (lambda m, t, n: dla_solution(m, t, n, first=1), "first-half positions"),
])
def test_dla_rejects(wrong, match):
    rejects(unit02.check_copying_dla, wrong, match)
