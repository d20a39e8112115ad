"""Figures from tensors and labels. Nothing here computes a result or calls ``.show()``: every function
returns a figure (plotly) or a view (circuitsvis) and the notebook decides to display it.

Submodules (one per kind of figure; each re-exported here):
    basic       labelled imshow, line, scatter, layer x head grids
    attention   attention views (circuitsvis, offline), per-head heatmaps, head-type score grids
    cot         unit 07: DLA / AtP / q-k-v panels over layers, one problem's per-position map
    ioi_circuit unit 05b: a circuit on the layer x head grid, edges = measured path-patching effects
    toy         unit 03: the toy model's per-head tables
    circuits    unit 03b: composition between heads as a layer-by-layer graph
"""

from mechlab.plot.attention import attention_heatmaps, attention_view, head_type_grids
from mechlab.plot.basic import imshow, layer_head_grid, line, scatter
from mechlab.plot.circuits import composition_graph
from mechlab.plot.cot import figure_atp, figure_dla, figure_position_map, figure_qkv
from mechlab.plot.ioi_circuit import circuit_figure
from mechlab.plot.patching import heatmap_panels
from mechlab.plot.self_repair import figure_backup_fit, figure_later_heads

__all__ = ["imshow", "layer_head_grid", "line", "scatter"]
__all__ += ["attention_heatmaps", "attention_view", "head_type_grids"]
__all__ += ["figure_atp", "figure_dla", "figure_position_map", "figure_qkv"]
__all__ += ["composition_graph"]
__all__ += ["circuit_figure"]
__all__ += ["figure_backup_fit", "figure_later_heads"]
__all__ += ["heatmap_panels"]
