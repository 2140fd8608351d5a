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
