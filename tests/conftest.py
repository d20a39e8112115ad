"""Shared fixtures: tiny random-init models of both families, built once per test session.

- ``gpt2_like``: LayerNorm, learned positions (2 layers, 4 heads, d_model 64)
- ``gemma_like``: RMSNorm, rotary, multi-query attention (2 layers, 4 query heads, 1 K/V head)
- ``tiny_model``: parametrized over both
- ``noisy_gpt2``, ``noisy_gemma``, ``noisy_model`` (both): fresh copies whose 1-d parameters (norm weights and
  biases, linear biases) are random. Random init leaves them at 1 and 0, where a missing norm weight, norm bias,
  ``b_O`` or ``1 +`` offset changes nothing; tests of folding, lenses and norm-reading references use these.

Run the suite on another device with ``pytest --device cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # MKL's first-call race (mechlab.core.cpu_math): settle it before any test runs torch on several threads
    from mechlab.core.cpu_math import warm_up_vector_math

    warm_up_vector_math()


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for model fixtures (cpu, cuda, mps)")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def gpt2_like(device):
    from mechlab.core.loading import load_model

    return load_model("tiny-gpt2", device=device, seed=1, verbose=False)


@pytest.fixture(scope="session")
def gemma_like(device):
    from mechlab.core.loading import load_model

    return load_model("tiny-gemma", device=device, seed=2, verbose=False)


@pytest.fixture(params=["gpt2_like", "gemma_like"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


def perturb_1d(model, seed: int = 7, size: float = 0.3):
    """Add seeded noise to every 1-d parameter of ``model`` in place (the same noise for the same architecture and
    seed, so two copies can be perturbed identically) and return it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(size * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
    return model


@pytest.fixture(scope="session")
def perturbed():
    """``perturbed(model, seed=7)``: :func:`perturb_1d`, for tests that build their own copies."""
    return perturb_1d


@pytest.fixture(scope="session")
def noisy_gpt2(device):
    from mechlab.core.loading import load_model

    return perturb_1d(load_model("tiny-gpt2", device=device, seed=5, verbose=False))


@pytest.fixture(scope="session")
def noisy_gemma(device):
    from mechlab.core.loading import load_model

    return perturb_1d(load_model("tiny-gemma", device=device, seed=5, verbose=False))


@pytest.fixture(params=["noisy_gpt2", "noisy_gemma"])
def noisy_model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
