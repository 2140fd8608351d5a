"""Figure plumbing shared by the panels: a ``FigureWidget`` that reaches the browser whole, a
placeholder that says which button fills it, and the swap of a widget's content for a view's figure.

Example:
    >>> import plotly.graph_objects as go
    >>> from workbench.widgets._figures import placeholder, set_figure
    >>> widget = placeholder("press Run")
    >>> widget.layout.annotations[0].text
    'press Run'
    >>> set_figure(widget, go.Figure(go.Bar(y=[1, 2]), layout={"title": "bars"}))
    >>> widget.layout.title.text, len(widget.layout.annotations)
    ('bars', 0)
"""

from __future__ import annotations

from copy import deepcopy

import plotly.graph_objects as go

#: what a placeholder sets, reset in the browser before its first real figure (a layout assignment
#: is sent as a relayout of the new keys only, so the placeholder's keys would otherwise stay)
PLACEHOLDER_RESET = {"annotations": [], "height": None, "plot_bgcolor": None, "xaxis.visible": None,
                     "yaxis.visible": None}


class FigureWidget(go.FigureWidget):
    """A ``go.FigureWidget`` whose browser model starts with the whole figure.

    plotly opens a FigureWidget's comm inside its constructor, before the widget holds any trace or
    layout, and sends them, and every edit made before the widget is shown, as later messages. The
    browser draws a view from the model's state once and ignores later whole-state changes, and
    edits that arrive before plotly's front end has loaded are dropped. So under CPU load a panel
    came up as bare axes without a title (``tests/test_browser.py`` caught it). This subclass opens
    its comm only when a container or a display first asks for its model id, with the figure as it
    is then: a panel's constructor may edit its figures freely before it builds its boxes.

    Example:
        >>> fig = FigureWidget(go.Figure(go.Bar(y=[1, 2])))
        >>> fig.data[0].y = (3, 4)  # no message yet: the comm is not open
        >>> fig.comm is None
        True
    """

    def __init__(self, *args, **kwargs):
        self._defer_open = True  # ipywidgets' constructor calls open(); wait for the first use
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._defer_open = False

    def open(self) -> None:
        if getattr(self, "_defer_open", False) or self.comm is not None:
            return
        self._widget_layout = deepcopy(self._layout_obj._props)  # plotly sets these only at construction
        self._widget_data = deepcopy(self._data)
        super().open()

    @property
    def model_id(self) -> str:
        self.open()
        return self.comm.comm_id

    def _repr_mimebundle_(self, *args, **kwargs):
        self.open()
        return super()._repr_mimebundle_(*args, **kwargs)


def placeholder(text: str) -> FigureWidget:
    """An empty figure that says which button fills it (instead of bare default axes)."""
    widget = FigureWidget(layout=go.Layout(
        height=160, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white",
        annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 14, "color": "#555"}}]))
    widget._workbench_placeholder = True
    return widget


def set_figure(widget: FigureWidget, fig: go.Figure) -> None:
    """Replace the traces and layout of ``widget`` by those of ``fig``."""
    if getattr(widget, "_workbench_placeholder", False):
        widget.plotly_relayout(PLACEHOLDER_RESET)
        widget._workbench_placeholder = False
    with widget.batch_update():
        widget.data = []
        widget.add_traces(fig.data)
        widget.layout = fig.layout
