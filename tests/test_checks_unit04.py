"""Unit 04 checkers: each rejects the stub, a sign flip, a missing LayerNorm scale and an off-by-one position,
and accepts a correct solution written differently from the reference."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks import unit04
from mechlab.checks.core import CheckFailed
from mechlab.core.activations import FINAL_NORM_SCALE, hook_name
from mechlab.methods.dla import logit_diff_dla


def stub(*args):
    raise NotImplementedError("write this function")


# ---- exercise 1


def direction_solution(W_U, correct, incorrect):
    return torch.stack([W_U[:, c] - W_U[:, i] for c, i in zip(correct.tolist(), incorrect.tolist(), strict=True)])


def direction_sign_flip(W_U, correct, incorrect):
    return (W_U[:, incorrect] - W_U[:, correct]).T


def direction_transposed(W_U, correct, incorrect):
    return W_U[:, correct] - W_U[:, incorrect]


def test_direction_checker_accepts_the_solution():
    unit04.check_logit_diff_direction(direction_solution)


@pytest.mark.parametrize("wrong", [stub, direction_sign_flip, direction_transposed])
def test_direction_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit04.check_logit_diff_direction(wrong)


# ---- exercise 2


def head_solution(z, W_O, direction, ln_weight, scale, pos):
    batch, _, n_heads, _ = z.shape
    out = torch.zeros(batch, n_heads)
    for b in range(batch):
        for h in range(n_heads):
            vec = z[b, pos, h] @ W_O[h]
            vec = (vec - vec.mean()) / scale[b, pos, 0]
            out[b, h] = (vec * ln_weight * direction[b]).sum()
    return out


def head_sign_flip(z, W_O, direction, ln_weight, scale, pos):
    return -head_solution(z, W_O, direction, ln_weight, scale, pos)


def head_no_scale(z, W_O, direction, ln_weight, scale, pos):
    return head_solution(z, W_O, direction, ln_weight, torch.ones_like(scale), pos)


def head_scale_off_by_one(z, W_O, direction, ln_weight, scale, pos):
    n_pos = z.shape[1]
    shifted = scale[:, [(p - 1) % n_pos for p in range(n_pos)]]
    return head_solution(z, W_O, direction, ln_weight, shifted, pos)


def head_position_off_by_one(z, W_O, direction, ln_weight, scale, pos):
    return head_solution(z, W_O, direction, ln_weight, scale, (pos - 1) % z.shape[1])


def head_no_centring(z, W_O, direction, ln_weight, scale, pos):
    out = torch.einsum("bhd,hdm->bhm", z[:, pos], W_O) / scale[:, pos, None]
    return torch.einsum("bhm,bm->bh", out * ln_weight, direction)


def head_no_weight(z, W_O, direction, ln_weight, scale, pos):
    return head_solution(z, W_O, direction, torch.ones_like(ln_weight), scale, pos)


def test_head_checker_accepts_the_solution():
    unit04.check_head_dla(head_solution)


@pytest.mark.parametrize("wrong", [stub, head_sign_flip, head_no_scale, head_scale_off_by_one,
                                   head_position_off_by_one, head_no_centring, head_no_weight])
def test_head_checker_rejects(wrong):
    with pytest.raises(CheckFailed):
        unit04.check_head_dla(wrong)


def test_the_reference_agrees_with_the_library_on_a_model(noisy_gpt2):
    """The checker's reference is what mechlab.methods.dla computes for the last layer's heads on a real (tiny)
    GPT-2 whose norm weights and biases are random (weight 1 would hide a missing norm weight on either side)."""
    model = noisy_gpt2
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    correct, incorrect = torch.tensor([3, 4]), torch.tensor([5, 6])
    last = model.cfg.n_layers - 1
    names = {hook_name("z", last), FINAL_NORM_SCALE}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    direction = unit04.logit_diff_direction(model.W_U.detach(), correct, incorrect)
    got = unit04.head_dla(cache[hook_name("z", last)], model.W_O[last].detach(), direction,
                          model.ln_final.weight.detach(), cache[FINAL_NORM_SCALE], -1)
    want = logit_diff_dla(model, tokens, correct, incorrect, per_prompt=True)
    expected = torch.stack([want[f"L{last}H{h}"] for h in range(model.cfg.n_heads)], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def head_centres_w_o_in_place(z, W_O, direction, ln_weight, scale, pos):
    """Centring W_O over d_model equals centring the output, so the numbers are right, but the input is edited."""
    W_O -= W_O.mean(-1, keepdim=True)
    out = torch.einsum("bhd,hdm->bhm", z[:, pos], W_O) / scale[:, pos, None]
    return torch.einsum("bhm,bm->bh", out * ln_weight, direction)


def test_head_checker_catches_centring_w_o_in_place():
    with pytest.raises(CheckFailed, match="modified argument `W_O` in place; it must not modify its inputs"):
        unit04.check_head_dla(head_centres_w_o_in_place)
    unit04.check_head_dla(head_solution)


@pytest.mark.parametrize("wrong, named", [(head_sign_flip, "the sign is flipped"), (head_no_scale, "scale"),
                                          (head_no_centring, "no centring"), (head_no_weight, "weight"),
                                          (head_position_off_by_one, "position before")])
def test_head_checker_names_the_mistake(wrong, named):
    with pytest.raises(CheckFailed, match=f"matches this mistake: .*{named}"):
        unit04.check_head_dla(wrong)


def test_direction_checker_names_the_sign_flip():
    with pytest.raises(CheckFailed, match="matches this mistake: the sign is flipped"):
        unit04.check_logit_diff_direction(direction_sign_flip)
