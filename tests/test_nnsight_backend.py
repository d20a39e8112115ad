"""The nnsight backend against the TransformerLens bridge path: DLA, exact patching (resid_pre / attn_out / mlp_out /
z), AtP and IG give the same labels and the same numbers (1e-5 in fp32; bf16 tolerances below) on both tiny families
and on the organism, interventions intervene (a write that does nothing is caught), and one trace serves a batch.

Tolerances are relative to a result's largest |value| when that exceeds 1 (the tiny models' weights are scaled x6,
so their effects reach ~2 and fp32 rounding grows with them), absolute below. fp32: 1e-5 for every method on the
organism and on the tiny models, except AtP on the tiny models (1e-4; float64 agrees to 2e-6, so it is rounding).
bf16 (both backends in bf16, the same bf16 weights), measured on the tiny models:
    DLA                1e-3 (the same bf16 forward; the sums are fp32 in both)
    exact patching     2e-3 (the same bf16 forward; only the metric's rounding differs)
    AtP and IG         2e-2 (the bf16 backward runs in a different order)

Skipped, with the reason printed, when nnsight is not installed (``pip install mechlab[nnsight]``).
"""

from __future__ import annotations

import pytest
import torch

from mechlab.backends import nnsight_methods as nm
from mechlab.backends import nnsight_model
from mechlab.core.loading import load_model, organism_available
from mechlab.core.runs import logit_diff_metric
from mechlab.data.ioi import corrupt, ioi_batch, make_ioi
from mechlab.methods import attribution, dla, patching

pytestmark = pytest.mark.skipif(not nnsight_model.nnsight_available(),
                                reason="nnsight is not installed: pip install mechlab[nnsight]")

KINDS = list(nm.NNSIGHT_KINDS)
CORRECT, WRONG = torch.tensor([5, 6]), torch.tensor([8, 9])


def _scaled(name: str, seed: int, dtype=None):
    """A tiny model whose weights are scaled up (at std 0.02 every effect is ~1e-4, too small to tell patches apart)."""
    model = load_model(name, seed=seed, verbose=False, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(6.0)
    return model


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma"])
def pair(request):
    bridge = _scaled(request.param, seed=4)
    return bridge, nnsight_model.twin_of_bridge(bridge)


def _tokens(d_vocab: int = 600):
    gen = torch.Generator().manual_seed(11)
    clean = torch.randint(1, d_vocab, (2, 6), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, d_vocab, (2,), generator=gen)
    corrupted[:, 4] = torch.randint(1, d_vocab, (2,), generator=gen)
    return clean, corrupted


def _same(a, b, atol=1e-5):
    """Same labels and axes; values within ``atol`` times the result's largest |value| (at least ``atol``)."""
    assert a.labels == b.labels
    assert a.axes == b.axes
    gap = float((a.values - b.values).abs().max())
    top = float(a.values.abs().max())
    assert gap <= atol * max(1.0, top), f"backends differ by {gap:.3g} (max |value| {top:.3g})"


# ---------------------------------------------------------------------------------------------------------
# agreement in fp32


def test_the_twin_has_the_bridges_weights(pair):
    bridge, lm = pair
    clean, _ = _tokens()
    with torch.no_grad():
        want = bridge(clean)
    with torch.no_grad(), lm.trace(clean):
        got = lm.output.logits.save()
    # fp32 rounding only: with weights scaled 6x the logits reach 4.05 and the two forwards differ by up to 1.2e-5
    # (transformers 5.23) or 1.5e-5 (5.24); a wrong or unshared weight moves them by far more than 1e-5 x 4.
    gap, top = float((torch.as_tensor(got) - want).abs().max()), float(want.abs().max())
    assert gap <= 1e-5 * max(1.0, top), f"twin and bridge differ by {gap:.3g} (max |logit| {top:.3g})"


def test_dla_agrees(pair):
    bridge, lm = pair
    clean, _ = _tokens()
    want = dla.logit_diff_dla(bridge, clean, CORRECT, WRONG, per_prompt=True)
    got = nm.nnsight_logit_diff_dla(lm, clean, CORRECT, WRONG, per_prompt=True)
    _same(want, got)
    assert abs(got.meta["logit_diff"] - want.meta["logit_diff"]) < 1e-5
    assert torch.allclose(got.values.sum(0), got.meta["logit_diff_per_prompt"], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_position", [True, False])
def test_exact_patching_agrees(pair, kind, per_position):
    bridge, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    direction = "noising" if per_position else "denoising"
    want = patching.activation_patching(bridge, clean, corrupted, metric, kind=kind, per_position=per_position,
                                        direction=direction, effect=True, progress=False)
    got = nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind=kind, per_position=per_position,
                                 direction=direction, effect=True, progress=False)
    _same(want, got)
    assert float(want.values.abs().max()) > 1e-2, "the test pair must move the metric"


def test_patching_in_several_traces_equals_one(pair):
    _, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    one = nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", progress=False)
    # 5 patched copies per trace (plus clean and corrupted): 48 patches -> 10 traces, the last one partial
    many = nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", max_batch=7 * clean.shape[0],
                                          progress=False)
    n_patches = len(one.labels) * clean.shape[1]
    assert one.meta["traces"] == 1 and many.meta["traces"] == -(-n_patches // 5)
    _same(one, many)


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_atp_agrees(pair, direction):
    bridge, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    want = attribution.attribution_patching(bridge, clean, corrupted, metric, kinds=KINDS, direction=direction)
    got = nm.nnsight_attribution_patching(lm, clean, corrupted, metric, kinds=KINDS, direction=direction)
    assert list(got) == KINDS
    for kind in KINDS:
        # 1e-4: on the x6-scaled tiny GPT-2, L0 resid_pre (the embeddings, read through a LayerNorm of a small
        # stream) differs by 6e-5 of its scale in fp32; in float64 the gap is 4e-7 (test below): rounding, not a bug
        _same(want[kind], got[kind], 1e-4)
        assert float(want[kind].values.abs().max()) > 1e-3


def test_atp_agrees_in_float64():
    bridge = _scaled("tiny-gpt2", seed=4).to(torch.float64)
    lm = nnsight_model.twin_of_bridge(bridge)
    clean, corrupted = _tokens()

    def metric(logits):  # in float64 (logit_diff_metric rounds to fp32)
        final = logits[:, -1]
        rows = torch.arange(final.shape[0])
        return final[rows, CORRECT] - final[rows, WRONG]

    want = attribution.attribution_patching(bridge, clean, corrupted, metric, kinds=KINDS)
    got = nm.nnsight_attribution_patching(lm, clean, corrupted, metric, kinds=KINDS)
    for kind in KINDS:
        _same(want[kind], got[kind], 2e-6)


@pytest.mark.parametrize("kind", ["resid_pre", "z", "mlp_out"])
def test_ig_agrees(pair, kind):
    bridge, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    want = attribution.integrated_gradients(bridge, clean, corrupted, metric, kind=kind, steps=5, progress=False)
    got = nm.nnsight_integrated_gradients(lm, clean, corrupted, metric, kind=kind, steps=5, max_batch=8, progress=False)
    assert got.meta["traces"] > 1  # several (layer, alpha) traces, summed
    # 3e-5, not 1e-5: with weights scaled 6x the two backends' sums of five alphas differ by up to 1.1e-5 of the
    # largest value in fp32 (1.6e-5 in fp64, 8e-7 at 20 steps; measured 2026-12-02, bridge IG unchanged by the
    # resumed path in fp64). A wrong alpha, layer or sign moves values by 1e-2 or more.
    _same(want, got, atol=3e-5)


# ---------------------------------------------------------------------------------------------------------
# the organism, loaded straight from its checkpoint on the nnsight side


@pytest.fixture(scope="module")
def organism_pair():
    if not organism_available():
        pytest.skip("the organism checkpoint is not shipped")
    bridge = load_model("organism", device="cpu", verbose=False)
    lm = nnsight_model.organism_language_model()
    samples = make_ioi(4, seed=3, templates=[0])
    clean = ioi_batch(bridge, samples)
    corrupted = ioi_batch(bridge, corrupt(samples, "abc", seed=3))
    return bridge, lm, clean, corrupted


def test_organism_dla_and_atp_agree(organism_pair):
    bridge, lm, clean, corrupted = organism_pair
    want = dla.logit_diff_dla(bridge, clean.tokens, clean.answer, clean.wrong, pos=clean.end)
    got = nm.nnsight_logit_diff_dla(lm, clean.tokens, clean.answer, clean.wrong, pos=clean.end)
    _same(want, got)
    assert got.meta["logit_diff"] > 1.0  # the organism solves IOI
    metric = logit_diff_metric(clean.answer, clean.wrong, pos=clean.end)
    want = attribution.attribution_patching(bridge, clean.tokens, corrupted.tokens, metric, kinds=KINDS)
    got = nm.nnsight_attribution_patching(lm, clean.tokens, corrupted.tokens, metric, kinds=KINDS)
    for kind in KINDS:
        _same(want[kind], got[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_organism_patching_agrees(organism_pair, kind):
    bridge, lm, clean, corrupted = organism_pair
    metric = logit_diff_metric(clean.answer, clean.wrong, pos=clean.end)
    want = patching.activation_patching(bridge, clean.tokens, corrupted.tokens, metric, kind=kind,
                                        per_position=kind != "z", normalise=True, progress=False)
    got = nm.nnsight_activation_patching(lm, clean.tokens, corrupted.tokens, metric, kind=kind,
                                         per_position=kind != "z", normalise=True, progress=False)
    _same(want, got)


def test_organism_ig_agrees(organism_pair):
    bridge, lm, clean, corrupted = organism_pair
    metric = logit_diff_metric(clean.answer, clean.wrong, pos=clean.end)
    want = attribution.integrated_gradients(bridge, clean.tokens, corrupted.tokens, metric, kind="z", steps=4,
                                            progress=False)
    got = nm.nnsight_integrated_gradients(lm, clean.tokens, corrupted.tokens, metric, kind="z", steps=4, progress=False)
    _same(want, got)


# ---------------------------------------------------------------------------------------------------------
# interventions intervene


def test_a_patch_changes_the_output_and_a_no_op_patch_is_caught(pair, monkeypatch):
    bridge, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    want = patching.activation_patching(bridge, clean, corrupted, metric, kind="resid_pre", effect=True,
                                        progress=False)
    real = nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="resid_pre", effect=True, progress=False)
    assert float(real.values.abs().max()) > 1e-2, "patching the corrupted token's residual must move the metric"
    # patching clean into clean changes nothing: every effect is zero
    same = nm.nnsight_activation_patching(lm, clean, clean, metric, kind="resid_pre", effect=True, progress=False)
    assert float(same.values.abs().max()) < 1e-5
    # a write that never reaches the model: every effect is 0, and the comparison with the bridge fails
    monkeypatch.setattr(nm, "_write", lambda *args: None)
    noop = nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="resid_pre", effect=True, progress=False)
    assert float(noop.values.abs().max()) < 1e-6
    with pytest.raises(AssertionError, match="backends differ"):
        _same(want, noop)


def test_ig_with_a_no_op_write_is_caught(pair, monkeypatch):
    bridge, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    want = attribution.integrated_gradients(bridge, clean, corrupted, metric, kind="z", steps=4, progress=False)
    monkeypatch.setattr(nm, "_write", lambda *args: None)
    got = nm.nnsight_integrated_gradients(lm, clean, corrupted, metric, kind="z", steps=4, progress=False)
    assert float(want.values.abs().max()) > 0.1   # a real effect, so that losing it shows
    with pytest.raises(AssertionError, match="backends differ"):   # the comparison fails, nothing else
        _same(want, got)


def test_atp_takes_one_trace(pair, monkeypatch):
    _, lm = pair
    clean, corrupted = _tokens()
    calls = []
    original = type(lm).trace

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape if args else None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(lm), "trace", counting)
    nm.nnsight_attribution_patching(lm, clean, corrupted, logit_diff_metric(CORRECT, WRONG), kinds=KINDS)
    assert calls == [torch.Size([4, 6])]  # baseline and target stacked, one forward + backward


# ---------------------------------------------------------------------------------------------------------
# bf16


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma"])
def test_bf16_tolerances(name):
    bridge = _scaled(name, seed=4, dtype="bfloat16")
    lm = nnsight_model.twin_of_bridge(bridge)  # the same bf16 weights
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    _same(dla.logit_diff_dla(bridge, clean, CORRECT, WRONG), nm.nnsight_logit_diff_dla(lm, clean, CORRECT, WRONG), 1e-3)
    _same(patching.activation_patching(bridge, clean, corrupted, metric, kind="z", progress=False),
          nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", progress=False), 2e-3)
    want = attribution.attribution_patching(bridge, clean, corrupted, metric, kinds=KINDS)
    got = nm.nnsight_attribution_patching(lm, clean, corrupted, metric, kinds=KINDS)
    for kind in KINDS:
        _same(want[kind], got[kind], 0.02)
    _same(attribution.integrated_gradients(bridge, clean, corrupted, metric, kind="z", steps=4, progress=False),
          nm.nnsight_integrated_gradients(lm, clean, corrupted, metric, kind="z", steps=4, progress=False), 0.02)


# ---------------------------------------------------------------------------------------------------------
# refusals


def test_bad_input_is_refused(pair):
    _, lm = pair
    clean, corrupted = _tokens()
    metric = logit_diff_metric(CORRECT, WRONG)
    with pytest.raises(ValueError, match="bridge path"):
        nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="q")
    with pytest.raises(ValueError, match="positions line up"):
        nm.nnsight_attribution_patching(lm, clean, corrupted[:, :5], metric)
    with pytest.raises(ValueError, match="direction"):
        nm.nnsight_attribution_patching(lm, clean, corrupted, metric, direction="forwards")
    with pytest.raises(ValueError, match="integer tensor"):
        nm.nnsight_logit_diff_dla(lm, clean.float(), CORRECT, WRONG)
    with pytest.raises(ValueError, match="layer 7"):
        nm.nnsight_activation_patching(lm, clean, corrupted, metric, kind="z", layers=[7])
    with pytest.raises(ValueError, match="TransformersModel"):
        nm.nnsight_logit_diff_dla(object(), clean, CORRECT, WRONG)


def test_an_unknown_architecture_is_refused():
    class Config:
        model_type = "gemma2"

    with pytest.raises(ValueError, match="gemma2"):
        nnsight_model.sites_of_config(Config())
