"""ipywidgets panels that wire controls to views and analyses (plotly ``go.FigureWidget`` inside).

* :class:`RoutingExplorer` — layer × expert map and a document's token × layer map; choose layers,
  label, metric, document; click a cell to see the tokens routed there in context; export buttons.
* :class:`ExpertCard` — one expert: load, labels, co-activated experts, top tokens, output norms.

Widgets hold no analysis logic of their own: they read a
:class:`~workbench.analysis.TraceCounts` computed once per trace and call the views. Drive them from
code by setting control values (``explorer.label.value = "code"``).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets import RoutingExplorer
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> explorer = RoutingExplorer(wb.record(lm, ["hello", "world"], progress=False))
    >>> explorer.layers.value = (1,)
    >>> explorer.matrix_fig.data[0].y
    (1,)
"""

from workbench.widgets.expert_card import ExpertCard
from workbench.widgets.explorer import RoutingExplorer
from workbench.widgets.export_bar import ExportBar

__all__ = ["ExpertCard", "ExportBar", "RoutingExplorer"]
