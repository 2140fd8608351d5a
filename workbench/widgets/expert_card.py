"""The expert card: everything about one expert of one layer on a single panel.

Shows the expert's load against ``k/E``, the share of each label's tokens it receives, the experts
it is chosen together with (``P(b | this expert)``), its most frequent tokens (with the share of
each token's occurrences routed here), and — given :func:`~workbench.analysis.expert_output_norms`
output — its output-norm statistics and the distribution of its output-norm rank.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets import ExpertCard
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> trace = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], progress=False)
    >>> card = ExpertCard(trace, expert=int(trace.topk_idx[0, 0, 0]))
    >>> int(card.top_tokens().routed.sum()) > 0
    True
    >>> card.expert.value = (card.expert.value + 1) % lm.num_experts
"""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import expert_norm_stats, pair_metrics
from workbench.analysis.load import as_counts
from workbench.trace import is_stored
from workbench.views._style import PALETTE, escape_token, style
from workbench.widgets._figures import FigureSlot, shown_in
from workbench.widgets.export_bar import ExportBar


class ExpertCard(W.VBox):
    """One expert's card. Set ``card.layer.value`` / ``card.expert.value`` to move to another.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` or a :class:`~workbench.store.StoredTrace`.
        layer: decoder layer (default: the first recorded).
        expert: expert id.
        norms: optional :func:`~workbench.analysis.expert_output_norms` table.
        counts: the trace's :class:`~workbench.analysis.TraceCounts`, if already computed.
        top: how many top tokens to list.
        export_dir: default folder of the export bar.
    """

    def __init__(self, trace, layer: int | None = None, expert: int = 0, *, norms: pd.DataFrame | None = None,
                 counts=None, top: int = 15, export_dir="exports"):
        self.trace = trace
        self.counts = counts if counts is not None else as_counts(trace)
        self.top = top
        if not is_stored(trace):
            self.uniq, self.inv, self.occ = np.unique(trace.token_ids, return_inverse=True, return_counts=True)
        self._pairs: dict[int, np.ndarray] = {}
        self._norm_setup(norms)
        layer = trace.layers[0] if layer is None else int(layer)
        trace.layer_index(layer)
        self.layer = W.Dropdown(options=[(f"layer {x}", x) for x in trace.layers], value=layer,
                                description="layer")
        self.expert = W.Dropdown(options=list(range(trace.num_experts)), value=int(expert), description="expert")
        self.summary = W.HTML()
        self.tokens_html = W.HTML()
        self.norm_html = W.HTML()
        self.fig_slot = FigureSlot(self._empty_figure())  # a new widget per redraw: see FigureSlot
        self.export_bar = ExportBar(self.export_items, folder=export_dir, prefix="expert_")
        self.layer.observe(self._update, names="value")
        self.expert.observe(self._update, names="value")
        self._update()
        super().__init__([W.HBox([self.layer, self.expert]), self.summary, self.fig_slot,
                          W.HBox([self.tokens_html, self.norm_html], layout=W.Layout(grid_gap="24px")),
                          self.export_bar])

    fig = shown_in("fig_slot", "The card's figure shown now (``go.FigureWidget``).")

    # -- precomputation -----------------------------------------------------------------
    def _norm_setup(self, norms) -> None:
        self.norms = norms
        self.norm_stats = None
        self.norm_hist: dict[int, np.ndarray] = {}
        if norms is None or norms.empty:
            return
        self.norm_stats = expert_norm_stats(norms).set_index(["layer", "expert"])
        num_experts = self.trace.num_experts
        for layer, sub in norms.groupby("layer"):
            flat = sub.expert.to_numpy() * num_experts + sub.norm_rank.to_numpy()
            self.norm_hist[int(layer)] = np.bincount(flat, minlength=num_experts * num_experts) \
                .reshape(num_experts, num_experts)

    def _empty_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.11,
                            subplot_titles=["labels: share routed here", "co-activated: P(b | e)",
                                            "its output-norm rank"])
        fig.add_trace(go.Bar(x=[], y=[], marker_color=PALETTE[0], name="label share"), row=1, col=1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=dict(color=PALETTE[3], dash="dash"),
                                 name="uniform k/E"), row=1, col=1)
        fig.add_trace(go.Bar(x=[], y=[], marker_color=PALETTE[2], name="P(b | a)"), row=1, col=2)
        fig.add_trace(go.Bar(x=[], y=[], marker_color=PALETTE[1], name="norm rank"), row=1, col=3)
        style(fig, "Expert card", height=360, width=900)
        fig.update_layout(margin=dict(t=80))
        fig.update_layout(showlegend=False)
        fig.update_xaxes(title_text="label", row=1, col=1)
        fig.update_xaxes(title_text="expert b", row=1, col=2)
        fig.update_xaxes(title_text="output-norm rank (0 = largest)", row=1, col=3)
        fig.update_yaxes(title_text="share of the label's tokens", row=1, col=1)
        fig.update_yaxes(title_text="probability", row=1, col=2)
        fig.update_yaxes(title_text="share of tokens", row=1, col=3)
        return fig

    def _cond(self, pos: int) -> np.ndarray:
        if pos not in self._pairs:
            self._pairs[pos] = pair_metrics(self.counts, pos)[1]
        return self._pairs[pos]

    # -- content ------------------------------------------------------------------------
    def top_tokens(self) -> pd.DataFrame:
        """The expert's most frequent tokens: ``token_id``, ``token``, ``routed``, ``occurrences``,
        ``share_of_token`` (of the token's occurrences routed here), ``share_of_expert``."""
        if is_stored(self.trace):
            from workbench.store.analyses import expert_tokens
            return expert_tokens(self.trace, self.layer.value, self.expert.value, top=self.top)
        pos = self.trace.layer_index(self.layer.value)
        hits = self.counts.routed_to(pos, self.expert.value)
        routed = np.bincount(self.inv[hits], minlength=len(self.uniq))
        order = np.lexsort((self.uniq, -routed))[:self.top]
        order = order[routed[order] > 0]
        return pd.DataFrame({
            "token_id": self.uniq[order].astype(np.int64),
            "token": [self.trace.token_string(int(t)) for t in self.uniq[order]],  # whole characters, ‹hex› for parts
            "routed": routed[order].astype(np.int64), "occurrences": self.occ[order].astype(np.int64),
            "share_of_token": routed[order] / self.occ[order],
            "share_of_expert": routed[order] / max(len(hits), 1)})

    def label_table(self) -> pd.DataFrame:
        """Share of each label's tokens routed to the expert, with the uniform ``k/E``."""
        pos = self.trace.layer_index(self.layer.value)
        c = self.counts
        share = c.label_counts[pos, :, self.expert.value] / np.maximum(c.label_tokens, 1)
        return pd.DataFrame({"label": c.label_names, "tokens": c.label_counts[pos, :, self.expert.value],
                             "share": share, "uniform": c.uniform})

    def coactivated(self) -> pd.DataFrame:
        """``P(b | this expert)`` for every other expert ``b``."""
        pos = self.trace.layer_index(self.layer.value)
        cond = self._cond(pos)[self.expert.value]
        others = [b for b in range(self.trace.num_experts) if b != self.expert.value]
        return pd.DataFrame({"b": others, "p_b_given_a": cond[others]})

    def _update(self, change=None) -> None:
        layer, expert = self.layer.value, self.expert.value
        pos = self.trace.layer_index(layer)
        c = self.counts
        labels, co = self.label_table(), self.coactivated()
        share = c.counts[pos, expert] / max(c.num_tokens, 1)
        best = labels.sort_values("share", ascending=False).iloc[0] if len(labels) else None
        self.summary.value = (
            f"<b>Expert {expert}, layer {layer}</b>: {int(c.counts[pos, expert])} tokens "
            f"({share:.1%} of all; uniform k/E = {c.uniform:.1%}, ratio {share / c.uniform:.2f}); "
            f"weight mass {c.weight[pos, expert]:.1f}"
            + (f"; most of all label <b>{html.escape(str(best.label))}</b> ({best.share:.1%} of its tokens)"
               if best is not None else ""))
        hist = self.norm_hist.get(layer)
        with self.fig_slot.edit() as fig:
            fig.data[0].x, fig.data[0].y = [escape_token(x) for x in labels.label], labels.share
            fig.data[1].x = [escape_token(x) for x in labels.label]
            fig.data[1].y = [c.uniform] * len(labels)
            fig.data[2].x, fig.data[2].y = co.b, co.p_b_given_a
            if hist is not None:
                row = hist[expert]
                fig.data[3].x, fig.data[3].y = list(range(len(row))), row / max(row.sum(), 1)
            else:
                fig.data[3].x, fig.data[3].y = [], []
            fig.layout.title.text = f"Expert {expert} at layer {layer}"
        self.tokens_html.value = self._tokens_html()
        self.norm_html.value = self._norm_html(layer, expert)

    def _tokens_html(self) -> str:
        rows = "".join(
            f"<tr><td style='font-family:monospace'>{escape_token(r.token)}</td><td>{r.routed}</td>"
            f"<td>{r.occurrences}</td><td>{r.share_of_token:.2f}</td></tr>"
            for r in self.top_tokens().itertuples())
        return ("<b>Top tokens</b><table style='border-spacing:12px 2px'><tr><th>token</th><th>routed here</th>"
                f"<th>occurrences</th><th>share of token</th></tr>{rows}</table>")

    def _norm_html(self, layer: int, expert: int) -> str:
        if self.norm_stats is None:
            return ("<b>Output norms</b><br><i>not computed: pass norms=analysis.expert_output_norms(lm, "
                    "texts)</i>")
        if (layer, expert) not in self.norm_stats.index:
            return f"<b>Output norms</b><br><i>no norms for layer {layer}</i>"
        s = self.norm_stats.loc[(layer, expert)]
        items = [("mean ‖Y_e(x)‖", f"{s.mean_norm:.3f}"), ("median", f"{s.median_norm:.3f}"),
                 ("mean when chosen", f"{s.chosen_mean_norm:.3f}"),
                 ("largest output on", f"{s.largest_share:.1%} of tokens"),
                 ("mean router rank", f"{s.mean_router_rank:.2f}"), ("chosen on", f"{s.chosen_share:.1%}")]
        rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in items)
        return f"<b>Output norms</b><table style='border-spacing:12px 2px'>{rows}</table>"

    def export_items(self) -> dict:
        """What the export bar writes: the figure and the card's three tables."""
        tag = f"layer{self.layer.value}_e{self.expert.value}_"
        return {tag + "card": go.Figure(self.fig), tag + "top_tokens": self.top_tokens(),
                tag + "labels": self.label_table(), tag + "coactivated": self.coactivated()}
