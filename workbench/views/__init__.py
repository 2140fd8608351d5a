"""Views: pure functions from a trace or an analysis table to a plotly ``go.Figure``.

====================================  ===================================================
:func:`token_heatmap`                 token × layer: expert chosen, token text on hover
:func:`load_heatmap`                  layer × expert load (against ``k/E``)
:func:`specialization_heatmap`        label × expert specialisation, one panel per layer
:func:`coactivation_heatmap`          expert × expert co-activation at one layer
:func:`transitions_heatmap`           expert at layer l × expert at the next layer
:func:`entropy_plot`                  router entropy and top-1 margin per layer
:func:`specialization_plot`           label and vocabulary specialisation per layer
:func:`norm_rank_heatmap`             router rank × expert-output-norm rank
:func:`vocab_bar`                     most frequent token ids: share sent to their top expert
====================================  ===================================================

Colour scales are viridis (counts, shares) and cividis (ratios), both readable with colour-vision
deficiency; categories (expert ids, labels) get one colour each from :func:`palette` (Okabe-Ito up to
8, then Paul Tol's schemes up to 23). Figures are at most :data:`MAX_WIDTH` (940) pixels wide, to fit
JupyterLab's output area and the report column. Token text is decoded on character boundaries and
HTML-escaped wherever it appears.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import views
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> trace = wb.record(lm, ["<script>alert(1)</script>"], progress=False)
    >>> "<script>" in views.token_heatmap(trace).to_json()
    False
"""

from workbench.views._style import MAX_WIDTH, escape_token, palette
from workbench.views.experts import (
    coactivation_heatmap,
    load_heatmap,
    matrix_heatmap,
    specialization_heatmap,
    transitions_heatmap,
)
from workbench.views.layers import entropy_plot, norm_rank_heatmap, specialization_plot, vocab_bar
from workbench.views.tokens import token_heatmap, token_heatmap_data

__all__ = [
    "MAX_WIDTH", "coactivation_heatmap", "entropy_plot", "escape_token", "load_heatmap", "matrix_heatmap", "palette",
    "norm_rank_heatmap", "specialization_heatmap", "specialization_plot", "token_heatmap",
    "token_heatmap_data", "transitions_heatmap", "vocab_bar",
]
