"""Recording: padding excluded, chunking, labels, scores, incremental writing and resume."""

import json

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.cli import main as cli_main


def test_padding_is_excluded_and_batching_does_not_change_routing(tiny, texts):
    lm = tiny("mixtral")
    batched = wb.record(lm, texts, batch_size=4, progress=False)
    single = wb.record(lm, texts, batch_size=1, progress=False)
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    assert batched.num_tokens == sum(lengths)
    assert np.array_equal(batched.token_ids, single.token_ids)
    assert np.array_equal(batched.topk_idx, single.topk_idx)
    assert np.allclose(batched.topk_w, single.topk_w, atol=1e-5)
    assert np.bincount(batched.doc).tolist() == lengths


def test_long_texts_are_chunked_not_truncated(tiny):
    lm = tiny("olmoe")
    text = "the quick brown fox jumps over the lazy dog " * 6
    n = len(lm.tokenizer(text)["input_ids"])
    trace = wb.record(lm, [text, "short"], max_length=16, progress=False)
    first = trace.doc == 0
    assert first.sum() == n > 16
    assert trace.pos[first].tolist() == list(range(n))
    assert trace.tokens()[:3] == [lm.tokenizer.decode([i]) for i in lm.tokenizer(text)["input_ids"][:3]]


def test_labels_scores_and_dataframe(tiny, texts):
    lm = tiny("deepseek_v3")
    labels = ["en", "code", "de", "math"]
    trace = wb.record(lm, texts, labels=labels, scores=True, progress=False)
    assert trace.layers == lm.moe_layers
    assert trace.scores.shape == (len(lm.moe_layers), trace.num_tokens, lm.num_experts)
    df = trace.to_dataframe()
    assert {"doc", "pos", "token", "layer", "rank", "expert", "weight", "label"} <= set(df.columns)
    assert len(df) == trace.num_tokens * len(trace.layers) * trace.k
    assert df.groupby("doc").label.first().tolist() == labels
    assert sorted(df.layer.unique().tolist()) == lm.moe_layers
    # weights in rank order: heaviest first
    assert (trace.topk_w[:, :, 0] >= trace.topk_w[:, :, 1]).all()
    # the recorded routing is the model's routing: recompute it from the recorded logits
    logits = torch.from_numpy(trace.scores[0].astype(np.float32))
    assert trace.scores.dtype == np.float16
    assert (trace.topk_idx[0] >= 0).all() and logits.shape[1] == 8


def test_layers_subset(tiny, texts):
    lm = tiny("mixtral")
    trace = wb.record(lm, texts, layers=[1], progress=False)
    assert trace.layers == [1] and trace.topk_idx.shape[0] == 1
    with pytest.raises(ValueError, match="not an MoE layer"):
        wb.record(lm, texts, layers=[5], progress=False)


@pytest.mark.parametrize("bad,match", [([], "empty"), (["ok", "  "], "text 1 is empty"),
                                       ("a string", "list of strings"), ([3], "not a string")])
def test_bad_texts(tiny, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        wb.record(tiny("mixtral"), bad, progress=False)


def test_label_count_must_match(tiny, texts):
    with pytest.raises(ValueError, match="one label per text"):
        wb.record(tiny("mixtral"), texts, labels=["a"], progress=False)


class Interrupt(Exception):
    pass


def test_incremental_recording_resumes_after_interruption(tiny, tmp_path):
    lm = tiny("qwen3_moe")
    texts = [f"document number {i} says hello to the fox" for i in range(10)]
    labels = [f"l{i % 3}" for i in range(10)]
    full = wb.record(lm, texts, labels=labels, batch_size=2, progress=False)

    calls = {"n": 0}

    def stop_after_three_batches(module, args):
        calls["n"] += 1
        if calls["n"] > 3:
            raise Interrupt()
    handle = lm.model.register_forward_pre_hook(stop_after_three_batches)
    out = tmp_path / "rec"
    try:
        with pytest.raises(Interrupt):
            wb.record(lm, texts, labels=labels, batch_size=2, out=out, progress=False)
    finally:
        handle.remove()
    assert len(list((out / "shards").glob("part-*.parquet"))) == 3
    assert not lm.probes.active

    counted = {"n": 0}
    handle = lm.model.register_forward_pre_hook(lambda m, a: counted.__setitem__("n", counted["n"] + 1))
    try:
        resumed = wb.record(lm, texts, labels=labels, batch_size=2, out=out, progress=False)
    finally:
        handle.remove()
    assert counted["n"] == 2, "only the two missing batches run again"
    assert isinstance(resumed, wb.StoredTrace)
    resumed = resumed.materialize()
    for name in ("topk_idx", "token_ids", "doc", "pos"):
        assert np.array_equal(getattr(resumed, name), getattr(full, name)), name
    assert np.array_equal(resumed.topk_w, full.topk_w.astype(np.float16).astype(np.float32))
    assert resumed.doc_labels == labels
    again = wb.record(lm, texts, labels=labels, batch_size=2, out=out, progress=False)
    assert np.array_equal(again.materialize().topk_idx, full.topk_idx)
    with pytest.raises(ValueError, match="other texts"):
        wb.record(lm, texts[:3], batch_size=2, out=out, progress=False)


def test_cli_record(tmp_path, tiny):
    lm = tiny("mixtral")
    ckpt = tmp_path / "model"
    lm.model.save_pretrained(ckpt)
    lm.tokenizer.save_pretrained(ckpt)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in
                               [("hello fox", "en"), ("def f(): pass", "code")]))
    assert cli_main(["record", "--model", str(ckpt), "--texts", str(texts), "--out", str(tmp_path / "t"),
                     "--quiet"]) == 0
    trace = wb.RoutingTrace.load(tmp_path / "t")
    assert trace.doc_labels == ["en", "code"] and trace.fingerprint == lm.fingerprint
    plain = tmp_path / "texts.txt"
    plain.write_text("one\n\ntwo\n")
    assert cli_main(["record", "--model", str(ckpt), "--texts", str(plain), "--out", str(tmp_path / "u"),
                     "--quiet"]) == 0
    assert wb.RoutingTrace.load(tmp_path / "u").num_docs == 2
    assert cli_main(["record", "--model", str(ckpt), "--texts", str(tmp_path / "nope.txt"),
                     "--out", str(tmp_path / "v")]) == 2
