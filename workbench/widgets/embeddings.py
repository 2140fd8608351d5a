"""An ipywidgets panel for comparing text embeddings: projections side by side for every kind,
a similarity heatmap, an α slider for MoEE sum, a nearest-neighbour search box and export.

Texts are embedded once per preset (:meth:`MoEEmbedder.parts`); every other control only recombines
the stored parts through :mod:`workbench.embeddings.explore`. If the embedder is not fitted, its
standardisation (for ``concat``) is fitted on the given texts. The *preset* control switches
between the workbench default and ``"moee"``, the reference code's prompts, RW unit and per-batch
standardisation (:mod:`workbench.embeddings.preset`), on the same model, template and layers.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> from workbench.widgets.embeddings import EmbeddingExplorer
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("mixtral")))
    >>> ex = EmbeddingExplorer(emb, ["a cat", "a dog", "def f(x): pass"], ["en", "en", "code"], progress=False)
    >>> ex.query.value = "a cow"
    >>> ex.neighbours_table.label.tolist()[:1] in (["en"], ["code"])
    True
    >>> ex.preset.value = "moee"
    >>> ex.embedder.config.unit, ex.embedder.config.template
    ('logits', '"{text}"')
"""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.embeddings.explore import (available_kinds, heatmap_figure, neighbours, projection_figure,
                                          projections, similarity)
from workbench.widgets._figures import FigureSlot, shown_in
from workbench.widgets.export_bar import ExportBar


class EmbeddingExplorer:
    """Projections, heatmap, α slider, search and export over one set of texts.

    Args:
        embedder: a :class:`~workbench.embeddings.MoEEmbedder`.
        texts: the texts to show (at least 3).
        labels: one label per text (colours), or None.
        k: neighbours to list.
        folder: export folder.
        progress: a ``tqdm.auto`` bar while the texts are embedded (here and on a preset switch).

    Attributes:
        alpha, kind, query, k: the controls (set ``.value`` to drive the widget from code).
        projection_fig, heatmap_fig: the ``go.FigureWidget`` views.
        table, neighbours_table: the current projection coordinates and search result (DataFrames).
    """

    def __init__(self, embedder, texts, labels=None, *, k: int = 5, folder="exports", progress: bool = True):
        texts = list(texts)
        if len(texts) < 3:
            raise ValueError("give at least 3 texts to compare")
        self.embedder, self.texts, self.progress = embedder, texts, progress
        self.labels = None if labels is None else [str(x) for x in labels]
        self.parts = embedder.parts(texts, progress=progress)
        if not embedder.fitted:
            embedder.fit(self.parts)
        self._embedders = {embedder.config.preset: (embedder, self.parts)}
        self.preset = W.Dropdown(options=[("workbench default", None), ("moee: the reference code's", "moee")],
                                 value=embedder.config.preset, description="preset")
        self.title = W.HTML(f"<b>{html.escape(embedder.describe())}</b>")
        self.alpha = W.FloatSlider(value=embedder.config.alpha, min=0.0, max=10.0, step=0.1,
                                   description="α (sum)", continuous_update=False)
        self.kind = W.Dropdown(options=available_kinds(embedder), value="sum", description="heatmap")
        self.query = W.Text(value="", placeholder="type a text and press enter", description="search",
                            continuous_update=False, layout=W.Layout(width="380px"))
        self.k = W.BoundedIntText(value=k, min=1, max=len(texts), description="k", layout=W.Layout(width="140px"))
        self.results = W.HTML(value="")
        self.neighbours_table = None
        self.table = projections(embedder, self.parts, texts, self.labels, alpha=self.alpha.value)
        self.projection_slot = FigureSlot(projection_figure(self.table))  # a new widget per redraw
        self.heatmap_slot = FigureSlot(self._heatmap())
        self.export_bar = ExportBar(self._export_items, folder=folder, prefix="embeddings_")
        self.alpha.observe(self._on_alpha, names="value")
        self.kind.observe(lambda _: self._update_heatmap(), names="value")
        self.preset.observe(self._on_preset, names="value")
        self.query.observe(lambda _: self.search(), names="value")
        self.k.observe(lambda _: self.search() if self.query.value.strip() else None, names="value")
        self.widget = W.VBox([
            self.title, W.HBox([self.preset, self.alpha]), self.projection_slot,
            W.HBox([self.kind, self.query, self.k]),  # one row of controls: the panel stays ~940 px wide
            self.heatmap_slot, self.results,
            self.export_bar,
        ])

    projection_fig = shown_in("projection_slot", "The projections shown now (``go.FigureWidget``).")

    heatmap_fig = shown_in("heatmap_slot", "The similarity heatmap shown now.")

    # -- updates -------------------------------------------------------------------------
    def _heatmap(self) -> go.Figure:
        kind = self.kind.value
        sim = similarity(self.embedder, self.parts, kind, self.alpha.value)
        name = f"MoEE sum similarity, α={self.alpha.value:g}" if kind == "sum" else f"cosine similarity ({kind})"
        return heatmap_figure(sim, self.texts, self.labels, title=name)

    def _update_heatmap(self) -> None:
        new = self._heatmap()
        with self.heatmap_slot.edit() as fig:
            fig.data[0].z = new.data[0].z
            fig.layout.title.text = new.layout.title.text

    def _twin(self, preset):
        """The embedder of ``preset`` with this one's model, template, layers and batching."""
        from workbench.embeddings import MoEEmbedder
        from workbench.embeddings.preset import MOEE_TEMPLATES
        from workbench.embeddings.templates import TEMPLATES

        c = self.embedder.config
        names = {**{v: k for k, v in TEMPLATES.items()}, **{v: k for k, v in MOEE_TEMPLATES.items()}}
        emb = MoEEmbedder(self.embedder.lm, template=names.get(c.template, c.template), layers=c.layers,
                          alpha=c.alpha, batch_size=c.batch_size, max_length=c.max_length, preset=preset)
        parts = emb.parts(self.texts, progress=self.progress)
        if not emb.fitted:
            emb.fit(parts)
        return emb, parts

    def _on_preset(self, change) -> None:
        if change["new"] not in self._embedders:
            self._embedders[change["new"]] = self._twin(change["new"])
        self.embedder, self.parts = self._embedders[change["new"]]
        self.title.value = f"<b>{html.escape(self.embedder.describe())}</b>"
        self._on_alpha(None)
        if self.kind.value != "sum":
            self._update_heatmap()

    def _on_alpha(self, _change) -> None:
        self.table = projections(self.embedder, self.parts, self.texts, self.labels, alpha=self.alpha.value)
        new = projection_figure(self.table)
        with self.projection_slot.edit() as fig:
            for old, fresh in zip(fig.data, new.data):
                old.x, old.y = fresh.x, fresh.y
        if self.kind.value == "sum":
            self._update_heatmap()
        if self.query.value.strip():
            self.search()

    def search(self):
        """Nearest neighbours of the query text under the heatmap's kind (and α for sum)."""
        try:
            self.neighbours_table = neighbours(self.embedder, self.parts, self.texts, self.query.value,
                                               self.labels, kind=self.kind.value, alpha=self.alpha.value,
                                               k=self.k.value)
        except ValueError as err:
            self.results.value = f"<span style='color:#D55E00'>{html.escape(str(err))}</span>"
            return None
        rows = "".join(f"<tr><td>{r.rank}</td><td>{r.similarity:.3f}</td><td>{html.escape(r.label)}</td>"
                       f"<td>{html.escape(r.text[:120])}</td></tr>" for r in self.neighbours_table.itertuples())
        self.results.value = ("<table><tr><th>#</th><th>similarity</th><th>label</th><th>text</th></tr>"
                              f"{rows}</table>")
        return self.neighbours_table

    def _export_items(self) -> dict:
        items = {"projections": go.Figure(self.projection_fig), "similarity": go.Figure(self.heatmap_fig),
                 "projections_table": self.table}
        sim = similarity(self.embedder, self.parts, self.kind.value, self.alpha.value)
        items["similarity_table"] = pd.DataFrame(np.round(sim, 6), columns=[str(i) for i in range(len(sim))])
        if self.neighbours_table is not None:
            items["neighbours"] = self.neighbours_table
        return items

    def _ipython_display_(self):  # pragma: no cover - needs a notebook front end
        from IPython.display import display

        display(self.widget)
