"""RoutingTrace: tidy frame, slicing, save/load without pickle, model checks, notebook summary."""

import json

import numpy as np
import pytest

import workbench as wb


def _synthetic(fingerprint="abc", k=2):
    idx = np.array([[[0, 1], [2, -1], [1, 0]], [[3, 2], [3, 1], [0, 2]]], dtype=np.int16)[:, :, :k]
    w = np.array([[[0.7, 0.3], [1.0, 0.0], [0.6, 0.4]], [[0.5, 0.5], [0.9, 0.1], [0.8, 0.2]]])[:, :, :k]
    return wb.RoutingTrace(topk_idx=idx, topk_w=w, token_ids=[10, 11, 12], doc=[0, 0, 1], pos=[0, 1, 0],
                           layers=[1, 3], num_experts=4, fingerprint=fingerprint,
                           token_text={10: "<script>", 11: "b", 12: "c"}, doc_labels=["x", "y"],
                           meta={"model": "synthetic"})


def test_dataframe_rows_and_empty_slots():
    t = _synthetic()
    df = t.to_dataframe()
    assert len(df) == 11  # 12 slots, one empty
    assert len(t.to_dataframe(include_empty=True)) == 12
    row = df[(df.layer == 3) & (df.t == 1) & (df["rank"] == 0)].iloc[0]
    assert (row.expert, row.token, row.label, row.doc) == (3, "b", "x", 0)
    assert df.weight.dtype == np.float32


def test_select_and_concat():
    t = _synthetic()
    s = t.select(labels=["y"], layers=[3])
    assert s.layers == [3] and s.num_tokens == 1 and s.doc.tolist() == [0] and s.doc_labels == ["y"]
    both = wb.RoutingTrace.concat([t, t])
    assert both.num_tokens == 6 and both.doc.tolist() == [0, 0, 1, 2, 2, 3]
    assert both.doc_labels == ["x", "y", "x", "y"]
    with pytest.raises(wb.TraceMismatchError, match="different models"):
        wb.RoutingTrace.concat([t, _synthetic("zzz")])
    with pytest.raises(KeyError, match="recorded layers"):
        t.layer_index(2)


def test_save_load_roundtrip_without_pickle(tmp_path):
    t = _synthetic()
    t.save(tmp_path / "tr")
    files = sorted(p.name for p in (tmp_path / "tr").iterdir())
    assert files == ["trace.json", "trace.safetensors"]
    back = wb.RoutingTrace.load(tmp_path / "tr")
    assert np.array_equal(back.topk_idx, t.topk_idx) and np.array_equal(back.topk_w, t.topk_w)
    assert back.token_text == t.token_text and back.doc_labels == t.doc_labels
    assert back.fingerprint == "abc"
    meta = json.loads((tmp_path / "tr" / "trace.json").read_text())
    meta["schema_version"] = 99
    (tmp_path / "tr" / "trace.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="schema version 99"):
        wb.RoutingTrace.load(tmp_path / "tr")
    with pytest.raises(FileNotFoundError, match="no routing trace"):
        wb.RoutingTrace.load(tmp_path)


def test_trace_from_another_model_is_refused(tiny, texts):
    a, b = tiny("mixtral"), tiny("olmoe")
    trace = wb.record(a, texts, progress=False)
    trace.check_model(a)
    with pytest.raises(wb.TraceMismatchError, match="recorded on another model"):
        trace.check_model(b)


def test_summary_html_escapes_tokens():
    html = _synthetic()._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "RoutingTrace(3 tokens, 2 docs" in repr(_synthetic())


def test_validation_of_shapes():
    with pytest.raises(ValueError, match="topk_idx must be"):
        wb.RoutingTrace(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), [1, 2, 3], [0, 0, 0], [0, 1, 2], [0], 4, "f")
    with pytest.raises(ValueError, match="num_experts"):
        wb.RoutingTrace(np.full((1, 1, 1), 9), np.zeros((1, 1, 1)), [1], [0], [0], [0], 4, "f")
