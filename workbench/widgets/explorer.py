"""The routing explorer: layer × expert map and a document's token × layer map, wired to controls.

Controls: layers, label, metric (top map), document, window start and slot rank (token map). Clicking
a cell of either map lists the tokens routed to that (layer, expert) — within the chosen label — in
context below. Export buttons write the current figures (HTML/PNG/SVG) or tables (CSV).

Every aggregate the controls need is computed once (:class:`~workbench.analysis.TraceCounts`), so a
control change is a slice and a small figure update (see ``benchmarks/widgets.py``).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets import RoutingExplorer
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> trace = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], progress=False)
    >>> ex = RoutingExplorer(trace)
    >>> ex.label.value = "code"
    >>> ex.matrix_fig.data[0].z.shape
    (2, 8)
    >>> ex.show_cell(layer=1, expert=int(trace.topk_idx[1, 0, 0]))
    >>> "tokens routed to expert" in ex.context.value
    True
"""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.analysis.load import as_counts, load_table
from workbench.views._style import RATIO, SEQUENTIAL, escape_token
from workbench.views.experts import LOAD_METRICS, load_heatmap
from workbench.views.tokens import (colour_settings, token_heatmap, token_heatmap_data, token_height, token_ticks,
                                    token_title, token_width)
from workbench.widgets.context import TokenContext
from workbench.widgets._figures import FigureSlot, shown_in
from workbench.widgets.export_bar import ExportBar

ALL = "(all labels)"
METRICS = [("load ratio (token share / uniform k/E)", "load_ratio"), ("share of tokens", "token_share"),
           ("share of routing weight", "weight_share"),
           ("specialisation (label share / corpus share)", "lift")]
METRIC_LABELS = dict(LOAD_METRICS, lift="label share / corpus share")


class RoutingExplorer(W.VBox):
    """Interactive routing explorer over a :class:`~workbench.trace.RoutingTrace` or a stored trace.

    Args:
        trace: the trace: in memory, or a :class:`~workbench.store.StoredTrace` (controls then answer
            from its cached aggregates and read only the shown document's rows).
        max_tokens: token-map window length.
        export_dir: default folder of the export bar.
        counts: the trace's :class:`~workbench.analysis.TraceCounts`, if already computed.

    Attributes (controls; set ``.value`` to drive the explorer from code):
        layers, label, metric, doc, start (bounded to the chosen document: 0 to its last position;
        it steps by a window), rank; ``window`` (which tokens are shown, of how many); figures
        ``matrix_fig`` and ``token_fig`` (``go.FigureWidget``, a new one per redraw, in
        ``matrix_slot`` and ``token_slot``); ``context`` (HTML of the clicked cell); ``export_bar``.
    """

    def __init__(self, trace, *, max_tokens: int = 64, export_dir="exports", counts=None):
        self.trace = trace
        self.counts = counts if counts is not None else as_counts(trace)
        self.max_tokens = max_tokens
        self.ctx = TokenContext(self.counts)
        self.selected: tuple[int, int] | None = None
        layer_opts = [(f"layer {x}", x) for x in trace.layers]
        self.layers = W.SelectMultiple(options=layer_opts, value=tuple(trace.layers), description="layers",
                                       rows=min(8, len(layer_opts)), layout=W.Layout(width="200px"))
        self.label = W.Dropdown(options=[ALL] + self.counts.label_names, value=ALL, description="label")
        self.metric = W.Dropdown(options=METRICS, value="load_ratio", description="metric",
                                 layout=W.Layout(width="380px"))
        self.doc = W.Dropdown(options=self._doc_options(), value=0, description="document",
                              layout=W.Layout(width="380px"))
        self.start = W.BoundedIntText(value=0, min=0, max=self._last_start(0), step=max_tokens,
                                      description="from token", layout=W.Layout(width="180px"))
        self.window = W.HTML(layout=W.Layout(width="200px"))
        self.rank = W.Dropdown(options=[(f"rank {r}", r) for r in range(trace.k)], value=0,
                               description="slot", layout=W.Layout(width="160px"))
        self.context = W.HTML(value="<i>click a cell to list the tokens routed there</i>")

        # each redraw shows a new widget (FigureSlot says why); the token map has a fixed width (at
        # most 940 px): a FigureWidget without one is drawn 700 px wide, too narrow for a labelled
        # column per token
        self.matrix_slot = FigureSlot(load_heatmap(self._load_frame(), "load_ratio"), on_click=self._on_matrix_click)
        self.token_slot = FigureSlot(token_heatmap(trace, 0, max_tokens=max_tokens, counts=self.counts),
                                     on_click=self._on_token_click)
        self.export_bar = ExportBar(self.export_items, folder=export_dir, prefix="routing_")

        for control in (self.layers, self.label, self.metric):
            control.observe(self._update_matrix, names="value")
        self.doc.observe(self._doc_changed, names="value")
        for control in (self.start, self.rank):
            control.observe(self._update_tokens, names="value")
        self.layers.observe(self._update_tokens, names="value")
        self._update_matrix()
        self._update_tokens()
        super().__init__([
            W.HBox([self.layers, W.VBox([self.label, self.metric])]), self.matrix_slot,
            W.HBox([self.doc, self.start, self.window, self.rank]), self.token_slot,
            self.context, self.export_bar])

    matrix_fig = shown_in("matrix_slot", "The layer × expert map shown now (``go.FigureWidget``).")

    token_fig = shown_in("token_slot", "The token × layer map shown now (``go.FigureWidget``).")

    # -- data ---------------------------------------------------------------------------
    def _doc_length(self, doc: int) -> int:
        return int(self.counts.doc_start[doc + 1] - self.counts.doc_start[doc])

    def _last_start(self, doc: int) -> int:
        """The largest valid "from token" of document ``doc`` (its last position)."""
        return max(self._doc_length(doc) - 1, 0) if len(self.counts.doc_start) > 1 else 0

    def _doc_options(self):
        labels = self.trace.doc_labels
        opts = []
        for d in range(len(self.counts.doc_start) - 1):
            first = self.counts.doc_tokens(d)[:24]
            preview = self.trace.text_of(first)  # whole characters across tokens, never "��"
            preview = " ".join(preview.split())[:40]
            tag = f" [{labels[d]}]" if labels and d < len(labels) and labels[d] is not None else ""
            opts.append((f"{d}{tag}: {preview}", d))
        return opts

    def _chosen_labels(self):
        return None if self.label.value == ALL else [self.label.value]

    def _layer_pos(self) -> list[int]:
        layers = self.layers.value or tuple(self.trace.layers)
        return [self.trace.layer_index(x) for x in sorted(layers)]

    def _load_frame(self) -> pd.DataFrame:
        counts, weight, tokens = self.counts.select_counts(self._chosen_labels())
        return load_table(counts, weight, tokens, self.trace.layers, self.counts.k)

    def metric_matrix(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``(z [L', E], tokens [L', E], layers)`` of the current metric, label and layers."""
        c = self.counts
        pos = self._layer_pos()
        counts, weight, tokens = c.select_counts(self._chosen_labels())
        counts, weight = counts[pos], weight[pos]
        share = counts / max(tokens, 1)
        metric = self.metric.value
        if metric == "load_ratio":
            z = share / c.uniform
        elif metric == "token_share":
            z = share
        elif metric == "weight_share":
            total = weight.sum(axis=1, keepdims=True)
            z = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
        else:
            corpus = c.counts[pos] / max(c.num_tokens, 1)
            z = np.divide(share, corpus, out=np.zeros_like(share), where=corpus > 0)
        return z, counts, [self.trace.layers[p] for p in pos]

    # -- updates ------------------------------------------------------------------------
    def _update_matrix(self, change=None) -> None:
        z, tokens, layers = self.metric_matrix()
        name = METRIC_LABELS[self.metric.value]
        what = "all tokens" if self.label.value == ALL else f"label {self.label.value}"
        with self.matrix_slot.edit() as fig:
            hm = fig.data[0]
            hm.z, hm.y, hm.customdata = z, layers, tokens
            hm.colorbar.title.text = name
            hm.colorscale = RATIO if self.metric.value in ("load_ratio", "lift") else SEQUENTIAL
            hm.hovertemplate = ("layer %{y}, expert %{x}<br>" + name + ": %{z:.3f}<br>tokens: %{customdata}"
                                "<extra></extra>")
            fig.layout.title.text = escape_token(f"{name} per layer and expert ({what})")
            fig.layout.yaxis.tickvals = layers
            fig.layout.yaxis.ticktext = [str(x) for x in layers]
            fig.layout.height = max(280, 90 + 26 * len(layers))

    def _doc_changed(self, change=None) -> None:
        """A new document: bound "from token" to its length (back to its start), then redraw."""
        moves = self.start.value != 0  # then its observer redraws: once is enough
        with self.start.hold_trait_notifications():
            self.start.value = 0
            self.start.max = self._last_start(self.doc.value)
        if not moves:
            self._update_tokens()

    def _update_tokens(self, change=None) -> None:
        layers = [self.trace.layers[p] for p in self._layer_pos()]
        doc, start = self.doc.value, min(int(self.start.value), self._last_start(self.doc.value))
        data = token_heatmap_data(self.trace, doc, layers=layers, start=start,
                                  max_tokens=self.max_tokens, rank=self.rank.value, counts=self.counts)
        with self.token_slot.edit() as fig:
            hm = fig.data[0]
            hm.z, hm.x, hm.y, hm.hovertext = data["z"], data["x"], data["y"], data["hovertext"]
            colours = colour_settings(self.trace.num_experts, self.rank.value, len(data["y"]))
            if "colorbar" in colours:
                hm.colorbar.update(colours["colorbar"])
            lay = fig.layout
            lay.xaxis.update(token_ticks(data["x"], data["ticktext"]))
            lay.yaxis.tickvals, lay.yaxis.ticktext = data["y"], [str(x) for x in data["y"]]
            lay.height = token_height(len(data["y"]), len(data["x"]))
            lay.width = token_width(len(data["x"]))
            lay.title.text = escape_token(token_title(self.trace, doc, self.rank.value, data))
        x = data["x"]
        self.window.value = (f"<small>tokens {x[0]}–{x[-1]} of {data['total']}</small>" if x
                             else "<small>no tokens</small>")

    def _on_matrix_click(self, trace, points, state) -> None:
        if points.point_inds:
            self.show_cell(int(points.ys[0]), int(points.xs[0]))

    def _on_token_click(self, trace, points, state) -> None:
        if points.point_inds:
            row, col = points.point_inds[0]
            expert = self.token_fig.data[0].z[row][col]
            if not np.isnan(expert):  # NaN: an empty slot
                self.show_cell(int(points.ys[0]), int(expert))

    def show_cell(self, layer: int, expert: int, limit: int = 40) -> None:
        """List the tokens routed to ``expert`` at decoder ``layer`` (within the label) in context."""
        pos = self.trace.layer_index(layer)
        if not 0 <= expert < self.trace.num_experts:
            raise ValueError(f"expert {expert} out of range 0..{self.trace.num_experts - 1}")
        hits, weights, total = self.counts.routed_sample(pos, expert, self._chosen_labels(), limit=limit)
        self.selected = (layer, expert)
        what = "" if self.label.value == ALL else f" with label {html.escape(self.label.value)}"
        head = (f"<b>{total} tokens routed to expert {expert} at layer {layer}{what}</b> "
                f"(showing {len(hits)})<br>")
        self.context.value = self.ctx.html(hits, pos, expert=expert, limit=limit, heading=head, weights=weights,
                                           total=total)

    # -- export -------------------------------------------------------------------------
    def current_table(self) -> pd.DataFrame:
        """The top map as a tidy table (``layer``, ``expert``, ``tokens``, metric, ``label``)."""
        z, tokens, layers = self.metric_matrix()
        num_experts = z.shape[1]
        return pd.DataFrame({"layer": np.repeat(layers, num_experts),
                             "expert": np.tile(np.arange(num_experts), len(layers)),
                             "tokens": tokens.reshape(-1).astype(np.int64),
                             self.metric.value: z.reshape(-1), "label": self.label.value})

    def export_items(self) -> dict:
        """What the export bar writes: both figures and the current table."""
        return {"matrix": go.Figure(self.matrix_fig), "tokens": go.Figure(self.token_fig),
                "table": self.current_table()}

