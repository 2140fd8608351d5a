"""Figure plumbing shared by the panels: a placeholder that says which button fills it, and the
swap of a ``go.FigureWidget``'s content for a view's figure.

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

import plotly.graph_objects as go

#: what a placeholder sets, reset in the browser before its first real figure (a layout assignment
#: is sent as a relayout of the new keys only, so the placeholder's keys would otherwise stay)
PLACEHOLDER_RESET = {"annotations": [], "height": None, "plot_bgcolor": None, "xaxis.visible": None,
                     "yaxis.visible": None}


def placeholder(text: str) -> go.FigureWidget:
    """An empty figure that says which button fills it (instead of bare default axes)."""
    widget = go.FigureWidget(layout=go.Layout(
        height=160, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white",
        annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 14, "color": "#555"}}]))
    widget._workbench_placeholder = True
    return widget


def set_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Replace the traces and layout of ``widget`` by those of ``fig``."""
    if getattr(widget, "_workbench_placeholder", False):
        widget.plotly_relayout(PLACEHOLDER_RESET)
        widget._workbench_placeholder = False
    with widget.batch_update():
        widget.data = []
        widget.add_traces(fig.data)
        widget.layout = fig.layout
