"""The trace store: recording into it, lazy opening, selections, SQL, and streaming analyses that equal
the in-memory ones — at a real routing shape (48 layers, 128 experts, top-8) as well as on tiny models."""

import json

import numpy as np
import pandas as pd
import pytest

import workbench as wb
from workbench import analysis as A
from workbench.analysis import TraceCounts
from workbench.store.aggregates import SAMPLES


def synthetic(tokens=3000, layers=48, experts=128, k=8, docs=12, seed=0, scores=False) -> wb.RoutingTrace:
    """A trace at a real routing shape with distinct top-k ids per token, some empty slots and repeats."""
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((layers, tokens, experts), dtype=np.float32), axis=-1)[:, :, :k].astype(np.int16)
    idx[:, :, 0] = np.where(rng.random((layers, tokens)) < 0.3, idx[:, :, 0] % 8, idx[:, :, 0])  # skewed load
    idx = np.where(np.arange(k) == k - 1, np.where(rng.random((layers, tokens, 1)) < 0.05, -1, idx), idx)
    idx[min(3, layers - 1), 5, 1] = idx[min(3, layers - 1), 5, 0]  # a repeated expert in one token's slots (an edited routing can do that)
    w = np.where(idx >= 0, rng.random((layers, tokens, k)), 0).astype(np.float32)
    w = -np.sort(-w, axis=-1)
    w = (w / w.sum(-1, keepdims=True)).astype(np.float16).astype(np.float32)
    doc = np.sort(rng.integers(0, docs, tokens)).astype(np.int32)
    doc[:docs] = np.arange(docs)
    doc.sort()
    pos = np.concatenate([np.arange(n) for n in np.bincount(doc, minlength=docs)]).astype(np.int32)
    labels = [["en", "de", 1, "1", None][d % 5] for d in range(docs)]
    sc = rng.normal(size=(layers, tokens, experts)).astype(np.float16) if scores else None
    return wb.RoutingTrace(idx, w, rng.zipf(1.3, tokens) % 500, doc, pos, list(range(0, 2 * layers, 2)), experts,
                           "fp-synthetic", token_text={i: f"t{i}" for i in range(500)}, doc_labels=labels,
                           scores=sc, meta={"top_k": k, "model": "synthetic"})


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory):
    trace = synthetic()
    return trace, trace.to_store(tmp_path_factory.mktemp("store") / "s")


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False,
                                  rtol=1e-12, atol=1e-12)


def test_store_round_trip_and_size_at_real_routing_shape(real_shape):
    trace, stored = real_shape
    assert isinstance(stored, wb.StoredTrace)
    back = stored.materialize()
    for name in ("topk_idx", "topk_w", "token_ids", "doc", "pos"):
        assert np.array_equal(getattr(back, name), getattr(trace, name)), name
    assert back.doc_labels == trace.doc_labels and back.layers == trace.layers
    assert [type(x) for x in stored.doc_labels] == [type(x) for x in trace.doc_labels]  # 1 stays apart from "1"
    shard_bytes = sum((stored.folders[0] / s["file"]).stat().st_size for s in stored._base.parts[0].shards)
    assert shard_bytes / (trace.num_tokens * 48 * 8) <= 4.5


def test_streamed_counts_equal_in_memory_counts(real_shape):
    trace, stored = real_shape
    streamed, memory = stored.counts(), TraceCounts(trace)
    assert streamed.label_names == memory.label_names
    for name in ("label_counts", "label_tokens", "counts", "coact", "doc_start"):
        assert np.array_equal(getattr(streamed, name), getattr(memory, name)), name
    np.testing.assert_allclose(streamed.label_weight, memory.label_weight, rtol=1e-12)
    assert streamed.coact[3].sum() == memory.coact[3].sum()  # the repeated expert is counted once


@pytest.mark.parametrize("analysis", [
    A.expert_load, A.load_summary, A.label_specialization, A.specialization_scores, A.coactivation,
    lambda t: A.expert_load(t, labels=["de", "1"]), lambda t: A.layer_transitions(t),
    lambda t: A.layer_transitions(t, rank=None), lambda t: A.layer_transitions(t, rank=3),
    lambda t: A.vocab_specialization(t, min_count=2), lambda t: A.vocab_specialization(t, top1=True),
    lambda t: pd.DataFrame(A.coactivation_matrix(t, layer=10, metric="lift"))])
def test_streaming_analyses_equal_in_memory_analyses(real_shape, analysis):
    trace, stored = real_shape
    assert_frames_equal(analysis(stored), analysis(trace))


def test_router_entropy_streamed_equals_in_memory(tmp_path):
    trace = synthetic(tokens=400, layers=4, experts=16, k=4, scores=True)
    stored = trace.to_store(tmp_path / "s")
    assert stored.has_scores
    assert_frames_equal(A.router_entropy(stored), A.router_entropy(trace))
    assert_frames_equal(A.token_entropy(stored), A.token_entropy(trace))


def test_selections_equal_routing_trace_select(real_shape):
    trace, stored = real_shape
    for kwargs in ({"docs": [1, 4, 5]}, {"labels": ["de", "1"]}, {"layers": [10, 2]}, {"labels": [None]},
                   {"docs": [0, 2], "layers": [0]}):
        got, want = stored.select(**kwargs), trace.select(**kwargs)
        assert got.num_tokens == want.num_tokens and got.num_docs == want.num_docs, kwargs
        m = got.materialize()
        for name in ("topk_idx", "topk_w", "token_ids", "doc", "pos"):
            assert np.array_equal(getattr(m, name), getattr(want, name)), (kwargs, name)
        assert m.doc_labels == want.doc_labels and m.layers == want.layers
        assert_frames_equal(A.expert_load(got), A.expert_load(want))
        assert_frames_equal(A.coactivation(got), A.coactivation(want))
    window = stored.select(tokens=(100, 400))
    assert np.array_equal(window.materialize().topk_idx, trace.topk_idx[:, 100:400])
    nested = stored.select(labels=["en", "de"]).select(docs=[1])
    assert nested.materialize().doc_labels == trace.select(labels=["en", "de"]).select(docs=[1]).doc_labels


def test_filters_push_down_to_files_and_columns(real_shape, monkeypatch):
    _, stored = real_shape
    import workbench.store.reader as reader
    seen = []
    original = reader.read_rows

    def spy(part, shard, rows, **kw):
        seen.append((shard["shard"], None if rows is None else len(rows), tuple(kw["layers"])))
        return original(part, shard, rows, **kw)
    monkeypatch.setattr("workbench.store.stored.read_rows", spy)
    stored.select(docs=[0], layers=[4]).materialize()
    assert seen and all(layers == (4,) for _, _, layers in seen)
    assert len({s for s, _, _ in seen}) == 1  # document 0 lies in one shard; no other file is opened


def test_several_folders_open_as_one_trace(tmp_path):
    trace = synthetic(tokens=1200, layers=6, experts=32, k=4, docs=8)
    first, second = trace.select(docs=[0, 1, 2]), trace.select(docs=[3, 4, 5, 6, 7])
    first.to_store(tmp_path / "a")
    second.to_store(tmp_path / "b")
    both = wb.open_trace([tmp_path / "a", tmp_path / "b"])
    assert both.num_docs == 8 and both.doc_labels == trace.doc_labels
    m = both.materialize()
    assert np.array_equal(m.topk_idx, trace.topk_idx) and np.array_equal(m.doc, trace.doc)
    assert_frames_equal(A.label_specialization(both), A.label_specialization(trace))
    assert both.sql("SELECT max(doc) FROM routing").fetchall()[0][0] == 7
    assert both.sql("SELECT count(DISTINCT t) FROM tokens").fetchall()[0][0] == trace.num_tokens
    other = synthetic(tokens=50, layers=6, experts=32, k=4, docs=2)
    other.fingerprint = "another-model"
    other.to_store(tmp_path / "c")
    with pytest.raises(wb.TraceMismatchError, match="same model"):
        wb.open_trace([tmp_path / "a", tmp_path / "c"])


def test_sql_views_agree_with_the_arrays(real_shape):
    trace, stored = real_shape
    got = stored.sql("SELECT layer, expert, count(*) AS n FROM routing WHERE layer = 12 GROUP BY ALL "
                     "ORDER BY expert").df()
    pos = trace.layer_index(12)
    want = np.bincount(trace.topk_idx[pos][trace.topk_idx[pos] >= 0], minlength=128)
    assert np.array_equal(np.bincount(got.expert, weights=got.n, minlength=128).astype(int), want)
    per_label = stored.sql("SELECT coalesce(label, '(none)') AS label, count(DISTINCT t) AS n FROM tokens "
                           "GROUP BY ALL").fetchall()
    names = ["(none)" if x is None else str(x) for x in trace.labels()]  # SQL labels are text: 1 and "1" meet
    assert dict(per_label) == pd.Series(names).value_counts().to_dict()
    sub = stored.select(docs=[2])
    ranks = sub.sql("SELECT min(t), max(t), min(doc), max(doc), max(rank) FROM routing").fetchall()[0]
    assert ranks == (0, sub.num_tokens - 1, 0, 0, 7)
    assert stored.relation("docs").df().label.tolist()[:3] == ["en", "de", "1"]


def test_recording_into_a_store_equals_the_in_memory_recording(tiny, texts, tmp_path):
    lm = tiny("qwen3_moe")
    labels = ["en", "code", 3, "3"]
    memory = wb.record(lm, texts, labels=labels, scores=True, batch_size=3, progress=False)
    stored = wb.record(lm, texts, labels=labels, scores=True, batch_size=3, out=tmp_path / "s", progress=False)
    assert isinstance(stored, wb.StoredTrace) and stored.has_scores
    m = stored.materialize()
    assert np.array_equal(m.topk_idx, memory.topk_idx) and np.array_equal(m.token_ids, memory.token_ids)
    np.testing.assert_allclose(m.topk_w, memory.topk_w, rtol=1e-3)  # float16 on disk
    assert np.array_equal(m.scores, memory.scores) and m.doc_labels == labels
    assert m.token_text == memory.token_text
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["fingerprint"] == lm.fingerprint
    assert manifest["meta"]["weights_unit"] and manifest["meta"]["scores_unit"] == lm.adapter.router_output
    assert len(manifest["shards"]) == 2  # one shard per batch
    stored.check_model(lm)
    with pytest.raises(wb.TraceMismatchError):
        stored.check_model(tiny("olmoe"))


def test_widgets_and_views_on_a_stored_trace(real_shape):
    from workbench.views import token_heatmap
    from workbench.widgets import ExpertCard, RoutingExplorer
    trace, stored = real_shape
    ex, ref = RoutingExplorer(stored), RoutingExplorer(trace)
    for control, value in (("label", "de"), ("metric", "lift"), ("doc", 3), ("start", 5), ("rank", 2)):
        setattr(getattr(ex, control), "value", value)
        setattr(getattr(ref, control), "value", value)
    assert np.array_equal(np.asarray(ex.matrix_fig.data[0].z), np.asarray(ref.matrix_fig.data[0].z))
    assert np.array_equal(np.asarray(ex.token_fig.data[0].z, dtype=float),
                          np.asarray(ref.token_fig.data[0].z, dtype=float), equal_nan=True)
    ex.show_cell(layer=20, expert=3)
    ref.show_cell(layer=20, expert=3)
    assert ex.context.value == ref.context.value  # the same tokens, weights and count, from the cached samples
    card, ref_card = ExpertCard(stored, layer=8, expert=5), ExpertCard(trace, layer=8, expert=5)
    assert_frames_equal(card.top_tokens(), ref_card.top_tokens())
    assert_frames_equal(card.label_table(), ref_card.label_table())
    fig = token_heatmap(stored, doc=2)
    assert fig.data[0].z.shape == (48, min(128, int((trace.doc == 2).sum())))


def test_routed_sample_beyond_the_cached_samples(real_shape):
    trace, stored = real_shape
    tokens, weights, total = stored.counts().routed_sample(0, 2, limit=SAMPLES + 10)
    want = TraceCounts(trace).routed_sample(0, 2, limit=SAMPLES + 10)
    assert np.array_equal(tokens, want[0]) and total == want[2]
    np.testing.assert_allclose(weights, want[1])


def test_aggregates_are_cached_beside_the_store(real_shape, monkeypatch):
    _, stored = real_shape
    stored.counts()
    cached = list((stored.folders[0] / "aggregates").glob("counts-*.safetensors"))
    assert cached
    reopened = wb.open_trace(stored.folders[0])
    monkeypatch.setattr("workbench.store.aggregates.compute_counts",
                        lambda *a, **k: pytest.fail("recomputed although cached"))
    assert np.array_equal(reopened.counts().coact, stored.counts().coact)


def test_old_saved_traces_load_or_convert_with_a_clear_message(tmp_path):
    trace = synthetic(tokens=200, layers=2, experts=8, k=2, docs=3)
    trace.save(tmp_path / "old")
    with pytest.raises(wb.StoreError, match="convert_trace"):
        wb.open_trace(tmp_path / "old")
    stored = wb.convert_trace(tmp_path / "old", tmp_path / "new")
    assert np.array_equal(stored.materialize().topk_idx, trace.topk_idx)
    assert np.array_equal(wb.RoutingTrace.load(tmp_path / "new").topk_idx, trace.topk_idx)
    with pytest.raises(wb.StoreError, match="no trace store"):
        wb.open_trace(tmp_path)


def test_materialize_refuses_a_corpus(real_shape):
    _, stored = real_shape
    with pytest.raises(MemoryError, match="select"):
        stored.materialize(max_slots=1000)


def test_cli_analyse_and_sql_over_two_stores(tmp_path, capsys):
    from workbench.cli import main
    trace = synthetic(tokens=600, layers=3, experts=16, k=4, docs=6)
    trace.select(docs=[0, 1, 2]).to_store(tmp_path / "a")
    trace.select(docs=[3, 4, 5]).to_store(tmp_path / "b")
    assert main(["analyse", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "tables")]) == 0
    load = pd.read_csv(tmp_path / "tables" / "expert_load.csv")
    assert load.groupby("layer").tokens.sum().tolist() == [int((trace.topk_idx[p] >= 0).sum()) for p in range(3)]
    assert (tmp_path / "tables" / "coactivation.csv").is_file()
    assert main(["sql", str(tmp_path / "a"), str(tmp_path / "b"), "--query",
                 "SELECT count(DISTINCT doc) AS docs FROM tokens"]) == 0
    assert capsys.readouterr().out.split()[-1] == "6"
    assert main(["sql", str(tmp_path / "missing"), "--query", "SELECT 1"]) == 2
