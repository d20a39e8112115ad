"""The memory and download estimates of mechlab.backends.scale against a hand count on a toy shape, and the claims
unit 08 makes from them (a full cache of Llama-3.1-70B does not fit an 80 GB GPU at 8 x 1024; what AtP sends back
is kilobytes)."""

from __future__ import annotations

import pytest

from mechlab.backends.scale import LLAMA_31_70B, ModelShape, download_per_method, memory_per_method
from mechlab.core.preflight import GIB

TOY = ModelShape("toy", n_layers=2, d_model=4, n_heads=2, n_kv_heads=1, d_head=2, d_mlp=8, d_vocab=10, n_params=100)


def test_hand_count_on_a_toy_shape():
    m = memory_per_method(TOY, batch=3, n_pos=5, bytes_per=2, steps=4)
    # per token per layer: 5 * 4 (resid pre/mid/post, attn_out, mlp_out) + (2*2 + 2*1) * 2 (q, z, k, v) + 2 * 8
    # (MLP hidden, pre and post) + 2 * 2 * 5 (scores and pattern over 5 keys) = 20 + 12 + 16 + 20 = 68 elements
    layer = 15 * 68 * 2
    logits = 15 * 10 * 4
    assert m["weights"] * GIB == pytest.approx(200)
    assert m["full cache"] * GIB == pytest.approx(2 * layer + logits)
    assert m["narrow cache (z + resid_pre)"] * GIB == pytest.approx(2 * 15 * (4 + 4) * 2)
    assert m["AtP (forward + backward)"] * GIB == pytest.approx(200 + 2 * (2 * layer + logits))
    assert m["IG (4 steps, one batch)"] * GIB == pytest.approx(200 + 4 * (2 * layer + logits))
    d = download_per_method(TOY, batch=3, n_pos=5)
    assert d["DLA"] == pytest.approx((2 + 2 * 3 + 1) * 3 * 4)


def test_scale_claims_for_70b():
    m = memory_per_method(LLAMA_31_70B, batch=8, n_pos=1024)
    assert m["weights"] > 120  # bf16 weights alone exceed one 80 GB GPU
    assert m["full cache"] > 80
    assert m["narrow cache (z + resid_pre)"] < m["full cache"] / 10
    d = download_per_method(LLAMA_31_70B, batch=8, n_pos=1024)
    assert d["AtP (all kinds)"] < 30 * 2 ** 20 < d["full cache"]  # tens of MB at most vs gigabytes


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch"):
        memory_per_method(TOY, batch=0, n_pos=5)
