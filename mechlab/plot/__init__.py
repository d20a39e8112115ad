"""Figures from tensors and labels. Nothing here computes a result or calls ``.show()``: every function
returns a figure (plotly) or a view (circuitsvis) and the notebook decides to display it.

Submodules (one per kind of figure; each re-exported here):
    basic       labelled imshow, line, scatter, layer x head grids
    attention   attention views (circuitsvis, offline), per-head heatmaps, head-type score grids
    cot         unit 07: DLA / AtP / q-k-v panels over layers, one problem's per-position map
    toy         unit 03: the toy model's per-head tables
"""

from mechlab.plot.attention import attention_heatmaps, attention_view, head_type_grids
from mechlab.plot.basic import imshow, layer_head_grid, line, scatter
from mechlab.plot.cot import figure_atp, figure_dla, figure_position_map, figure_qkv
from mechlab.plot.patching import heatmap_panels

__all__ = ["imshow", "layer_head_grid", "line", "scatter"]
__all__ += ["attention_heatmaps", "attention_view", "head_type_grids"]
__all__ += ["figure_atp", "figure_dla", "figure_position_map", "figure_qkv"]
__all__ += ["heatmap_panels"]
