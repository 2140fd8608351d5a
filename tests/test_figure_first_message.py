"""A panel's figures reach the browser whole: the message that creates a figure's model holds the
traces and layout the panel built, so a view drawn from it is never bare axes.

plotly's own ``go.FigureWidget`` opens its comm before it has any data and sends the figure, and
every edit a constructor makes, as later messages; under CPU load JupyterLab drew panels from that
first, empty state (``tests/test_browser.py`` caught it). ``workbench.widgets._figures.FigureWidget``
waits until a container or a display needs its model id. These tests record the real comm messages
ipywidgets sends (a recording ``comm.create_comm``), with real panels on a real tiny model.
"""

from __future__ import annotations

import gc
import weakref

import ipywidgets as W
import plotly.graph_objects as go
import pytest
from ipywidgets.widgets import widget as widget_module
from test_pruning import TEXTS
from test_pruning_widget import ROWS
from test_widgets import synthetic_trace

from workbench.widgets import ExpertCard, RoutingExplorer
from workbench.widgets._figures import FigureSlot, FigureWidget


class RecordingComm:
    """Stands in for the kernel's comm: keeps what ipywidgets opens and sends through it."""

    opened: list = []

    def __init__(self, **kwargs):
        import uuid
        self.comm_id = kwargs.get("comm_id") or uuid.uuid4().hex
        self.kernel = object()
        self.sent = []
        RecordingComm.opened.append((self, kwargs["data"]["state"]))

    def send(self, data=None, buffers=None, **kwargs):
        self.sent.append(data)

    def on_msg(self, callback):
        pass

    def close(self, *args, **kwargs):
        self.closed = True

    closed = False


@pytest.fixture
def comms(monkeypatch):
    RecordingComm.opened = []
    monkeypatch.setattr(widget_module.comm, "create_comm", lambda **kw: RecordingComm(**kw))
    return RecordingComm.opened


def first_state(opened, fig) -> dict:
    """The state in the message that created ``fig``'s browser model."""
    return next(state for comm, state in opened if comm is fig.comm)


def title(layout: dict) -> str | None:
    t = layout.get("title")
    return t.get("text") if isinstance(t, dict) else t


def assert_opened_whole(opened, fig: go.FigureWidget) -> None:
    state = first_state(opened, fig)
    assert len(state["_widget_data"]) == len(fig.data) > 0
    assert [t["type"] for t in state["_widget_data"]] == [t.type for t in fig.data]
    assert title(state["_widget_layout"]) == fig.layout.title.text
    assert not fig.comm.sent or all("_widget_data" not in m.get("state", {}) for m in fig.comm.sent)


def test_explorer_and_card_figures_open_with_what_their_constructors_drew(comms):
    trace = synthetic_trace()
    explorer = RoutingExplorer(trace)
    card = ExpertCard(trace, layer=trace.layers[-1], expert=1)
    W.VBox([explorer, card])._repr_mimebundle_()  # what displaying the panels does
    for fig in (explorer.matrix_fig, explorer.token_fig, card.fig):
        assert isinstance(fig, FigureWidget)
        assert_opened_whole(comms, fig)
    # the token map's first state is the constructor's update (window, title), not plotly's defaults
    layout = first_state(comms, explorer.token_fig)["_widget_layout"]
    assert layout["height"] == explorer.token_fig.layout.height
    assert "document 0" in title(layout)


def test_pruning_panel_started_from_results_opens_its_figures_full(comms, tiny, tmp_path):
    from workbench import pruning
    from workbench.widgets.pruning import PruningPanel

    lm = tiny("mixtral")
    pruner = pruning.Pruner(lm, TEXTS, progress=False)
    best = pruner.prune(keep=6, method="frequency")
    skipping = pruning.calibrate_skipping(lm, TEXTS, progress=False)
    quality = pruning.compare({"original": lm, best.label: best.apply(lm)}, ROWS, max_tokens=32)
    panel = PruningPanel(lm, TEXTS, ROWS, pruner=pruner, folder=tmp_path, result=best, skipping=skipping,
                         quality=quality)
    for fig in (panel.kept_fig, panel.loss_fig, panel.skip_fig, panel.ppl_fig):
        assert_opened_whole(comms, fig)
        notes = [a.get("text", "") for a in first_state(comms, fig)["_widget_layout"].get("annotations", [])]
        assert not any(text.startswith("press ") for text in notes)  # the placeholder's text is gone


def test_a_shown_figure_sends_later_edits_as_messages(comms):
    fig = FigureWidget(go.Figure(go.Bar(y=[1, 2]), layout={"title": "before"}))
    assert fig.comm is None  # nothing sent while nothing shows it
    fig.layout.title.text = "still before"
    box = W.VBox([fig])
    assert title(first_state(comms, fig)["_widget_layout"]) == "still before"
    fig.layout.title.text = "after"
    assert any("_py2js_relayout" in m.get("state", {}) or "_py2js_update" in m.get("state", {})
               for m in fig.comm.sent if m)
    assert box.children[0] is fig


def test_a_slot_redraws_a_shown_figure_as_a_new_widget_opened_whole(comms):
    """A shown view may miss a one-off edit message for good (under CPU load the explorer's token map
    stayed on its first document); a slot's redraw is a new model whose first state holds it."""
    slot = FigureSlot(go.Figure(go.Bar(y=[1, 2]), layout={"title": "before"}))
    W.VBox([slot])._repr_mimebundle_()
    first, first_comm = slot.figure, slot.figure.comm
    assert title(first_state(comms, first)["_widget_layout"]) == "before"
    with slot.edit() as fig:
        fig.layout.title.text = "after"
        fig.data[0].y = (3, 4)
    second = slot.figure
    assert second is not first and first_comm.closed and first.comm is None  # the old model is gone
    assert_opened_whole(comms, second)
    assert title(first_state(comms, second)["_widget_layout"]) == "after"
    assert first_state(comms, second)["_widget_data"][0]["y"] == [3, 4]
    # the box's children now name the new model (so the browser swaps the view)
    box_state = [m["state"] for m in slot.comm.sent if m and "children" in m.get("state", {})]
    assert box_state and box_state[-1]["children"] == [f"IPY_MODEL_{second.model_id}"]
    with pytest.raises(RuntimeError), slot.edit() as fig:  # an error inside leaves the figure as it was
        fig.layout.title.text = "half done"
        raise RuntimeError("boom")
    assert slot.figure is second and second.layout.title.text == "after"


def test_explorer_document_change_shows_a_new_token_map_with_the_new_label(comms):
    trace = synthetic_trace()
    explorer = RoutingExplorer(trace)
    explorer._repr_mimebundle_()
    shown, shown_comm = explorer.token_fig, explorer.token_fig.comm
    clicks = explorer.token_fig.data[0]._click_callbacks
    explorer.doc.value = 1
    new = explorer.token_fig
    assert new is not shown and shown_comm.closed
    assert "document 1" in title(first_state(comms, new)["_widget_layout"])
    assert new.data[0]._click_callbacks and len(new.data[0]._click_callbacks) == len(clicks)


def test_a_slot_lets_the_widgets_it_no_longer_shows_go():
    """anywidget ties a widget whose front end is a watched file to that file's change signal, for
    good; a slot makes a widget per redraw, so each one it drops must be freed."""
    slot = FigureSlot(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))
    dropped = []
    for step in range(5):
        dropped.append(weakref.ref(slot.figure))
        with slot.edit() as fig:
            fig.layout.title.text = f"step {step}"
    gc.collect()
    assert [ref() for ref in dropped] == [None] * 5
    assert slot.figure.layout.title.text == "step 4"
