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


def long_trace(num_tokens: int = 64, num_experts: int = 16, seed: int = 1) -> wb.RoutingTrace:
    """One labelled document of ``num_tokens`` tokens, 2 layers, ``E`` experts, k = 2; its first
    tokens are "¿" split into two byte-level pieces, then "Hola" (bytes kept in ``meta``)."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(num_experts)[:2] for _ in range(2 * num_tokens)]).reshape(2, num_tokens, 2)
    ids = 10 + (np.arange(num_tokens) % 20)
    ids[:3] = [1, 2, 3]
    text = {int(t): f"w{int(t)}" for t in ids}
    text.update({1: "\ufffd", 2: "\ufffd", 3: "Hola"})
    return wb.RoutingTrace(topk_idx=idx, topk_w=np.full(idx.shape, 0.5), token_ids=ids, doc=np.zeros(num_tokens),
                           pos=np.arange(num_tokens), layers=[0, 1], num_experts=num_experts, fingerprint="long",
                           token_text=text, doc_labels=["spanish"],
                           meta={"top_k": 2, "token_bytes": {"1": "c2", "2": "bf"}})


def projection_table(num_labels: int = 9, kinds=("hs", "rw", "concat", "sum")) -> pd.DataFrame:
    """Two points per label and kind, fixed coordinates (the projection figure's input)."""
    rows = []
    for kind in kinds:
        for n in range(num_labels):
            for j in range(2):
                rows.append({"kind": kind, "index": 2 * n + j, "x": float(n), "y": float(j), "label": f"domain{n}",
                             "text": f"text {n}.{j}"})
    return pd.DataFrame(rows)


def all_figures(trace) -> dict[str, go.Figure]:
    from workbench.embeddings.explore import projection_figure

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
        "token_heatmap_long": views.token_heatmap(long_trace(), doc=0, max_tokens=64),
        "projection_figure": projection_figure(projection_table()),
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


# -- palettes, sizes, token labels (issue 18) ------------------------------------------------
def test_palettes_have_one_colour_per_category_and_okabe_ito_first():
    from workbench.views._style import MAX_CATEGORIES, PALETTE, palette

    assert palette(8) == PALETTE and palette(3) == PALETTE[:3]
    for n in range(1, MAX_CATEGORIES + 1):
        assert len(palette(n)) == n and len(set(palette(n))) == n, n
    assert len(palette(40)) == 40 and len(set(palette(40))) == MAX_CATEGORIES


def test_projection_colours_every_label_apart_and_fits_the_output_area():
    from workbench.embeddings.explore import projection_figure
    from workbench.views._style import MAX_WIDTH

    fig = projection_figure(projection_table(9))
    colours = {t.name: t.marker.color for t in fig.data}
    assert len(colours) == 9 and len(set(colours.values())) == 9  # code and arithmetic no longer share a blue
    assert all(t.marker.color == colours[t.name] for t in fig.data)  # a label keeps its colour in every panel
    assert fig.layout.width <= MAX_WIDTH and fig.layout.legend.orientation == "h"
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 4 and fig.layout.xaxis4.domain[1] <= 1.0  # 2 x 2: the 4th panel is in the figure
    assert projection_figure(projection_table(3, kinds=("hs", "rw"))).layout.width <= MAX_WIDTH


def test_every_figure_fits_the_output_area(trace):
    from workbench.views._style import MAX_WIDTH

    for name, fig in all_figures(trace).items():
        assert fig.layout.width is None or fig.layout.width <= MAX_WIDTH, name
    spec = A.label_specialization(trace)
    spec6 = pd.concat([spec.assign(layer=spec.layer + 10 * i) for i in range(2)])
    fig = views.specialization_heatmap(spec6)  # 6 layers: two rows of three panels
    assert fig.layout.width <= MAX_WIDTH and len(fig.data) == 6 and fig.layout.yaxis4.domain[1] < 0.5


def test_token_heatmap_is_categorical_labels_every_token_and_scrolls():
    from workbench.views._style import MAX_WIDTH, palette

    trace = long_trace(num_tokens=64, num_experts=16)
    fig = views.token_heatmap(trace, doc=0, max_tokens=64)
    hm = fig.data[0]
    assert (hm.zmin, hm.zmax) == (-0.5, 15.5)
    bands = [c for _, c in hm.colorscale]
    assert bands[::2] == palette(16) and bands[1::2] == palette(16)  # flat bands, one colour per expert
    ticks = list(hm.colorbar.tickvals)  # as many ids as have room beside two layers, evenly spaced
    assert ticks[0] == 0 and set(np.diff(ticks)) == {ticks[1]} and len(ticks) >= 5
    assert hm.texttemplate == "%{z}"  # the numbers the caption promises, at 64 tokens too
    assert len(fig.layout.xaxis.ticktext) == 64 and list(fig.layout.xaxis.tickvals) == list(range(64))
    assert fig.layout.xaxis.rangeslider.visible and list(fig.layout.xaxis.range) == [-0.5, 47.5]
    assert fig.layout.width <= MAX_WIDTH
    assert "[spanish]" in fig.layout.title.text
    short = views.token_heatmap(trace, doc=0, max_tokens=20)
    assert not short.layout.xaxis.rangeslider.visible and "tokens 0–19 of 64" in short.layout.title.text
    with pytest.raises(ValueError, match="past its end"):
        views.token_heatmap(trace, doc=0, start=64)


def test_token_heatmap_with_more_experts_than_colours_hides_the_colour_bar():
    trace = long_trace(num_tokens=10, num_experts=40)
    fig = views.token_heatmap(trace)
    assert fig.data[0].showscale is False and fig.data[0].texttemplate == "%{z}"


def test_token_text_is_decoded_on_character_boundaries():
    trace = long_trace()
    assert trace.text_of([0, 1, 2]) == "¿Hola" and trace.token_labels([0, 1, 2]) == ["¿…", "…¿", "Hola"]
    assert trace.token_string(1) == "‹c2›" and trace.token_string(3) == "Hola"
    fig = views.token_heatmap(trace, max_tokens=5)
    assert list(fig.layout.xaxis.ticktext[:3]) == ["¿…", "…¿", "Hola"]
    assert "�" not in "".join(fig.layout.xaxis.ticktext)
    # a trace without the bytes (recorded before) keeps its text as it was
    plain = wb.RoutingTrace(**{**trace.__dict__, "meta": {"top_k": 2}})
    assert plain.text_of([0, 1, 2]) == "\ufffd\ufffdHola"
    # traces combine their bytes
    both = wb.RoutingTrace.concat([trace, trace])
    assert both.text_of(np.flatnonzero(both.doc == 1)[:3]) == "¿Hola"


def test_partial_token_bytes_of_a_byte_level_tokenizer():
    from workbench.testing import tiny_tokenizer
    from workbench.trace import char_spans, partial_token_bytes

    tok = tiny_tokenizer()
    text = "¿Hola? 日本, niño"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)  # decoded one by one: mojibake
    raw = {int(k): bytes.fromhex(v) for k, v in partial_token_bytes(tok, ids).items()}
    pieces = [raw.get(i, tok.decode([i]).encode()) for i in ids]
    assert "".join(c for c, _, _ in char_spans(pieces)) == text


def test_report_caption_matches_the_token_figure():
    from workbench.views.report_sections import build_sections

    trace = synthetic_trace()
    section = build_sections(trace, {"expert_load": A.expert_load(trace), "load_summary": pd.DataFrame(),
                                     "label_specialization": A.label_specialization(trace),
                                     "specialization_scores": A.specialization_scores(trace),
                                     "vocab_specialization": A.vocab_specialization(trace),
                                     "coactivation": A.coactivation(trace)}, max_tokens=64)["tokens_doc0"]
    assert "number in each cell" in section.text and section.figure.data[0].texttemplate == "%{z}"
    assert "drag the slider" in section.text and len(section.figure.layout.xaxis.ticktext) == 10
