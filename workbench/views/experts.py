"""Expert-level heatmaps: layer × expert load, label × expert specialisation, co-activation, transitions.

Each view takes the DataFrame of the matching analysis (or a trace, and runs the analysis) and
returns a ``go.Figure``. Ratios against a baseline use the cividis scale; counts and shares viridis.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import views
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> trace = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], progress=False)
    >>> views.load_heatmap(trace).data[0].z.shape
    (2, 8)
    >>> views.specialization_heatmap(trace, layer=1).data[0].y
    ('code', 'en')
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.views._style import RATIO, SEQUENTIAL, category_axis, escape_token, need_columns, style

LOAD_METRICS = {
    "load_ratio": "token share / uniform k/E",
    "token_share": "share of tokens",
    "weight_share": "share of routing weight",
    "tokens": "tokens",
}
SPEC_METRICS = {"ratio": "share / uniform k/E", "share": "share of the label's tokens",
                "lift": "share / expert's corpus share", "tokens": "tokens"}
#: Panels per row of :func:`specialization_heatmap` (more layers wrap onto further rows).
PANELS_PER_ROW = 3
PAIR_METRICS = {"lift": "lift P(a,b)/(P(a)P(b))", "p_b_given_a": "P(b | a)", "count": "tokens"}


def _frame(obj, analysis, columns, name):
    frame = analysis(obj) if hasattr(obj, "topk_idx") or hasattr(obj, "coact") else obj
    need_columns(frame, columns, name)
    return frame


def _scale(metric: str) -> str:
    return RATIO if metric in ("load_ratio", "ratio", "lift") else SEQUENTIAL


def matrix_heatmap(z, x, y, *, metric_label: str, colorscale: str, hover: str, customdata=None,
                   zmin=None, zmax=None) -> go.Heatmap:
    """One ``go.Heatmap`` with the common settings (used by the views and the widgets)."""
    return go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmin=zmin, zmax=zmax, xgap=1, ygap=1,
                      customdata=customdata, hovertemplate=hover + "<extra></extra>",
                      colorbar=dict(title=dict(text=metric_label, side="right")))


def load_heatmap(load, metric: str = "load_ratio", title: str | None = None) -> go.Figure:
    """Layer × expert heatmap of expert load.

    Args:
        load: :func:`~workbench.analysis.expert_load` output (or a trace).
        metric: one of ``load_ratio`` (default; 1 = the uniform ``k/E``), ``token_share``,
            ``weight_share``, ``tokens``.
        title: figure title.
    """
    from workbench.analysis import expert_load

    if metric not in LOAD_METRICS:
        raise ValueError(f"metric must be one of {list(LOAD_METRICS)}, got {metric!r}")
    frame = _frame(load, expert_load, ["layer", "expert", metric, "tokens"], "workbench.analysis.expert_load")
    z = frame.pivot(index="layer", columns="expert", values=metric).sort_index()
    tokens = frame.pivot(index="layer", columns="expert", values="tokens").loc[z.index, z.columns]
    fig = go.Figure(matrix_heatmap(
        z.to_numpy(), z.columns.tolist(), z.index.tolist(), metric_label=LOAD_METRICS[metric],
        colorscale=_scale(metric), zmin=0, customdata=tokens.to_numpy(),
        hover="layer %{y}, expert %{x}<br>" + LOAD_METRICS[metric] + ": %{z:.3f}<br>tokens: %{customdata}"))
    style(fig, title or f"Expert load per layer ({LOAD_METRICS[metric]})", x="expert", y="decoder layer",
          height=max(280, 90 + 26 * len(z.index)))
    fig.update_yaxes(autorange="reversed", **category_axis(z.index))
    return fig


def specialization_heatmap(spec, layer=None, metric: str = "ratio", title: str | None = None) -> go.Figure:
    """Label × expert heatmap of label (domain) specialisation, one panel per layer.

    Args:
        spec: :func:`~workbench.analysis.label_specialization` output (or a trace).
        layer: one decoder layer, a list of them, or None for every layer in ``spec``.
        metric: ``ratio`` (default; share over ``k/E``), ``share``, ``lift`` or ``tokens``.
        title: figure title.
    """
    from workbench.analysis import label_specialization

    if metric not in SPEC_METRICS:
        raise ValueError(f"metric must be one of {list(SPEC_METRICS)}, got {metric!r}")
    frame = _frame(spec, label_specialization, ["layer", "label", "expert", metric],
                   "workbench.analysis.label_specialization")
    layers = sorted(frame.layer.unique()) if layer is None else [int(x) for x in np.atleast_1d(layer)]
    missing = [x for x in layers if x not in set(frame.layer)]
    if missing:
        raise ValueError(f"layers {missing} are not in the table; layers: {sorted(frame.layer.unique())}")
    zmax = float(frame[frame.layer.isin(layers)][metric].max()) or 1.0
    cols = min(len(layers), PANELS_PER_ROW)
    rows = -(-len(layers) // cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.02,
                        vertical_spacing=min(0.3, 0.5 / rows) if rows > 1 else 0.0,
                        subplot_titles=[f"layer {x}" for x in layers])
    for i, lay in enumerate(layers):
        row, col = i // cols + 1, i % cols + 1
        z = frame[frame.layer == lay].pivot(index="label", columns="expert", values=metric)
        fig.add_trace(matrix_heatmap(
            z.to_numpy(), z.columns.tolist(), [escape_token(v) for v in z.index],
            metric_label=SPEC_METRICS[metric], colorscale=_scale(metric), zmin=0, zmax=zmax,
            hover=f"layer {lay}<br>label %{{y}}, expert %{{x}}<br>{SPEC_METRICS[metric]}: %{{z:.3f}}"),
            row=row, col=col)
        if i > 0:
            fig.data[-1].showscale = False
        fig.update_xaxes(title_text="expert", row=row, col=col)
    default = f"Label specialisation ({SPEC_METRICS[metric]})"
    panel = 120 + 28 * frame.label.nunique()
    style(fig, title or default, height=max(300, panel * rows + 40 * (rows - 1)),
          width=max(700, 80 + 260 * cols) if len(layers) > 1 else None)
    fig.update_yaxes(autorange="reversed")
    for row in range(1, rows + 1):
        fig.update_yaxes(title_text="label", row=row, col=1)
    return fig


def coactivation_heatmap(coact, layer: int, metric: str = "lift", title: str | None = None) -> go.Figure:
    """Expert × expert co-activation matrix at one layer (diagonal left blank).

    Args:
        coact: :func:`~workbench.analysis.coactivation` output (or a trace).
        layer: decoder-layer index.
        metric: ``lift`` (default; 1 = chance), ``p_b_given_a`` or ``count``.
        title: figure title.
    """
    from workbench.analysis import coactivation

    if metric not in PAIR_METRICS:
        raise ValueError(f"metric must be one of {list(PAIR_METRICS)}, got {metric!r}")
    frame = _frame(coact, coactivation, ["layer", "a", "b", metric], "workbench.analysis.coactivation")
    sub = frame[frame.layer == layer]
    if sub.empty:
        raise ValueError(f"layer {layer} is not in the table; layers: {sorted(frame.layer.unique())}")
    num_experts = int(max(sub.a.max(), sub.b.max())) + 1
    z = np.full((num_experts, num_experts), np.nan)
    z[sub.a.to_numpy(), sub.b.to_numpy()] = sub[metric].to_numpy()
    experts = list(range(num_experts))
    fig = go.Figure(matrix_heatmap(
        z, experts, experts, metric_label=PAIR_METRICS[metric], colorscale=_scale(metric), zmin=0,
        hover="a = expert %{y}, b = expert %{x}<br>" + PAIR_METRICS[metric] + ": %{z:.3f}"))
    style(fig, title or f"Co-activation at layer {layer} ({PAIR_METRICS[metric]})", x="expert b",
          y="expert a", height=520, width=600)
    fig.update_yaxes(autorange="reversed")
    return fig


def transitions_heatmap(transitions, layer_from: int | None = None, title: str | None = None) -> go.Figure:
    """Expert at layer ``l`` × expert at the next recorded layer: ``P(to | from)``.

    Args:
        transitions: :func:`~workbench.analysis.layer_transitions` output (or a trace).
        layer_from: the source layer (default: the first).
        title: figure title.
    """
    from workbench.analysis import layer_transitions

    frame = _frame(transitions, layer_transitions, ["layer_from", "layer_to", "expert_from", "expert_to",
                                                   "share"], "workbench.analysis.layer_transitions")
    layer_from = int(frame.layer_from.min()) if layer_from is None else int(layer_from)
    sub = frame[frame.layer_from == layer_from]
    if sub.empty:
        raise ValueError(f"no transitions from layer {layer_from}; layers: {sorted(frame.layer_from.unique())}")
    size = int(max(sub.expert_from.max(), sub.expert_to.max())) + 1
    z = np.zeros((size, size))
    z[sub.expert_from.to_numpy(), sub.expert_to.to_numpy()] = sub.share.to_numpy()
    layer_to = int(sub.layer_to.iloc[0])
    fig = go.Figure(matrix_heatmap(
        z, list(range(size)), list(range(size)), metric_label="P(to | from)", colorscale=SEQUENTIAL,
        zmin=0, hover=f"layer {layer_from} expert %{{y}} → layer {layer_to} expert %{{x}}<br>"
                      "P(to | from): %{z:.3f}"))
    style(fig, title or f"Expert transitions, layer {layer_from} → {layer_to}",
          x=f"expert at layer {layer_to}", y=f"expert at layer {layer_from}", height=520, width=600)
    fig.update_yaxes(autorange="reversed")
    return fig
