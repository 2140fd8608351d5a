"""Figure plumbing shared by the panels: a ``FigureWidget`` that reaches the browser whole, a slot
that redraws by showing a new widget, and a placeholder that says which button fills a slot.

Example:
    >>> import plotly.graph_objects as go
    >>> from workbench.widgets._figures import placeholder, set_figure
    >>> slot = placeholder("press Run")
    >>> slot.figure.layout.annotations[0].text
    'press Run'
    >>> widget = set_figure(slot, go.Figure(go.Bar(y=[1, 2]), layout={"title": "bars"}))
    >>> widget is slot.figure, widget.layout.title.text, len(widget.layout.annotations)
    (True, 'bars', 0)
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from copy import deepcopy
from typing import Callable, Iterator

import ipywidgets as W
import plotly.graph_objects as go


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

    # plotly's front end as text, not as anywidget's watched file: for a watched file anywidget ties
    # every instance to the file's change signal (for hot reload), which keeps each widget alive for
    # good; a slot makes a widget per redraw, so that was a leak of every figure ever shown
    _esm = str(go.FigureWidget._esm)

    def __init__(self, *args, **kwargs):
        self._defer_open = True  # ipywidgets' constructor calls open(); wait for the first use
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._defer_open = False

    def __del__(self):
        # at interpreter exit ipywidgets' registry may be gone before the last widgets are freed
        with suppress(AttributeError, TypeError):
            super().__del__()

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


class FigureSlot(W.Box):
    """The place of one figure in a panel; every redraw shows a new :class:`FigureWidget`.

    plotly sends an edit of a shown ``FigureWidget`` as a one-off message that a view applies only if
    it is listening when the message arrives; the browser keeps no record of it, and nothing redraws a
    view that missed one. Under CPU load the routing explorer's token map stayed on its first document
    for good while the kernel held the new one and every other control had updated
    (``tests/test_browser.py`` caught it). A new widget is drawn from its whole first state, which
    always arrives, so a slot swaps in a fresh widget for each redraw and closes the old one.

    Args:
        figure: what the slot shows first.
        on_click: called as plotly's ``on_click(trace, points, state)`` for a click on the first
            trace, on every widget the slot shows.

    Example:
        >>> slot = FigureSlot(go.Figure(go.Bar(y=[1, 2]), layout={"title": "before"}))
        >>> first = slot.figure
        >>> with slot.edit() as fig:
        ...     fig.layout.title.text = "after"
        >>> slot.figure is first, slot.figure.layout.title.text, slot.children == (slot.figure,)
        (False, 'after', True)
    """

    def __init__(self, figure: go.Figure, *, on_click: Callable | None = None):
        self._on_click = on_click
        super().__init__([self._widget(figure)])

    @property
    def figure(self) -> FigureWidget:
        """The widget shown now (read it; to change it, use :meth:`show` or :meth:`edit`)."""
        return self.children[0]

    def _widget(self, figure: go.Figure) -> FigureWidget:
        widget = FigureWidget(figure)
        if self._on_click is not None and widget.data:
            widget.data[0].on_click(self._on_click)
        return widget

    def show(self, figure: go.Figure) -> FigureWidget:
        """Show ``figure`` (a copy of it, as a new widget) in place of the current one."""
        return self._swap(self._widget(figure))

    @contextmanager
    def edit(self) -> Iterator[FigureWidget]:
        """Edit a copy of the shown figure; the copy is shown when the block ends without an error.

        The copy is a new widget that nothing shows yet, so the edits stay in Python (one batch)
        until the swap sends it whole.
        """
        new = self._widget(self.figure)
        with new.batch_update():
            yield new
        self._swap(new)

    def _swap(self, new: FigureWidget) -> FigureWidget:
        old = self.figure
        self.children = (new,)
        old.close()
        return new


def shown_in(slot: str, doc: str) -> property:
    """A read-only attribute: the ``FigureWidget`` that the panel's :class:`FigureSlot` ``slot`` shows now."""
    return property(lambda panel: getattr(panel, slot).figure, doc=doc)


def placeholder_figure(text: str) -> go.Figure:
    """An empty figure that says which button fills it (instead of bare default axes)."""
    return go.Figure(layout=go.Layout(
        height=160, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white",
        annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 14, "color": "#555"}}]))


def placeholder(text: str) -> FigureSlot:
    """A slot that shows :func:`placeholder_figure` until :func:`set_figure` fills it."""
    return FigureSlot(placeholder_figure(text))


def set_figure(slot: FigureSlot, fig: go.Figure) -> FigureWidget:
    """Show ``fig`` in ``slot`` (as a new widget: see :class:`FigureSlot`); returns that widget."""
    return slot.show(fig)
