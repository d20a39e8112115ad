"""Unit 06's figures draw exactly what they are given: every point once, the fitted ones apart, the line from the
fit's own slope and intercept over the fitted x-range, and one bar per later head coloured by its sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechlab.core.results import Labelled
from mechlab.methods.self_repair import BackupFit
from mechlab.plot.self_repair import BETTER, WORSE, figure_backup_fit, figure_later_heads


def _fit():
    x = torch.tensor([0.1, 2.0, -0.5, 3.0, 1.0])
    y = torch.tensor([0.0, 0.7, 0.1, 1.2, 0.2])
    kept = torch.tensor([False, True, False, True, True])
    return BackupFit(label="L5H1", x=x, y=y, kept=kept, slope=0.5, intercept=-0.25, which="heads")


def test_backup_fit_figure_holds_every_point_and_the_fitted_line():
    fit = _fit()
    fig = figure_backup_fit(fit, labels=[f"p{i}" for i in range(5)])
    faint, solid, line = fig.data
    np.testing.assert_allclose(np.asarray(solid.x), [2.0, 3.0, 1.0])
    np.testing.assert_allclose(np.asarray(solid.y), [0.7, 1.2, 0.2])
    np.testing.assert_allclose(np.asarray(faint.x), [0.1, -0.5])
    assert list(solid.text) == ["p1", "p3", "p4"]
    np.testing.assert_allclose(np.asarray(line.x), [1.0, 3.0])
    np.testing.assert_allclose(np.asarray(line.y), [0.5 * 1.0 - 0.25, 0.5 * 3.0 - 0.25])
    assert "+0.500" in line.name


def test_backup_fit_figure_refuses_bad_input():
    fit = _fit()
    with pytest.raises(ValueError, match="labels for 5 points"):
        figure_backup_fit(fit, labels=["a"])
    fit.kept = torch.zeros(5, dtype=torch.bool)
    with pytest.raises(ValueError, match="kept no points"):
        figure_backup_fit(fit)


def test_later_heads_bars_are_the_values_coloured_by_sign():
    changes = Labelled(torch.tensor([0.3, -0.2, 0.0]), ["L6H0", "L6H1", "L7H0"], unit="change of direct effect")
    fig = figure_later_heads(changes, ablated="L5H1")
    (bar,) = fig.data
    assert list(bar.x) == ["L6H0", "L6H1", "L7H0"]
    np.testing.assert_allclose(np.asarray(bar.y), [0.3, -0.2, 0.0])
    assert list(bar.marker.color) == [BETTER, WORSE, BETTER]
    assert "L5H1" in fig.layout.title.text
