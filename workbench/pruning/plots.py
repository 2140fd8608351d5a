"""Views of pruning and skipping results: pure functions that return plotly figures.

* :func:`kept_map` — layer x expert map of kept (filled) and pruned (empty) experts.
* :func:`loss_plot` — reconstruction loss per layer, relative to the layer's output, one bar series
  per pruning result (e.g. enumerate vs frequency vs random at one ``r``).
* :func:`ppl_plot` — held-out perplexity per domain, one bar series per condition.
* :func:`skip_plot` — skipping threshold and share of expert calls skipped per layer.

Example:
    >>> from workbench.pruning.plots import kept_map
    >>> from workbench.pruning.result import PruningResult
    >>> from workbench.pruning.search import LayerChoice
    >>> res = PruningResult("toy", "0" * 16, 4, 1, 2, "random", [LayerChoice(0, (1, 3), (0, 2), loss=1.0)])
    >>> kept_map(res).data[0].z.tolist()
    [[1.0, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import numpy as np

# plotly is imported inside the functions: ``import workbench`` stays free of it


def kept_map(result, title: str | None = None):
    """Kept (1) and pruned (0) experts, one row per MoE layer; hover shows the layer's loss."""
    import plotly.graph_objects as go

    from workbench.views._style import PALETTE, category_axis, style

    layers = [c.layer for c in result.layers]
    z = np.zeros((len(layers), result.num_experts))
    hover = []
    for i, c in enumerate(result.layers):
        z[i, list(c.kept)] = 1.0
        hover.append([f"layer {c.layer}, expert {e}: {'kept' if e in c.kept else 'pruned'}<br>"
                      f"layer loss {c.loss:.4g} ({c.relative_loss:.1%} of ||Z||), {c.search}"
                      for e in range(result.num_experts)])
    fig = go.Figure(go.Heatmap(z=z, x=list(range(result.num_experts)), y=layers, zmin=0, zmax=1,
                               colorscale=[[0, "#f2f2f2"], [1, PALETTE[0]]], showscale=False, xgap=2, ygap=2,
                               text=hover, hoverinfo="text"))
    style(fig, title or f"Kept experts ({result.label} of {result.num_experts}); grey = pruned",
          x="expert", y="decoder layer", height=120 + 40 * len(layers))
    fig.update_xaxes(**category_axis(range(result.num_experts)))
    fig.update_yaxes(autorange="reversed", **category_axis(layers))
    return fig


def loss_plot(results, relative: bool = True, title: str | None = None):
    """Per-layer loss of several pruning results (relative to ``sum_b ||Z_b||`` by default)."""
    import plotly.graph_objects as go

    from workbench.views._style import PALETTE, style

    results = list(results)
    if not results:
        raise ValueError("loss_plot needs at least one PruningResult")
    fig = go.Figure()
    for i, res in enumerate(results):
        layers = [c.layer for c in res.layers]
        values = [c.relative_loss if relative else c.loss for c in res.layers]
        fig.add_trace(go.Bar(x=[str(x) for x in layers], y=values, name=res.label,
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{res.label}<br>layer %{{x}}: %{{y:.4g}}<extra></extra>"))
    style(fig, title or "Reconstruction loss per layer (lower is better)", x="decoder layer",
          y="loss / sum of ||Z||" if relative else "loss (sum of Frobenius norms)", height=360)
    fig.update_layout(barmode="group")
    return fig


def ppl_plot(long, title: str | None = None):
    """Perplexity per domain, one bar series per condition (:func:`~workbench.pruning.evaluate.compare`)."""
    import plotly.graph_objects as go

    from workbench.views._style import PALETTE, need_columns, style

    need_columns(long, ["condition", "domain", "ppl"], "workbench.pruning.evaluate.compare")
    fig = go.Figure()
    for i, (name, part) in enumerate(long.groupby("condition", sort=False)):
        fig.add_trace(go.Bar(x=part.domain.astype(str), y=part.ppl, name=str(name),
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{name}<br>%{{x}}: ppl %{{y:.2f}}<extra></extra>"))
    style(fig, title or "Held-out perplexity per domain", x="domain", y="perplexity", height=380)
    fig.update_layout(barmode="group")
    return fig


def skip_plot(table, title: str | None = None):
    """Threshold ``beta`` and skipped share of expert calls per layer (:meth:`SkipCalibration.to_dataframe`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbench.views._style import PALETTE, need_columns, style

    need_columns(table, ["layer", "threshold", "skip_rate"], "SkipCalibration.to_dataframe")
    layers = [str(x) for x in table.layer]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["threshold β (median w_i / w_1)",
                                                        "expert calls skipped"])
    fig.add_trace(go.Bar(x=layers, y=table.threshold, name="β", marker_color=PALETTE[1],
                         hovertemplate="layer %{x}: β = %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=table.skip_rate, name="skipped", marker_color=PALETTE[2],
                         hovertemplate="layer %{x}: %{y:.1%} of calls skipped<extra></extra>"), row=1, col=2)
    style(fig, title or "Dynamic skipping per layer", height=340)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_xaxes(title_text="decoder layer")
    fig.update_layout(showlegend=False)
    return fig
