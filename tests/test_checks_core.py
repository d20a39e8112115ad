"""run_cases runs every case and reports the most specific failure; it sees in-place edits of arguments and of model
weights (and undoes them), clears hooks left on a model, runs under enable_grad when asked, and names mistakes."""

from __future__ import annotations

import pytest
import torch

from mechlab.checks.core import Case, CheckFailed, clear_hooks, compare_tensors, negated, run_cases
from mechlab.core.activations import hook_name


def double(x):
    return 2 * x


CASES = [Case("first", (torch.arange(3.0),)), Case("second", (torch.ones(2, 2),)),
         Case("third, targeted", (torch.full((4,), 5.0),), hint="is the factor 2 there?")]


def test_passing_counts_every_case(capsys):
    run_cases(lambda x: x + x, double, CASES, name="double")
    assert "double: passed 3 cases" in capsys.readouterr().out


def test_every_case_runs_and_the_targeted_failure_leads():
    def wrong_for_big(x):  # right on the first case only
        return x * 2 if x.numel() == 3 else x * 3

    with pytest.raises(CheckFailed) as info:
        run_cases(wrong_for_big, double, CASES, name="double")
    text = str(info.value)
    assert "2 of 3 cases failed (1 passed)" in text
    assert "Case 'third, targeted'" in text and "is the factor 2 there?" in text
    assert "Failing cases: 'second', 'third, targeted'." in text


def test_an_exception_in_one_case_does_not_stop_the_others():
    def breaks_on_matrices(x):
        if x.ndim == 2:
            raise IndexError("boom")
        return x * 3

    with pytest.raises(CheckFailed) as info:
        run_cases(breaks_on_matrices, double, CASES, name="double")
    text = str(info.value)
    assert "3 of 3 cases failed" in text and "Case 'second': raised IndexError: boom" in text
    assert "'first', 'second', 'third, targeted'" in text


def test_the_stub_says_not_implemented():
    def stub(x):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not implemented yet"):
        run_cases(stub, double, CASES, name="double")


def test_a_named_mistake_is_recognised():
    with pytest.raises(CheckFailed, match="Your output matches this mistake: the sign is flipped"):
        run_cases(lambda x: -2 * x, double, CASES, name="double",
                  mistakes={"halved": lambda x: x / 2, "the sign is flipped": negated(double)})


def test_in_place_edit_of_an_argument_is_caught_and_undone():
    x = torch.arange(4.0)
    cases = [Case("a vector", (x,))]

    def doubles_in_place(x):
        return x.mul_(2)  # returns the right numbers, but edits the input

    with pytest.raises(CheckFailed) as info:
        run_cases(doubles_in_place, double, cases, name="double")
    text = str(info.value)
    assert "modified argument `x` in place" in text and "must not modify its inputs" in text
    assert torch.equal(x, torch.arange(4.0))  # restored


def test_in_place_edit_inside_a_dict_argument_is_caught():
    scales = {"clean": torch.ones(3), "ablated": torch.full((3,), 0.5)}

    def ref(v, scales):
        return v / scales["clean"]

    def edits(v, scales):
        scales["ablated"].fill_(1.0)
        return v / scales["clean"]

    with pytest.raises(CheckFailed, match=r"argument `scales`\['ablated'\]"):
        run_cases(edits, ref, [Case("dict", (torch.arange(3.0), scales))], name="div")
    assert torch.equal(scales["ablated"], torch.full((3,), 0.5))


def test_centring_a_model_weight_in_place_is_caught_and_undone(gpt2_like):
    model = gpt2_like
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(tokens).clone()

    def ref(model, tokens):
        with torch.no_grad():
            return model(tokens)[:, -1]

    def centres_w_o(model, tokens):
        with torch.no_grad():
            W_O = model.blocks[0].attn.W_O
            W_O -= W_O.mean(-1, keepdim=True)
            return model(tokens)[:, -1]

    with pytest.raises(CheckFailed) as info:
        run_cases(centres_w_o, ref, [Case("tiny", (model, tokens))], name="logits")
    text = str(info.value)
    assert "argument `model`'s weight" in text and "in place" in text and "restored" in text
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, atol=0, rtol=0)


def zero_z(z, hook):
    return torch.zeros_like(z)


def final_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[:, -1]


def test_a_leftover_hook_fails_the_case_and_is_removed(gpt2_like):
    model = gpt2_like
    tokens = torch.tensor([[1, 2, 3, 4]])
    want = final_logits(model, tokens)

    def leaves_hook(model, tokens):
        out = final_logits(model, tokens)
        model.add_hook(hook_name("z", 0), zero_z)
        return out

    cases = [Case("one", (model, tokens)), Case("two", (model, tokens))]
    with pytest.raises(CheckFailed, match="you left a hook .* on argument `model`.*with model.hooks"):
        run_cases(leaves_hook, final_logits, cases, name="logits")
    assert clear_hooks(model) == []
    torch.testing.assert_close(final_logits(model, tokens), want)
    run_cases(final_logits, final_logits, cases, name="logits")  # the next check is not poisoned


def test_a_raw_torch_hook_left_behind_is_caught(gpt2_like):
    model = gpt2_like
    tokens = torch.tensor([[5, 6, 7]])

    want = final_logits(model, tokens)
    n_before = len(model.blocks[0].attn._forward_hooks)

    def registers(model, tokens):
        out = final_logits(model, tokens)
        model.blocks[0].attn.register_forward_hook(lambda mod, inp, out: tuple(o * 0 for o in out)
                                                   if isinstance(out, tuple) else out * 0)
        return out

    with pytest.raises(CheckFailed, match="you left a hook"):
        run_cases(registers, final_logits, [Case("one", (model, tokens))], name="logits")
    assert len(model.blocks[0].attn._forward_hooks) == n_before  # removed, not merely reported
    torch.testing.assert_close(final_logits(model, tokens), want)
    run_cases(final_logits, final_logits, [Case("one", (model, tokens))], name="logits")


def test_a_hook_left_by_earlier_code_is_cleared_before_the_case(gpt2_like, capsys):
    model = gpt2_like
    tokens = torch.tensor([[1, 2, 3, 4]])
    want = final_logits(model, tokens)
    model.add_hook(hook_name("z", 1), zero_z)  # a notebook cell's leftover
    run_cases(lambda m, t: want, final_logits, [Case("one", (model, tokens))], name="logits")
    out = capsys.readouterr().out
    assert "had a hook" in out and "removed" in out and "passed 1 cases" in out


def test_grad_true_runs_under_enable_grad_even_when_grad_is_off():
    def needs_grad(x):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((x ** 2).sum(), x)
        return grad

    cases = [Case("vector", (torch.arange(3.0),))]
    with torch.no_grad():
        run_cases(needs_grad, lambda x: 2 * x, cases, name="grad", grad=True)
        with pytest.raises(CheckFailed, match="raised RuntimeError"):
            run_cases(needs_grad, lambda x: 2 * x, cases, name="grad")


def test_integer_reference_refuses_float_answers():
    assert "dtype torch.float32" in compare_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), what="ids")
    assert compare_tensors(torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1, 2])) == ""
    assert compare_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == ""


def test_expect_learned_asserts_on_real_weights_and_skips_on_a_standin(capsys):
    from dataclasses import replace

    from mechlab.checks.core import SKIPPED_ON_STANDIN, expect_learned
    from mechlab.core.loading import ModelInfo

    model = torch.nn.Linear(2, 2)
    model.mechlab_info = ModelInfo(name="gpt2", requested="gpt2", source="hub", device="cpu", dtype="float32",
                                   weights="raw")
    assert expect_learned(model, "IOI answered", True)
    with pytest.raises(AssertionError, match="IOI answered: logit difference -0.1"):
        expect_learned(model, "IOI answered", False, "logit difference -0.1")
    model.mechlab_info = replace(model.mechlab_info, standin=True)
    assert "STAND-IN" in str(model.mechlab_info)
    assert expect_learned(model, "IOI answered", False, "logit difference -0.1") is False
    assert "skipped on a stand-in model: IOI answered" in capsys.readouterr().out
    assert "IOI answered" in SKIPPED_ON_STANDIN
