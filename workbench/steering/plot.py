"""Figures of steering: the contrast heatmap, the controlled experiment's bar chart, and the
published figures beside ours (:func:`comparison_plot`).

The contrast uses a diverging purple-orange scale (``PuOr``, readable with colour-vision
deficiency) centred on 0: orange = set A activates the expert more, purple = set B does.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.steering import contrast_experts, contrast_heatmap
    >>> idx = np.array([[[0, 1]] * 4 + [[2, 3]] * 4]); doc = np.repeat(np.arange(4), 2)
    >>> trace = wb.RoutingTrace(idx, np.full((1, 8, 2), 0.5), np.zeros(8), doc, np.tile([0, 1], 4),
    ...                         [0], 4, "x", doc_labels=["a", "a", "b", "b"])
    >>> fig = contrast_heatmap(contrast_experts(trace, "a", "b", permutations=10))
    >>> fig.data[0].z.shape, fig.data[0].zmid
    ((1, 4), 0)
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.views._style import PALETTE, escape_token, style

DIVERGING = "PuOr_r"
VALUES = {"effect": "Cohen's d", "t": "Welch's t", "diff": "mean difference"}


def outline_shapes(layers, marked=(), activated=()) -> list[dict]:
    """Rectangles around ``(layer, expert)`` cells of a contrast heatmap with rows ``layers``:
    solid black for ``marked`` (the experts steered off), dashed for ``activated`` (switched on)."""
    pos = {int(layer): i for i, layer in enumerate(layers)}
    shapes = []
    for pairs, dash in ((marked, "solid"), (activated, "dash")):
        for layer, expert in pairs or ():
            if int(layer) in pos:
                y = pos[int(layer)]
                shapes.append(dict(type="rect", x0=expert - 0.5, x1=expert + 0.5, y0=y - 0.5, y1=y + 0.5,
                                   line=dict(color="black", width=2, dash=dash)))
    return shapes


def contrast_heatmap(contrast, value: str = "effect", title: str | None = None,
                     mark_top: int = 10, marked=None, activated=None) -> go.Figure:
    """Layer × expert heatmap of an :class:`~workbench.steering.contrast.ExpertContrast`.

    Args:
        contrast: the contrast result.
        value: ``"effect"`` (Cohen's d), ``"t"`` or ``"diff"``.
        title: figure title.
        mark_top: outline the ``mark_top`` best-ranked experts (0 = none).
        marked: outline these ``(layer, expert)`` pairs instead (e.g. a panel's selection).
        activated: pairs switched on (SteerMoE), outlined dashed.

    Returns:
        A heatmap with ``z`` of shape ``[L, E]``; infinite values (no spread in either set) are
        drawn at the largest finite magnitude; hover shows d, t, p and q.
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {list(VALUES)}, got {value!r}")
    table = contrast.table
    layers, num_experts = list(contrast.layers), contrast.num_experts
    pos = {layer: i for i, layer in enumerate(layers)}
    z = np.zeros((len(layers), num_experts))
    custom = np.zeros((len(layers), num_experts, 4))
    rows = table.layer.map(pos).to_numpy(), table.expert.to_numpy()
    z[rows] = table[value].to_numpy()
    custom[rows] = table[["effect", "t", "p", "q"]].to_numpy()
    finite = np.abs(z[np.isfinite(z)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    z = np.nan_to_num(z, posinf=bound, neginf=-bound)
    a, b = escape_token("+".join(contrast.a)), escape_token("+".join(contrast.b))
    heat = go.Heatmap(
        z=z, x=list(range(num_experts)), y=[str(x) for x in layers], customdata=custom,
        colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
        colorbar=dict(title=dict(text=f"{VALUES[value]}<br>{a} − {b}")),
        hovertemplate=("layer %{y}, expert %{x}<br>d = %{customdata[0]:.2f}, t = %{customdata[1]:.2f}"
                       "<br>p = %{customdata[2]:.3g}, q = %{customdata[3]:.3g}<extra></extra>"))
    fig = go.Figure(heat)
    if marked is None:
        marked = contrast.top(mark_top) if mark_top else []
    fig.update_layout(shapes=outline_shapes(layers, marked, activated))
    style(fig, title or f"Experts {a} activates more (orange) or less (purple) than {b}",
          x="expert", y="layer", height=max(260, 60 * len(layers) + 140), width=max(520, 26 * num_experts + 200))
    fig.update_yaxes(type="category", autorange="reversed")
    step = max(1, -(-num_experts // 32))  # every expert up to 32, else every n-th (the figure is at most 940 px)
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, num_experts, step)))
    return fig


CONDITION_TEXT = {"baseline": "baseline", "top_off": "top-N off", "random_off": "random N off",
                  "top_on": "top-N on", "switch": "SteerMoE on+off", "random_switch": "random on+off"}


def experiment_plot(experiment, title: str | None = None) -> go.Figure:
    """Behaviour rate per condition with 95% Wilson intervals (random controls: one bar per seed).

    Args:
        experiment: a :class:`~workbench.steering.experiment.SteeringExperiment`.
        title: figure title.
    """
    table = experiment.table
    n = str(experiment.settings.get("n", "N"))
    labels = [CONDITION_TEXT.get(c, c).replace("N", n) + ("" if s < 0 else f" (seed {s})")
              for c, s in zip(table.condition, table.seed)]
    colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(CONDITION_TEXT)}
    fig = go.Figure(go.Bar(
        x=labels, y=table.rate, marker_color=[colours.get(c, PALETTE[-1]) for c in table.condition],
        error_y=dict(type="data", symmetric=False, array=(table.ci_high - table.rate).to_numpy(),
                     arrayminus=(table.rate - table.ci_low).to_numpy()),
        customdata=np.stack([table.hits, table.n], axis=1),
        hovertemplate="%{x}<br>rate %{y:.2f} (%{customdata[0]}/%{customdata[1]})<extra></extra>"))
    style(fig, title or f"Behaviour: {escape_token(experiment.behaviour_name)}", x="condition",
          y="behaviour rate", height=420, width=max(520, 80 * len(labels) + 160))
    fig.update_yaxes(range=[0, 1.05])
    return fig


#: published changes of the steered behaviour against the unsteered model (PAPERS.md section 4, and
#: the abstract in adobe-research/SteerMoE's README); None = not reported
PUBLISHED = {
    "MoTE, DeepSeek-R1 (refusals)": {"steered": -0.52, "random": -0.09},
    "SteerMoE, 6 LLMs (safety, best)": {"steered": 0.20, "random": None},
}
#: the steered condition and its random control of each preset
STEERED = {"top_off": "random_off", "switch": "random_switch"}


def _relative(experiment, condition: str):
    """Change of ``condition``'s hit rate relative to the baseline, with a 95% interval."""
    from workbench.steering.stats import paired_effect

    conts = experiment.continuations
    hits = conts.pivot_table(index="prompt_id", columns=["condition", "seed"], values="hit", aggfunc="first")
    base = hits["baseline"].to_numpy(dtype=float)[:, 0]
    rate = float(base.mean())
    if rate <= 0:
        return float("nan"), float("nan"), float("nan")
    r = paired_effect(hits[condition].to_numpy(dtype=float).mean(axis=1), base, resamples=2000)
    return r["effect"] / rate, r["ci_low"] / rate, r["ci_high"] / rate


def comparison_plot(experiments, published=None, title: str | None = None) -> go.Figure:
    """Published effects beside ours: change of the behaviour relative to the unsteered model.

    Args:
        experiments: ``{label: SteeringExperiment}``; each must hold ``baseline`` and a steered
            condition with its random control (``top_off``/``random_off`` or ``switch``/``random_switch``).
        published: ``{label: {"steered": change, "random": change or None}}`` (default :data:`PUBLISHED`).
        title: figure title.

    Returns:
        Two panels of bars (steered, random control): the papers' figures and this model's, the
        latter with 95% bootstrap intervals over prompts.
    """
    published = PUBLISHED if published is None else published
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("published", "this model (95% CI over prompts)"))
    colours = {"steered": PALETTE[3], "random": PALETTE[4]}
    for kind in ("steered", "random"):
        labels = [k for k, v in published.items() if v.get(kind) is not None]
        fig.add_trace(go.Bar(x=labels, y=[published[k][kind] for k in labels], name=f"{kind} experts",
                             marker_color=colours[kind], legendgroup=kind, offsetgroup=kind), row=1, col=1)
    for kind in ("steered", "random"):
        xs, ys, lows, highs = [], [], [], []
        for label, exp in experiments.items():
            ran = set(exp.table.condition)
            steered = next((c for c in STEERED if c in ran), None)
            if steered is None or "baseline" not in ran or STEERED[steered] not in ran:
                raise ValueError(f"{label!r} needs baseline, a steered condition and its random control; it ran "
                                 f"{sorted(ran)}")
            value, low, high = _relative(exp, steered if kind == "steered" else STEERED[steered])
            xs.append(label), ys.append(value), lows.append(value - low), highs.append(high - value)
        fig.add_trace(go.Bar(x=xs, y=ys, name=f"{kind} experts", marker_color=colours[kind], legendgroup=kind,
                             offsetgroup=kind, showlegend=False,
                             error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows)), row=1, col=2)
    style(fig, title or "Steering: the papers' effects and this model's", y="change vs unsteered",
          height=430, width=900)
    fig.update_yaxes(tickformat="+.0%")
    return fig
