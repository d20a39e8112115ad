"""Figures from tensors and labels. Nothing here computes a result or calls ``.show()``: every function
returns a figure (plotly) or a view (circuitsvis) and the notebook decides to display it.

Submodules (one per kind of figure; each re-exported here):
    basic       labelled imshow, line, scatter, layer x head grids
"""

from mechlab.plot.basic import imshow, layer_head_grid, line, scatter

__all__ = ["imshow", "layer_head_grid", "line", "scatter"]
