"""Bad input at the door of the methods: each case gets one ValueError that names what came, what was expected and
what to do, never a ZeroDivisionError, a torch internal error or a silent NaN."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mechlab.core import loading
from mechlab.core.activations import check_layer, hook_name, names_filter, parse_head
from mechlab.core.runs import logit_diff_metric
from mechlab.methods.ablation import ablation_hooks, ablation_scan, parse_component
from mechlab.methods.attribution import attribution_patching, input_integrated_gradients, integrated_gradients
from mechlab.methods.heads import attention_patterns, compare_heads, head_scores, known_heads
from mechlab.methods.patching import activation_patching
from mechlab.methods.self_repair import backup_slopes, fit_slope, self_repair_sweep


@pytest.fixture(scope="module")
def pair(gpt2_like):
    clean = gpt2_like.to_tokens(["ab ab ab", "cd cd cd"])
    corrupted = gpt2_like.to_tokens(["ab cd ab", "cd ab cd"])
    metric = logit_diff_metric(torch.tensor([98, 99]), torch.tensor([99, 98]))
    return clean, corrupted, metric


def _empty(n_pos: int = 6) -> torch.Tensor:
    return torch.zeros((0, n_pos), dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------
# an empty batch


def test_an_empty_batch_is_refused_by_every_method(gpt2_like):
    metric = logit_diff_metric(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    e = _empty()
    calls = {
        "patching": lambda: activation_patching(gpt2_like, e, e, metric, kind="z", progress=False),
        "AtP": lambda: attribution_patching(gpt2_like, e, e, metric, kinds=["z"]),
        "IG": lambda: integrated_gradients(gpt2_like, e, e, metric, kind="z", steps=2, progress=False),
        "input-embedding IG": lambda: input_integrated_gradients(gpt2_like, e, e, metric, kinds=["z"], steps=2,
                                                                 progress=False),
        "self_repair": lambda: self_repair_sweep(gpt2_like, e, e, heads=["L0H0"], progress=False),
        "ablation": lambda: ablation_scan(gpt2_like, e, metric, components=["L0H0"], progress=False),
    }
    for name, call in calls.items():  # every method reaches the same check
        with pytest.raises(ValueError, match=r"shape \(0, 6\): no prompts.*at least one prompt"):
            call()
            pytest.fail(f"{name} accepted an empty batch")
    with pytest.raises(ValueError, match="no positions"):
        activation_patching(gpt2_like, _empty(0).view(2, 0), _empty(0).view(2, 0), metric, kind="z")


def test_empty_prompt_lists_are_refused(gpt2_like, pair):
    metric = pair[2]
    with pytest.raises(ValueError, match="no prompts"):
        activation_patching(gpt2_like, [], [], metric, kind="z", progress=False)


def test_token_ids_outside_the_vocabulary_are_refused(gpt2_like, pair):
    clean, corrupted, metric = pair
    too_big = clean.clone()
    too_big[0, 1] = gpt2_like.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"ids from .* to {gpt2_like.cfg.d_vocab}.*0\.\.{gpt2_like.cfg.d_vocab - 1}"):
        activation_patching(gpt2_like, too_big, corrupted, metric, kind="z", progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        attribution_patching(gpt2_like, clean, -corrupted, metric, kinds=["z"])


# ---------------------------------------------------------------------------------------------------------
# layers and heads that are not integers


@pytest.mark.parametrize("layer", [1.7, True, 1.0, "1", None])
def test_a_layer_that_is_not_an_int_is_refused_everywhere(gpt2_like, pair, layer):
    clean, corrupted, metric = pair
    calls = [
        lambda: check_layer(gpt2_like, layer),
        lambda: hook_name("z", layer, gpt2_like),
        lambda: names_filter(gpt2_like, ["z"], layers=[layer]),
        lambda: activation_patching(gpt2_like, clean, corrupted, metric, kind="z", layers=[layer], progress=False),
        lambda: attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["z"], layers=[layer]),
        lambda: integrated_gradients(gpt2_like, clean, corrupted, metric, kind="z", layers=[layer], steps=2,
                                     progress=False),
        lambda: input_integrated_gradients(gpt2_like, clean, corrupted, metric, kinds=["z"], layers=[layer],
                                           steps=2, progress=False),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"does not exist: this model has integer layers 0\.\.1\. Pass an int"):
            call()


def test_numpy_and_torch_integers_are_layers(gpt2_like):
    assert check_layer(gpt2_like, np.int64(1)) == 1 and check_layer(gpt2_like, torch.tensor(-1)) == 1
    with pytest.raises(ValueError):
        check_layer(gpt2_like, torch.tensor(True))


def test_layers_that_are_not_a_list_or_are_empty(gpt2_like, pair):
    clean, corrupted, metric = pair
    with pytest.raises(ValueError, match=r"layers=1: expected a list of layer indices such as \[0, 1\]"):
        activation_patching(gpt2_like, clean, corrupted, metric, kind="z", layers=1)
    with pytest.raises(ValueError, match=r"layers=\[\] selects no layer.*pass None"):
        attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["z"], layers=[])


@pytest.mark.parametrize("head", [(1.7, 0), (True, 0), (1, 0.0), (1, 2, 3), (1,)])
def test_a_tuple_head_that_is_not_two_ints_is_refused(gpt2_like, pair, head):
    clean, corrupted, _ = pair
    message = r"is not a \(layer, head\) pair of integers; write it as \(9, 9\) with two ints"
    with pytest.raises(ValueError, match=message):
        parse_head(head, 2, 4)
    with pytest.raises(ValueError, match=message):
        self_repair_sweep(gpt2_like, clean, corrupted, heads=[head], progress=False)
    with pytest.raises(ValueError, match=message):
        parse_component(gpt2_like, head)


def test_a_head_that_is_neither_a_label_nor_a_tuple(gpt2_like):
    for bad in (3, 1.5, None, [1, 0]):
        with pytest.raises(ValueError, match=r"is not understood; write it as 'L9H9', '9.9' or \(9, 9\)"):
            parse_head(bad, 2, 4)
    with pytest.raises(ValueError, match="components are heads 'L{l}H{h}' or \\(l, h\\)"):
        parse_component(gpt2_like, 3)


def test_ablation_takes_the_tuple_it_recommends(gpt2_like, pair):
    """A head given as (layer, head) ablates the same head as 'L{l}H{h}' (the label the result shows)."""
    clean, _, metric = pair
    as_tuple = ablation_scan(gpt2_like, clean, metric, components=[(1, 2), "L0 mlp"], progress=False)
    as_label = ablation_scan(gpt2_like, clean, metric, components=["L1H2", "L0 mlp"], progress=False)
    assert as_tuple.labels == ["L1H2", "L0 mlp"]
    torch.testing.assert_close(as_tuple.values, as_label.values, rtol=0, atol=0)
    assert bool((as_label.values != 0).all())  # the ablations do something, so the comparison can fail
    assert ablation_hooks(gpt2_like, (1, 2))[0][0] == hook_name("z", 1)
    assert len(ablation_hooks(gpt2_like, ("L1H2", "L0H1"))) == 2  # a tuple of labels is still a list of them
    with pytest.raises(ValueError, match="no components"):
        ablation_scan(gpt2_like, clean, metric, components=[], progress=False)


# ---------------------------------------------------------------------------------------------------------
# attribution needs a differentiable metric


def _argmax_metric(logits):
    return (logits[:, -1].argmax(-1) == 98).float()


def _no_grad_metric(logits):
    with torch.no_grad():
        return logits[:, -1, 98] - logits[:, -1, 99]


@pytest.mark.parametrize("metric", [_argmax_metric, _no_grad_metric, lambda lg: lg[:, -1, 98].detach()])
def test_a_metric_without_gradient_is_refused_by_attribution(gpt2_like, pair, metric):
    clean, corrupted, _ = pair
    calls = [
        lambda: attribution_patching(gpt2_like, clean, corrupted, metric, kinds=["z"]),
        lambda: integrated_gradients(gpt2_like, clean, corrupted, metric, kind="z", steps=2, progress=False),
        lambda: input_integrated_gradients(gpt2_like, clean, corrupted, metric, kinds=["z"], steps=2,
                                           progress=False),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="without a gradient.*differentiable metric.*exact activation patching"):
            call()
    # exact patching needs no gradient: the same metric works there
    activation_patching(gpt2_like, clean, corrupted, metric, kind="z", per_position=False, progress=False)


# ---------------------------------------------------------------------------------------------------------
# logit_diff_metric's ids


def test_logit_diff_metric_refuses_ids_it_cannot_read(gpt2_like, pair):
    clean, corrupted, _ = pair
    with pytest.raises(ValueError, match="negative id -1"):
        logit_diff_metric(torch.tensor([-1, 3]), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="dtype torch.float32; expected integer token ids"):
        logit_diff_metric(torch.tensor([1.0, 2.0]), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="expected an int position"):
        logit_diff_metric(torch.tensor([1, 2]), torch.tensor([4, 5]), pos=1.5)
    d_vocab = gpt2_like.cfg.d_vocab
    metric = logit_diff_metric(torch.tensor([3, d_vocab + 5]), torch.tensor([4, 5]))
    with torch.no_grad():
        logits = gpt2_like(clean)
    with pytest.raises(ValueError, match=rf"token id {d_vocab + 5} is out of range for logits over {d_vocab} tokens"):
        metric(logits)
    with pytest.raises(ValueError, match="out of range"):
        activation_patching(gpt2_like, clean, corrupted, metric, kind="z", progress=False)
    with pytest.raises(ValueError, match="built for 2 prompts but got logits for 1"):
        logit_diff_metric(torch.tensor([3, 4]), torch.tensor([4, 5]))(logits[:1])


# ---------------------------------------------------------------------------------------------------------
# fit_slope and backup_slopes with NaN or infinite points


def test_fit_slope_leaves_out_non_finite_points():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, generator=gen)
    y = 0.7 * x + 0.2 + 0.05 * torch.randn(40, generator=gen)
    slope, icpt = np.polyfit(x.numpy(), y.numpy(), 1)
    x_bad, y_bad = torch.cat([x, torch.tensor([float("nan"), 1.0, float("inf")])]), \
        torch.cat([y, torch.tensor([1.0, float("nan"), 2.0])])
    s, c, n = fit_slope(x_bad, y_bad)
    assert n == 40 and s == pytest.approx(slope, abs=1e-9) and c == pytest.approx(icpt, abs=1e-9)
    with pytest.raises(ValueError, match=r"40 of 40 points were NaN or infinite"):
        fit_slope(torch.full((40,), float("nan")), y)


def test_backup_slopes_gives_nan_with_a_reason_for_a_head_with_no_finite_points(gpt2_like, pair):
    clean, corrupted, _ = pair
    result = self_repair_sweep(gpt2_like, clean, corrupted, heads=["L0H0", "L0H1", "L0H2"], progress=False)
    expected = backup_slopes(result)
    result.heads.values[0] = float("nan")  # a head whose compensation is all NaN
    result.heads.values[1, 0, 0] = float("inf")  # one bad point in another
    slopes = backup_slopes(result)
    assert np.isnan(float(slopes.values[0])) and slopes.meta["n_points"][0] == 0
    assert "NaN or infinite" in slopes.meta["reasons"][0]
    x = result.clean_direct_effect().values[1].flatten()[1:]
    y = result.compensation("heads").values[1].flatten()[1:]
    assert float(slopes.values[1]) == pytest.approx(float(np.polyfit(x.double().numpy(), y.double().numpy(), 1)[0]),
                                                    abs=1e-9)
    assert slopes.meta["reasons"][1] is None and slopes.meta["n_points"][1] == x.numel()
    assert float(slopes.values[2]) == float(expected.values[2])  # untouched heads keep their slope


# ---------------------------------------------------------------------------------------------------------
# heads


def test_head_scores_refuse_float_tokens(gpt2_like):
    tokens = gpt2_like.to_tokens(["ab ab ab"]).float()
    with pytest.raises(ValueError, match="integer tensor of shape \\[batch, pos\\].*float32"):
        head_scores(gpt2_like, tokens)
    with pytest.raises(ValueError, match="integer tensor"):
        attention_patterns(gpt2_like, tokens[0].long())


def test_compare_heads_without_known_heads(gpt2_like):
    detected = head_scores(gpt2_like, seq_len=5, batch=1).detected(0.4)
    assert known_heads("tiny-gpt2") is None
    with pytest.raises(ValueError, match="no heads are known for this model.*pass your own dict"):
        compare_heads(detected, known_heads("tiny-gpt2"))
    with pytest.raises(ValueError, match="detected must map head types"):
        compare_heads(["L0H0"], {"induction": ["L0H0"]})
    assert compare_heads(detected, {"induction": ["L9H9"]})["induction"]["missed"] == ["L9H9"]


# ---------------------------------------------------------------------------------------------------------
# loading


def test_a_mistyped_local_path_names_the_path_not_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_model").mkdir()

    def no_network(*args, **kwargs):
        raise AssertionError("a mistyped path must not reach the hub")

    monkeypatch.setattr(loading, "_boot_hub", no_network)
    monkeypatch.setattr(loading, "hub_reachable", no_network)
    with pytest.raises(ValueError) as err:
        loading.load_model("./my_modle", verbose=False)
    text = str(err.value)
    assert "./my_modle" in text and str(tmp_path / "my_modle") in text and "typos" in text
    assert "hub is not reachable" not in text and "huggingface-cli" not in text


def test_a_token_given_to_load_model_does_not_stay_in_the_environment(monkeypatch, gpt2_like):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    seen = {}

    def fake_boot(name, **kwargs):  # stands in for the hub download: nothing touches the network
        seen["name"], seen["token"] = name, os.environ.get("HF_TOKEN")
        return gpt2_like

    monkeypatch.setattr(loading.TransformerBridge, "boot_transformers", staticmethod(fake_boot))
    monkeypatch.setattr(loading, "in_local_hf_cache", lambda name: True)
    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: pytest.fail("the cache was said to hold it"))
    info = gpt2_like.mechlab_info
    try:
        model = loading.load_model("someone/some-model", token="hf_secret", verbose=False)
    finally:
        gpt2_like.mechlab_info = info  # the session fixture is shared
    assert model is gpt2_like and seen == {"name": "someone/some-model", "token": "hf_secret"}
    assert "HF_TOKEN" not in os.environ  # the secret lived in the environment only during the boot

    monkeypatch.setenv("HF_TOKEN", "hf_mine")
    try:
        loading.load_model("someone/some-model", token="hf_other", verbose=False)
    finally:
        gpt2_like.mechlab_info = info
    assert seen["token"] == "hf_other" and os.environ["HF_TOKEN"] == "hf_mine"  # the user's own is restored
