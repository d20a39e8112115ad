"""Shared fixtures: tiny random-init models of both families, built once per test session.

- ``gpt2_like``: LayerNorm, learned positions (2 layers, 4 heads, d_model 64)
- ``gemma_like``: RMSNorm, rotary, multi-query attention (2 layers, 4 query heads, 1 K/V head)
- ``tiny_model``: parametrized over both

Run the suite on another device with ``pytest --device cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
