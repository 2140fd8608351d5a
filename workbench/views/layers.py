"""Per-layer profiles: router entropy and margin, specialisation scores, output norm vs router rank.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import analysis, views
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> trace = wb.record(lm, ["The quick brown fox"], scores=True, progress=False)
    >>> fig = views.entropy_plot(analysis.router_entropy(trace, lm))
    >>> [t.name for t in fig.data]
    ['normalised entropy', 'top-1 margin']
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.views._style import PALETTE, RATIO, category_axis, need_columns, style
from workbench.views.experts import matrix_heatmap


def entropy_plot(entropy, title: str | None = None) -> go.Figure:
    """Router entropy (normalised by ``log E``) and top-1 margin per layer.

    Args:
        entropy: :func:`~workbench.analysis.router_entropy` output.
        title: figure title.
    """
    need_columns(entropy, ["layer", "entropy_norm", "entropy_norm_std", "margin"],
                 "workbench.analysis.router_entropy")
    frame = entropy.sort_values("layer")
    layers = frame.layer.tolist()
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=["router entropy / log E (1 = uniform)",
                                        "top-1 margin p(1st) − p(2nd)"])
    fig.add_trace(go.Scatter(x=layers, y=frame.entropy_norm, name="normalised entropy",
                             mode="lines+markers", line=dict(color=PALETTE[0]),
                             error_y=dict(type="data", array=frame.entropy_norm_std, visible=True),
                             hovertemplate="layer %{x}<br>mean entropy / log E: %{y:.3f}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=layers, y=frame.margin, name="top-1 margin", mode="lines+markers",
                             line=dict(color=PALETTE[1]),
                             hovertemplate="layer %{x}<br>mean margin: %{y:.3f}<extra></extra>"), row=1, col=2)
    style(fig, title or "How decided is the router? Entropy and margin per layer", height=360)
    for col, name in ((1, "entropy / log E"), (2, "probability margin")):
        fig.update_xaxes(title_text="decoder layer", row=1, col=col, **category_axis(layers))
        fig.update_yaxes(title_text=name, range=[0, 1.05], row=1, col=col)
    return fig


def specialization_plot(scores, vocab=None, title: str | None = None) -> go.Figure:
    """Specialisation per layer: label score(s) and, optionally, vocabulary specialisation.

    Args:
        scores: :func:`~workbench.analysis.specialization_scores` output.
        vocab: optional :func:`~workbench.analysis.vocab_summary` output.
        title: figure title.
    """
    need_columns(scores, ["layer", "score", "score_vs_corpus"], "workbench.analysis.specialization_scores")
    frame = scores.sort_values("layer")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame.layer, y=frame.score, mode="lines+markers", name="label score vs uniform",
                             line=dict(color=PALETTE[0])))
    fig.add_trace(go.Scatter(x=frame.layer, y=frame.score_vs_corpus, mode="lines+markers",
                             name="label score vs corpus routing", line=dict(color=PALETTE[2], dash="dash")))
    if vocab is not None:
        need_columns(vocab, ["layer", "vocab_specialization", "uniform"], "workbench.analysis.vocab_summary")
        v = vocab.sort_values("layer")
        fig.add_trace(go.Scatter(x=v.layer, y=v.vocab_specialization, mode="lines+markers",
                                 name="vocabulary specialisation", line=dict(color=PALETTE[1])))
        fig.add_trace(go.Scatter(x=v.layer, y=v.uniform, mode="lines", name="vocabulary: uniform k/E",
                                 line=dict(color=PALETTE[1], dash="dot")))
    style(fig, title or "Specialisation per layer", x="decoder layer", y="score (0 = none, 1 = complete)",
          height=360)
    fig.update_xaxes(**category_axis(frame.layer))
    fig.update_yaxes(range=[0, 1.05])
    return fig


def norm_rank_heatmap(table, layer=None, title: str | None = None) -> go.Figure:
    """Router rank × output-norm rank: where the router's ``r``-th choice ranks by output norm.

    Args:
        table: :func:`~workbench.analysis.norm_rank_table` output.
        layer: one decoder layer, or None to pool every layer in the table.
        title: figure title.

    Rows sum to 1. Mass on the diagonal means the router picks the experts with the largest outputs.
    """
    need_columns(table, ["layer", "router_rank", "norm_rank", "count"], "workbench.analysis.norm_rank_table")
    sub = table if layer is None else table[table.layer == int(layer)]
    if sub.empty:
        raise ValueError(f"layer {layer} is not in the table; layers: {sorted(table.layer.unique())}")
    counts = sub.groupby(["router_rank", "norm_rank"])["count"].sum().unstack(fill_value=0).sort_index()
    row = counts.to_numpy().sum(axis=1, keepdims=True)
    share = np.divide(counts.to_numpy(), row, out=np.zeros(counts.shape), where=row > 0)
    where = "all layers" if layer is None else f"layer {layer}"
    fig = go.Figure(matrix_heatmap(
        share, counts.columns.tolist(), counts.index.tolist(), metric_label="share of router-rank row",
        colorscale=RATIO, zmin=0, customdata=counts.to_numpy(),
        hover="router rank %{y}, output-norm rank %{x}<br>share: %{z:.3f}<br>count: %{customdata}"))
    style(fig, title or f"Expert output norm rank vs router rank ({where}; rank 0 = first)",
          x="rank by expert output norm ‖Y_e(x)‖", y="rank by router selection score", height=520, width=620)
    fig.update_yaxes(autorange="reversed")
    return fig


def vocab_bar(vocab, layer: int | None = None, n: int = 30, title: str | None = None) -> go.Figure:
    """The ``n`` most frequent token ids at one layer: share of occurrences sent to their top expert.

    Args:
        vocab: :func:`~workbench.analysis.vocab_specialization` output.
        layer: decoder layer (default: the last in the table).
        n: how many token ids (most frequent first).
        title: figure title.
    """
    from workbench.views._style import escape_token

    need_columns(vocab, ["layer", "token", "count", "top_expert", "top_share", "uniform"],
                 "workbench.analysis.vocab_specialization")
    layer = int(vocab.layer.max()) if layer is None else int(layer)
    sub = vocab[vocab.layer == layer].sort_values(["count", "token_id"], ascending=[False, True]).head(n)
    if sub.empty:
        raise ValueError(f"layer {layer} is not in the table; layers: {sorted(vocab.layer.unique())}")
    labels = [f"{escape_token(t)!s} ·{i}" for i, t in zip(sub.token_id, sub.token)]
    fig = go.Figure(go.Bar(
        x=sub.top_share, y=labels, orientation="h", marker_color=PALETTE[0],
        customdata=np.stack([sub["count"], sub.top_expert], axis=1),
        hovertemplate="%{y}<br>occurrences: %{customdata[0]}<br>top expert: %{customdata[1]}"
                      "<br>share to top expert: %{x:.3f}<extra></extra>"))
    fig.add_vline(x=float(sub.uniform.iloc[0]), line=dict(color=PALETTE[3], dash="dash"),
                  annotation_text="uniform k/E", annotation_position="top")
    style(fig, title or f"Vocabulary specialisation at layer {layer}: {len(sub)} most frequent tokens",
          x="share of the token's occurrences routed to its top expert", y="token · id",
          height=max(320, 90 + 18 * len(sub)))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(range=[0, 1.02])
    return fig
