"""Unit 07's figures arrange results faithfully: each panel holds its grid's numbers with the right labels, and all
panels share one colour scale centred on 0 (so red and blue mean the same size everywhere)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mechlab.core.results import Labelled
from mechlab.plot.cot import figure_atp, figure_dla, figure_position_map, figure_qkv


def _atp(grids: dict[str, torch.Tensor], method: str = "atp"):
    return SimpleNamespace(per_problem=dict.fromkeys(grids), grid=lambda k, n_layers: grids[k], method=method,
                           subtask="S1", reduce="sum", n_problems=3)


def test_qkv_panels_of_a_multi_query_model():
    g = torch.Generator().manual_seed(0)
    grids = {"q": torch.randn(2, 4, generator=g), "k": torch.randn(2, 1, generator=g),
             "v": 5 * torch.randn(2, 1, generator=g)}
    fig = figure_qkv(_atp(grids), 2)
    assert [list(t.x) for t in fig.data] == [["H0", "H1", "H2", "H3"], ["KV0"], ["KV0"]]
    for trace, grid in zip(fig.data, grids.values(), strict=True):
        np.testing.assert_allclose(np.asarray(trace.z), grid.numpy())
        assert list(trace.y) == ["L0", "L1"]
    zmax = max(float(x.abs().max()) for x in grids.values())
    assert fig.layout.coloraxis.cmin == pytest.approx(-zmax) and fig.layout.coloraxis.cmax == pytest.approx(zmax)
    assert "sum over positions" in fig.layout.title.text
    assert "exact whole-component" in figure_qkv(_atp(grids, "exact"), 2).layout.title.text
    with pytest.raises(ValueError, match="needs q, k or v"):
        figure_qkv(_atp({"z": grids["q"]}), 2)


def test_atp_panels_hold_the_grids():
    g = torch.Generator().manual_seed(1)
    grids = {"resid_pre": torch.randn(3, 1, generator=g), "mlp_out": torch.randn(3, 1, generator=g),
             "z": torch.randn(3, 4, generator=g)}
    fig = figure_atp(_atp(grids, "ig"), 3)
    assert [list(t.x) for t in fig.data] == [["resid_pre"], ["mlp_out"], ["H0", "H1", "H2", "H3"]]
    for trace, grid in zip(fig.data, grids.values(), strict=True):
        np.testing.assert_allclose(np.asarray(trace.z), grid.numpy())
    assert fig.layout.title.text.startswith("IG (noising), sum over positions, S1")


def test_dla_panels_and_position_map():
    heads = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    resid = Labelled(torch.tensor([0.1, 0.4, 2.5]), ["L0 resid_pre", "L1 resid_pre", "final"])
    dla = SimpleNamespace(resid=resid, mlps=lambda: torch.tensor([0.2, -4.0]), heads=lambda: heads, n_layers=2,
                          n_heads=2, subtask="S2", n_problems=5)
    fig = figure_dla(dla)
    assert [list(t.x) for t in fig.data] == [["resid"], ["mlp"], ["H0", "H1"]]
    assert list(fig.data[0].y) == resid.labels
    np.testing.assert_allclose(np.asarray(fig.data[2].z), heads.numpy())
    assert fig.layout.coloraxis.cmax == pytest.approx(4.0)

    values = torch.arange(12.0).reshape(2, 6)
    result = Labelled(values, ["L0H0", "L0H1"], axes=("component", "pos"))
    fig = figure_position_map(result, ["a", "b", "c", "d", "e", "f"], last=3)
    assert list(fig.data[0].x) == ["3: 'd'", "4: 'e'", "5: 'f'"]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), values[:, -3:].numpy())


def test_atp_figure_draws_the_mlp_panel_from_another_result():
    g = torch.Generator().manual_seed(2)
    grids = {"resid_pre": torch.randn(3, 1, generator=g), "mlp_out": torch.randn(3, 1, generator=g),
             "z": torch.randn(3, 4, generator=g)}
    exact_mlp = 10 * torch.randn(3, 1, generator=g)
    fig = figure_atp(_atp(grids), 3, mlp=_atp({"mlp_out": exact_mlp}, "exact"))
    np.testing.assert_allclose(np.asarray(fig.data[1].z), exact_mlp.numpy())
    np.testing.assert_allclose(np.asarray(fig.data[2].z), grids["z"].numpy())
    assert fig.layout.annotations[1].text == "mlp_out (exact)"
    assert "MLPs: exact whole-component" in fig.layout.title.text
    assert fig.layout.coloraxis.cmax == pytest.approx(float(exact_mlp.abs().max()))
    with pytest.raises(ValueError, match="must hold mlp_out"):
        figure_atp(_atp(grids), 3, mlp=_atp({"z": grids["z"]}, "exact"))
