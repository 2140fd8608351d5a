"""Views: figure content, escaping, colour scales, axis labels, errors; figure-JSON snapshots.

Snapshots live in ``tests/snapshots/*.json`` (figure JSON with floats rounded and the plotly template
left out). Regenerate them after an intended change with::

    WORKBENCH_UPDATE_SNAPSHOTS=1 pytest tests/test_views.py
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import workbench as wb
from workbench import analysis as A
from workbench import views

SNAPSHOTS = Path(__file__).parent / "snapshots"
SCRIPT = "<script>alert('x')</script>"


def synthetic_trace(seed: int = 0) -> wb.RoutingTrace:
    """30 tokens, 3 labelled documents, 3 layers, E = 6, k = 2; one token's text is a script tag."""
    rng = np.random.default_rng(seed)
    num_layers, num_tokens, num_experts = 3, 30, 6
    scores = rng.normal(size=(num_layers, num_tokens, num_experts)).astype(np.float32) * 2
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :, :2]
    top = np.take_along_axis(scores, order, axis=-1)
    w = np.exp(top) / np.exp(top).sum(-1, keepdims=True)
    token_ids = rng.integers(3, 12, size=num_tokens)
    token_ids[4] = 99
    doc = np.repeat([0, 1, 2], 10)
    text = {int(t): f"tok{int(t)}" for t in token_ids}
    text[99] = SCRIPT
    return wb.RoutingTrace(topk_idx=order, topk_w=w, token_ids=token_ids, doc=doc, pos=np.tile(np.arange(10), 3),
                           layers=[1, 2, 3], num_experts=num_experts, fingerprint="synthetic", token_text=text,
                           doc_labels=["prose", "code", "prose"], scores=scores, meta={"top_k": 2})


def synthetic_norms(seed: int = 0, num_experts: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for layer in (1, 2):
        for t in range(20):
            router = rng.permutation(num_experts)
            norm = np.where(rng.random(num_experts) < 0.5, router, rng.permutation(num_experts))
            norm = np.argsort(np.argsort(norm + rng.random(num_experts) * 0.1))
            for e in range(num_experts):
                rows.append({"layer": layer, "t": t, "expert": e, "norm": float(num_experts - norm[e]),
                             "router_rank": int(router[e]), "norm_rank": int(norm[e]),
                             "chosen": bool(router[e] < 2)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


def all_figures(trace) -> dict[str, go.Figure]:
    counts = A.TraceCounts(trace)
    vocab = A.vocab_specialization(trace)
    norms = synthetic_norms()
    return {
        "token_heatmap": views.token_heatmap(trace, doc=0),
        "load_heatmap": views.load_heatmap(A.expert_load(counts)),
        "specialization_heatmap": views.specialization_heatmap(A.label_specialization(counts)),
        "coactivation_heatmap": views.coactivation_heatmap(A.coactivation(counts), layer=2),
        "transitions_heatmap": views.transitions_heatmap(A.layer_transitions(trace), layer_from=1),
        "entropy_plot": views.entropy_plot(A.router_entropy(trace)),
        "specialization_plot": views.specialization_plot(A.specialization_scores(counts), A.vocab_summary(vocab, 1)),
        "vocab_bar": views.vocab_bar(vocab, layer=3, n=8),
        "norm_rank_heatmap": views.norm_rank_heatmap(A.norm_rank_table(norms)),
    }


def rounded(obj, digits: int = 5):
    """Figure JSON made comparable: arrays to lists, floats rounded, NaN as None."""
    if isinstance(obj, dict) and "bdata" in obj and "dtype" in obj:  # plotly's typed-array encoding
        flat = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        shape = [int(x) for x in str(obj.get("shape", len(flat))).split(",")]
        return rounded(flat.reshape(shape), digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return rounded(obj.tolist(), digits)
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else round(float(obj), digits)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def figure_snapshot(fig: go.Figure) -> dict:
    data = fig.to_plotly_json()
    data["layout"].pop("template", None)
    return rounded(data)


@pytest.mark.parametrize("name", sorted(all_figures(synthetic_trace())))
def test_figure_json_matches_snapshot(trace, name):
    snap = figure_snapshot(all_figures(trace)[name])
    path = SNAPSHOTS / f"{name}.json"
    if os.environ.get("WORKBENCH_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(snap, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    if not path.is_file():
        pytest.fail(f"no snapshot {path}; create it with WORKBENCH_UPDATE_SNAPSHOTS=1 pytest {__file__}")
    assert snap == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(all_figures(synthetic_trace())))
def test_every_view_labels_its_axes_and_title(trace, name):
    fig = all_figures(trace)[name]
    assert fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text, name


def test_token_text_is_escaped_in_hover_ticks_and_json(trace):
    fig = views.token_heatmap(trace, doc=0)
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in fig.layout.xaxis.ticktext
    assert any("&lt;script&gt;" in cell for row in fig.data[0].hovertext for cell in row)
    assert "<script>" not in fig.to_json()
    assert "<script>" not in views.vocab_bar(A.vocab_specialization(trace), n=30).to_json()


def test_token_heatmap_cells_are_the_recorded_experts(trace):
    fig = views.token_heatmap(trace, doc=1, layers=[3, 1], rank=1, start=2, max_tokens=5)
    tokens = np.arange(12, 17)
    np.testing.assert_array_equal(fig.data[0].z, trace.topk_idx[[2, 0]][:, tokens, 1])
    assert list(fig.data[0].x) == [2, 3, 4, 5, 6] and list(fig.data[0].y) == [3, 1]
    hover = fig.data[0].hovertext[0][0]
    expert, weight = trace.topk_idx[2, 12, 0], trace.topk_w[2, 12, 0]
    assert f"{expert} ({weight:.2f})" in hover and "layer 3" in hover


def test_load_heatmap_metrics_and_colour_scales(trace):
    load = A.expert_load(trace)
    ratio, share = views.load_heatmap(load), views.load_heatmap(trace, metric="token_share")
    np.testing.assert_allclose(ratio.data[0].z, load.pivot(index="layer", columns="expert", values="load_ratio"))
    assert ratio.data[0].colorscale == go.Heatmap(colorscale="Cividis").colorscale
    assert share.data[0].colorscale == go.Heatmap(colorscale="Viridis").colorscale
    with pytest.raises(ValueError, match="metric must be one of"):
        views.load_heatmap(load, metric="entropy")


def test_views_say_which_analysis_they_need(trace):
    with pytest.raises(ValueError, match="router_entropy"):
        views.entropy_plot(A.expert_load(trace))
    with pytest.raises(ValueError, match="layer 9 is not in the table"):
        views.coactivation_heatmap(trace, layer=9)
    with pytest.raises(ValueError, match=r"layers \[9\]"):
        views.specialization_heatmap(trace, layer=9)


def test_specialization_heatmap_has_one_panel_per_layer(trace):
    fig = views.specialization_heatmap(trace)
    assert len(fig.data) == 3 and [d.showscale for d in fig.data] == [None, False, False]
    single = views.specialization_heatmap(trace, layer=2, metric="share")
    spec = A.label_specialization(trace)
    expected = spec[spec.layer == 2].pivot(index="label", columns="expert", values="share")
    np.testing.assert_allclose(single.data[0].z, expected.to_numpy())
