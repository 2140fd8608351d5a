"""Widgets driven from pytest by setting control values and asserting what the figures show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.callbacks import Points
from test_views import SCRIPT, synthetic_norms, synthetic_trace

import workbench as wb
from workbench import analysis as A
from workbench.export import have_chromium
from workbench.testing import tiny_model
from workbench.widgets import ExpertCard, RoutingExplorer


@pytest.fixture()
def trace():
    return synthetic_trace()


def test_explorer_label_metric_and_layers_update_the_map(trace):
    ex = RoutingExplorer(trace)
    before = np.array(ex.matrix_fig.data[0].z)
    ex.label.value = "code"
    load = A.expert_load(trace, labels=["code"])
    np.testing.assert_allclose(ex.matrix_fig.data[0].z, load.pivot(index="layer", columns="expert",
                                                                   values="load_ratio"))
    assert not np.allclose(before, ex.matrix_fig.data[0].z)
    assert "label code" in ex.matrix_fig.layout.title.text
    ex.metric.value = "weight_share"
    np.testing.assert_allclose(ex.matrix_fig.data[0].z, load.pivot(index="layer", columns="expert",
                                                                   values="weight_share"))
    ex.metric.value = "lift"
    spec = A.label_specialization(trace)
    expected = spec[spec.label == "code"].pivot(index="layer", columns="expert", values="lift")
    np.testing.assert_allclose(ex.matrix_fig.data[0].z, expected)
    ex.layers.value = (3, 1)
    assert list(ex.matrix_fig.data[0].y) == [1, 3] and np.asarray(ex.matrix_fig.data[0].z).shape == (2, 6)
    assert list(ex.token_fig.data[0].y) == [1, 3]


def test_explorer_document_window_and_rank_update_the_token_map(trace):
    ex = RoutingExplorer(trace, max_tokens=4)
    ex.doc.value = 2
    np.testing.assert_array_equal(ex.token_fig.data[0].z, trace.topk_idx[:, 20:24, 0])
    ex.start.value = 3
    ex.rank.value = 1
    np.testing.assert_array_equal(ex.token_fig.data[0].z, trace.topk_idx[:, 23:27, 1])
    assert list(ex.token_fig.data[0].x) == [3, 4, 5, 6]
    assert "document 2" in ex.token_fig.layout.title.text


def test_clicking_a_cell_lists_its_tokens_in_context_escaped(trace):
    ex = RoutingExplorer(trace)
    layer, expert = 1, int(trace.topk_idx[0, 4, 0])  # token 4 is the script tag
    ex.matrix_fig.data[0]._dispatch_on_click(Points(point_inds=[(0, expert)], xs=[expert], ys=[layer]), None)
    assert ex.selected == (layer, expert)
    hits = int((trace.topk_idx[0] == expert).any(axis=1).sum())
    assert f"{hits} tokens routed to expert {expert} at layer {layer}" in ex.context.value
    assert "&lt;script&gt;" in ex.context.value and SCRIPT not in ex.context.value
    ex.label.value = "code"  # tokens 10-19 only
    ex.show_cell(layer, expert)
    code_hits = int((trace.topk_idx[0, 10:20] == expert).any(axis=1).sum())
    assert f"{code_hits} tokens routed" in ex.context.value
    # a click on the token map goes to the expert in that cell
    z = ex.token_fig.data[0].z
    ex.token_fig.data[0]._dispatch_on_click(Points(point_inds=[(2, 0)], xs=[0], ys=[3]), None)
    assert ex.selected == (3, int(z[2][0]))
    with pytest.raises(ValueError, match="out of range"):
        ex.show_cell(1, 99)


def test_explorer_export_buttons_write_html_and_csv(trace, tmp_path):
    ex = RoutingExplorer(trace, export_dir=tmp_path)
    ex.label.value = "prose"
    ex.export_bar.format.value = "csv"
    ex.export_bar.button.click()
    table = pd.read_csv(tmp_path / "routing_table.csv")
    assert set(table.label) == {"prose"} and len(table) == 3 * 6
    written = ex.export_bar.export("html")
    assert sorted(p.name for p in written) == ["routing_matrix.html", "routing_tokens.html"]
    page = (tmp_path / "routing_tokens.html").read_text()
    assert SCRIPT not in page and "&lt;script&gt;" in page
    assert '<script src="http' not in page  # plotly.js inline: works offline


def test_png_export_without_chromium_says_how_to_install(trace, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CHROMIUM", "none")
    ex = RoutingExplorer(trace, export_dir=tmp_path)
    ex.export_bar.format.value = "png"
    ex.export_bar.button.click()  # the button does not raise; the status line explains
    assert "apt-get install chromium" in ex.export_bar.status.value
    assert not list(tmp_path.glob("*.png"))
    ex.export_bar.format.value = "html"
    ex.export_bar.button.click()
    assert (tmp_path / "routing_matrix.html").is_file()


@pytest.mark.skipif(not have_chromium(), reason="needs Debian chromium (/usr/bin/chromium) for PNG export")
def test_card_png_export_with_chromium(trace, tmp_path):
    card = ExpertCard(trace, layer=2, expert=1, export_dir=tmp_path)
    written = card.export_bar.export("png")
    assert [p.name for p in written] == ["expert_layer2_e1_card.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_expert_card_follows_layer_and_expert(trace):
    card = ExpertCard(trace, layer=1, expert=0)
    ex_before = list(card.fig.data[0].y)
    card.expert.value = 3
    hits = (trace.topk_idx[0] == 3).any(axis=1)
    labels = trace.labels()
    expected = [hits[labels == name].sum() / (labels == name).sum() for name in ("code", "prose")]
    np.testing.assert_allclose(card.fig.data[0].y, expected)
    assert list(card.fig.data[0].y) != ex_before or not hits.any()
    card.layer.value = 3
    assert card.fig.layout.title.text == "Expert 3 at layer 3"
    cond = A.pair_metrics(card.counts, 2)[1][3]
    np.testing.assert_allclose(card.fig.data[2].y, np.delete(cond, 3))
    top = card.top_tokens()
    routed = pd.Series(trace.token_ids[(trace.topk_idx[2] == 3).any(axis=1)]).value_counts()
    assert top.routed.tolist() == sorted(routed.tolist(), reverse=True)[:len(top)]
    assert "not computed" in card.norm_html.value


def test_expert_card_shows_norm_statistics_and_escapes_tokens(trace):
    expert = int(trace.topk_idx[0, 4, 0])
    card = ExpertCard(trace, layer=1, expert=expert, norms=synthetic_norms())
    assert "mean ‖Y_e(x)‖" in card.norm_html.value
    hist = np.asarray(card.fig.data[3].y)
    assert hist.sum() == pytest.approx(1.0) and len(hist) == 6
    assert "&lt;script&gt;" in card.tokens_html.value and SCRIPT not in card.tokens_html.value
    card.layer.value = 3
    assert "no norms for layer 3" in card.norm_html.value


def test_widgets_on_a_recorded_tiny_model():
    lm = wb.wrap(*tiny_model("qwen3_moe"))
    texts = ["The quick brown fox", "def add(a, b):", "12 + 34 = 46"]
    trace = wb.record(lm, texts, labels=["en", "code", "math"], progress=False)
    norms = A.expert_output_norms(lm, texts, progress=False)
    ex = RoutingExplorer(trace)
    ex.doc.value = 1
    assert len(ex.token_fig.data[0].x) == int((trace.doc == 1).sum())
    card = ExpertCard(trace, layer=1, expert=int(trace.topk_idx[1, 0, 0]), norms=norms)
    assert isinstance(card.export_items()[f"layer1_e{card.expert.value}_card"], go.Figure)
    assert card.top_tokens().routed.sum() > 0


# -- issue 18: range-limited controls, titles on every change, whole characters -------------
def uneven_trace() -> wb.RoutingTrace:
    """Two labelled documents of 12 and 5 tokens (2 layers, E = 4, k = 1)."""
    rng = np.random.default_rng(3)
    doc = np.array([0] * 12 + [1] * 5)
    pos = np.concatenate([np.arange(12), np.arange(5)])
    idx = rng.integers(0, 4, size=(2, 17, 1))
    return wb.RoutingTrace(topk_idx=idx, topk_w=np.ones(idx.shape), token_ids=np.arange(17) + 5, doc=doc, pos=pos,
                           layers=[0, 1], num_experts=4, fingerprint="uneven",
                           token_text={i + 5: f"t{i}" for i in range(17)}, doc_labels=["english", "spanish"])


def test_explorer_from_token_is_bounded_by_the_document_and_titles_keep_the_label():
    ex = RoutingExplorer(uneven_trace(), max_tokens=4)
    assert (ex.start.min, ex.start.max, ex.start.step) == (0, 11, 4)
    assert "[english]" in ex.token_fig.layout.title.text
    ex.start.value = 99  # past the end: the control clamps it to the last position
    assert ex.start.value == 11 and list(ex.token_fig.data[0].x) == [11]
    ex.doc.value = 1
    assert ex.start.max == 4 and ex.start.value == 0
    title = ex.token_fig.layout.title.text
    assert "document 1 [spanish]" in title and "tokens 0–3 of 5" in title
    assert "of 5" in ex.window.value
    ex.start.value = 50
    assert ex.start.value == 4 and list(ex.token_fig.data[0].x) == [4]
    ex.rank.value = 0
    ex.layers.value = (1,)
    assert "[spanish]" in ex.token_fig.layout.title.text


def test_explorer_decodes_whole_characters_in_labels_ticks_and_context():
    from workbench.trace import partial_token_bytes

    lm = wb.wrap(*tiny_model("qwen3_moe"))
    texts = ["-Scully, ¿Hola? niño 日本", "plain text"]
    trace = wb.record(lm, texts, labels=["spanish", "en"], progress=False, add_special_tokens=False)
    if not trace.meta.get("token_bytes"):  # until wb.record stores them itself
        trace.meta["token_bytes"] = partial_token_bytes(lm.tokenizer, trace.token_ids)
    assert trace.meta["token_bytes"]
    ex = RoutingExplorer(trace)
    label = ex.doc.options[0][0]
    assert label.startswith("0 [spanish]: -Scully, ¿H") and "\ufffd" not in label
    ticks = "".join(ex.token_fig.layout.xaxis.ticktext)
    assert "\ufffd" not in ticks and "¿" in ticks and "日" in ticks
    first = int(np.flatnonzero(trace.doc == 0)[0])
    ex.show_cell(trace.layers[0], int(trace.topk_idx[0, first + 3, 0]))
    assert "\ufffd" not in ex.context.value
    assert trace.text_of(np.flatnonzero(trace.doc == 0)) == texts[0]


def test_record_keeps_the_bytes_of_partial_tokens():
    lm = wb.wrap(*tiny_model("mixtral"))
    trace = wb.record(lm, ["¿Hola?"], progress=False, add_special_tokens=False)
    assert trace.text_of(np.arange(trace.num_tokens)) == "¿Hola?"
