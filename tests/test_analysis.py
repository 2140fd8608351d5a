"""Trace analyses against values computed by hand on small synthetic traces."""

from __future__ import annotations

import math

import numpy as np
import pytest

import workbench as wb
from workbench import analysis as A
from workbench.kernels import RoutingRule


def make_trace(idx, w=None, token_ids=None, doc=None, labels=None, num_experts=4, scores=None, layers=None,
               top_k=None):
    idx = np.asarray(idx)
    num_layers, num_tokens, k = idx.shape
    w = np.full(idx.shape, 1.0 / k) if w is None else np.asarray(w, dtype=np.float32)
    doc = np.zeros(num_tokens, dtype=int) if doc is None else np.asarray(doc)
    pos = np.zeros(num_tokens, dtype=int)
    for d in np.unique(doc):
        pos[doc == d] = np.arange((doc == d).sum())
    token_ids = np.arange(num_tokens) if token_ids is None else np.asarray(token_ids)
    meta = {} if top_k is None else {"top_k": top_k}
    return wb.RoutingTrace(
        topk_idx=idx, topk_w=w, token_ids=token_ids, doc=doc, pos=pos,
        layers=list(range(num_layers)) if layers is None else layers, num_experts=num_experts,
        fingerprint="synthetic", token_text={int(t): f"t{int(t)}" for t in np.unique(token_ids)},
        doc_labels=labels or [], scores=scores, meta=meta)


# -- expert load ---------------------------------------------------------------------------
def test_expert_load_counts_weights_and_uniform_share():
    trace = make_trace([[[0, 1], [0, 2], [0, -1]]], w=[[[0.6, 0.4], [0.7, 0.3], [1.0, 0.0]]], top_k=2)
    load = A.expert_load(trace).set_index("expert")
    assert load.tokens.tolist() == [3, 1, 1, 0]  # the empty slot (-1) counts for nobody
    np.testing.assert_allclose(load.token_share, [1.0, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(load.weight, [2.3, 0.4, 0.3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(load.weight_share, np.array([2.3, 0.4, 0.3, 0.0]) / 3.0, rtol=1e-6)
    assert (load.uniform == 0.5).all()  # k/E = 2/4
    np.testing.assert_allclose(load.load_ratio, [2.0, 2 / 3, 2 / 3, 0.0])


def test_expert_load_restricted_to_a_label_and_summary():
    trace = make_trace([[[0], [1], [1], [3]]], doc=[0, 0, 1, 1], labels=["a", "b"])
    load = A.expert_load(trace, labels=["b"]).set_index("expert")
    assert load.tokens.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(load.token_share, [0, 0.5, 0, 0.5])
    summary = A.load_summary(trace).iloc[0]
    assert summary.dead == 1 and summary.max_ratio == pytest.approx(2.0)  # expert 1: 2/4 over 1/4


def test_expert_load_rejects_what_is_not_a_trace():
    with pytest.raises(TypeError, match="RoutingTrace"):
        A.expert_load({"topk": 1})


# -- label specialisation ------------------------------------------------------------------
def test_label_specialization_share_ratio_and_lift():
    # label a: tokens 0, 1 -> expert 0; label b: tokens 2 -> expert 0, 3 -> expert 1. E = 2, k = 1.
    trace = make_trace([[[0], [0], [0], [1]]], doc=[0, 0, 1, 1], labels=["a", "b"], num_experts=2)
    spec = A.label_specialization(trace).set_index(["label", "expert"])
    assert spec.loc[("a", 0), "share"] == 1.0 and spec.loc[("b", 0), "share"] == 0.5
    assert spec.loc[("a", 0), "ratio"] == 2.0  # 1.0 / (k/E = 0.5)
    assert spec.loc[("b", 1), "corpus_share"] == 0.25
    assert spec.loc[("b", 1), "lift"] == pytest.approx(2.0)  # 0.5 / 0.25
    assert spec.loc[("a", 0), "lift"] == pytest.approx(4 / 3)  # 1.0 / 0.75


def test_specialization_scores_by_hand():
    # E = 4, k = 1. label a: always expert 0 (TV from uniform 0.75 = the maximum 1 - k/E -> 1);
    # label b: one token to each expert (TV 0). Score = mean = 0.5.
    idx = [[[0], [0], [0], [0], [0], [1], [2], [3]]]
    trace = make_trace(idx, doc=[0, 0, 0, 0, 1, 1, 1, 1], labels=["a", "b"])
    row = A.specialization_scores(trace).iloc[0]
    assert row.score == pytest.approx(0.5)
    # Overall routing: [5, 1, 1, 1] / 8. TV(a) = 0.5 * (3/8 + 3 * 1/8) = 0.375;
    # TV(b) = 0.5 * (|1/4 - 5/8| + 3 * |1/4 - 1/8|) = 0.375.
    assert row.score_vs_corpus == pytest.approx(0.375)
    assert row.labels == 2


def test_unlabelled_tokens_form_their_own_group():
    trace = make_trace([[[0], [1]]], doc=[0, 1], labels=["a", None], num_experts=2)
    assert A.TraceCounts(trace).label_names == ["a", A.UNLABELLED]


# -- vocabulary specialisation -------------------------------------------------------------
def test_vocab_specialization_top_expert_share():
    # token 7 three times: experts {0,1}, {0,2}, {3,1} -> expert 0 twice, 1 twice (tie: lowest id 0).
    trace = make_trace([[[0, 1], [0, 2], [3, 1], [2, 3]]], token_ids=[7, 7, 7, 9], top_k=2)
    vocab = A.vocab_specialization(trace).set_index("token_id")
    assert vocab.loc[7, "count"] == 3 and vocab.loc[7, "top_expert"] == 0
    assert vocab.loc[7, "top_share"] == pytest.approx(2 / 3)
    assert vocab.loc[9, "top_share"] == 1.0
    assert vocab.uniform.iloc[0] == 0.5
    top1 = A.vocab_specialization(trace, top1=True).set_index("token_id")
    assert top1.loc[7, "top_expert"] == 0 and top1.loc[7, "top_share"] == pytest.approx(2 / 3)
    assert A.vocab_specialization(trace, min_count=2).token_id.tolist() == [7]
    summary = A.vocab_summary(A.vocab_specialization(trace), min_count=1).iloc[0]
    assert summary.vocab_specialization == pytest.approx((2 / 3 * 3 + 1) / 4)


# -- co-activation -------------------------------------------------------------------------
def test_coactivation_counts_every_pair_of_slots():
    # k = 3: the token [0, 1, 2] makes pairs (0,1), (0,2), (1,2); (0,2) is not adjacent in rank.
    trace = make_trace([[[0, 1, 2], [0, 3, -1], [1, 2, 3]]], top_k=3)
    co = A.coactivation(trace).set_index(["a", "b"])
    assert len(co) == 4 * 3
    assert co.loc[(0, 2), "count"] == 1 and co.loc[(2, 0), "count"] == 1
    assert co.loc[(1, 2), "count"] == 2 and co.loc[(0, 3), "count"] == 1
    assert co.loc[(3, 0), "count"] == 1 and co.loc[(1, 0), "count"] == 1
    # P(b=2 | a=1) = 2 / tokens(1) = 2 / 2; lift = P(1,2) / (P(1) P(2)) = (2/3) / ((2/3)(2/3)) = 1.5
    assert co.loc[(1, 2), "p_b_given_a"] == pytest.approx(1.0)
    assert co.loc[(1, 2), "lift"] == pytest.approx(1.5)
    m = A.coactivation_matrix(trace, layer=0, metric="count")
    assert (m == m.T).all() and (np.diag(m) == 0).all()
    with pytest.raises(ValueError, match="metric"):
        A.coactivation_matrix(trace, layer=0, metric="pmi")


# -- transitions ---------------------------------------------------------------------------
def test_layer_transitions_top1_and_all_slots():
    idx = [[[0, 1], [0, 2], [1, 0]],
           [[2, 3], [3, 2], [2, 1]]]
    trace = make_trace(idx, layers=[3, 5], top_k=2)
    tr = A.layer_transitions(trace).set_index(["expert_from", "expert_to"])
    assert (tr.layer_from == 3).all() and (tr.layer_to == 5).all()
    assert tr.loc[(0, 2), "count"] == 1 and tr.loc[(0, 3), "count"] == 1 and tr.loc[(1, 2), "count"] == 1
    assert tr.loc[(0, 2), "share"] == 0.5 and tr.loc[(1, 2), "share"] == 1.0
    # overall share of expert 2 as a destination: 2/3, so lift of 1 -> 2 is 1.0 / (2/3)
    assert tr.loc[(1, 2), "lift"] == pytest.approx(1.5)
    every = A.layer_transitions(trace, rank=None)
    assert every["count"].sum() == 3 * 2 * 2
    with pytest.raises(ValueError, match="two recorded layers"):
        A.layer_transitions(make_trace([[[0]]]))


# -- router entropy ------------------------------------------------------------------------
def test_router_entropy_and_margin_by_hand():
    logits = np.zeros((1, 2, 4), dtype=np.float32)
    logits[0, 1] = [math.log(0.7), math.log(0.1), math.log(0.1), math.log(0.1)]
    trace = make_trace([[[0], [0]]], scores=logits)
    per_token = A.token_entropy(trace)
    expected = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    np.testing.assert_allclose(per_token.entropy, [math.log(4), expected], rtol=1e-3)
    np.testing.assert_allclose(per_token.margin, [0.0, 0.6], atol=1e-3)
    row = A.router_entropy(trace).iloc[0]
    assert row.entropy_norm == pytest.approx((1 + expected / math.log(4)) / 2, rel=1e-3)
    assert row.max_entropy == pytest.approx(math.log(4))


def test_router_entropy_of_a_sigmoid_family_normalises_sigmoid_scores():
    logits = np.zeros((1, 1, 2), dtype=np.float32)
    logits[0, 0] = [0.0, 20.0]  # sigmoid 0.5 and ~1 -> probabilities 1/3, 2/3
    trace = make_trace([[[1]]], num_experts=2, scores=logits)
    row = A.token_entropy(trace, RoutingRule("sigmoid")).iloc[0]
    assert row.margin == pytest.approx(1 / 3, abs=1e-3)


def test_router_entropy_needs_scores_and_says_how_to_get_them():
    with pytest.raises(A.MissingScoresError, match=r"scores=True"):
        A.router_entropy(make_trace([[[0]]]))


# -- counts ----------------------------------------------------------------------------------
def test_trace_counts_document_index_and_routed_tokens():
    trace = make_trace([[[0], [1], [0], [1]]], doc=[1, 0, 1, 0], labels=["x", "y"], num_experts=2)
    c = A.TraceCounts(trace)
    assert c.doc_tokens(1).tolist() == [0, 2] and c.doc_tokens(0).tolist() == [1, 3]
    assert c.routed_to(0, 1).tolist() == [1, 3]
    assert c.routed_to(0, 0, labels=["x"]).tolist() == []
    with pytest.raises(ValueError, match="out of range"):
        c.doc_tokens(5)
    with pytest.raises(ValueError, match="labels"):
        c.select_counts(["nope"])


# -- expert tokens ---------------------------------------------------------------------------
def test_expert_tokens_lists_routed_tokens_with_context_inside_the_document():
    # doc 0: t0 t1 t2 t3, doc 1: t4 t5; expert 2 in slot 0 of t1, slot 1 of t3 and t4
    idx = [[[0, 1], [2, 0], [0, 1], [1, 2], [2, 3], [0, 1]]]
    w = [[[0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.8, 0.2], [0.5, 0.5]]]
    trace = make_trace(idx, w=w, doc=[0, 0, 0, 0, 1, 1], labels=["x", "y"])
    rows = A.expert_tokens(trace, 0, 2, context=2)
    assert list(rows.columns) == ["doc", "pos", "left", "token", "right", "weight", "rank", "label", "token_id", "t"]
    assert rows.t.tolist() == [1, 4, 3]  # by weight: 0.9, 0.8, 0.3
    assert rows["rank"].tolist() == [0, 0, 1] and rows.weight.tolist() == pytest.approx([0.9, 0.8, 0.3])
    first = rows.iloc[0]
    assert (first.left, first.token, first.right) == ("t0", "t1", "t2t3")
    t4 = rows[rows.t == 4].iloc[0]
    assert (t4.doc, t4.pos, t4.left, t4.right, t4.label) == (1, 0, "", "t5", "y")  # not doc 0's tokens
    t3 = rows[rows.t == 3].iloc[0]
    assert (t3.left, t3.right) == ("t1t2", "")
    assert A.expert_tokens(trace, 0, 2, context=(1, 0), sort=None).t.tolist() == [1, 3, 4]
    assert A.expert_tokens(trace, 0, 2, context=(1, 0), sort=None).left.tolist() == ["t0", "t2", ""]
    assert len(A.expert_tokens(trace, 0, 2, top=2)) == 2
    assert A.expert_tokens(trace, 0, 3).t.tolist() == [4]
    with pytest.raises(ValueError, match="not an expert"):
        A.expert_tokens(trace, 0, 4)
    with pytest.raises(KeyError, match="not recorded"):
        A.expert_tokens(trace, 5, 0)
    with pytest.raises(ValueError, match="context"):
        A.expert_tokens(trace, 0, 0, context=-1)


def test_expert_tokens_decodes_on_character_boundaries():
    # "a", then "¿" split over two tokens (bytes c2 | bf), then "b"
    trace = make_trace([[[0], [1], [0], [0]]], token_ids=[0, 1, 2, 3], num_experts=2)
    trace.token_text.update({0: "a", 1: "\ufffd", 2: "\ufffd", 3: "b"})
    trace.meta["token_bytes"] = {"1": "c2", "2": "bf"}
    row = A.expert_tokens(trace, 0, 1, context=1).iloc[0]
    assert (row.left, row.token, row.right) == ("a", "¿", "")  # the whole character, its first byte routed
    rows = A.expert_tokens(trace, 0, 0, context=3, sort=None)
    assert rows.token.tolist() == ["a", "¿", "b"] and rows.left.tolist() == ["", "a", "a¿"]
    assert rows.right.tolist() == ["¿b", "b", ""]


def test_expert_tokens_matches_the_trace_dataframe_in_memory_and_stored(tiny, tmp_path):
    lm = tiny("olmoe")
    texts = ["the cat sat on the mat", "def f(x): return x + 1", "a b c d e f g"]
    memory = wb.record(lm, texts, labels=["en", "code", "letters"], progress=False)
    stored = wb.record(lm, texts, labels=["en", "code", "letters"], progress=False, out=tmp_path / "store")
    df = memory.to_dataframe()
    tokens = memory.tokens()
    for layer in memory.layers:
        for expert in range(memory.num_experts):
            rows = A.expert_tokens(memory, layer, expert, context=3, sort=None)
            want = df[(df.layer == layer) & (df.expert == expert)].sort_values(["t", "rank"])
            assert rows[["doc", "pos", "rank", "t", "token_id", "label"]].values.tolist() == \
                want[["doc", "pos", "rank", "t", "token_id", "label"]].values.tolist()
            np.testing.assert_allclose(rows.weight, want.weight, rtol=1e-6)
            for r in rows.itertuples():  # ASCII texts: the context is the neighbouring tokens' text
                same = [t for t in range(r.t - 3, r.t + 4) if 0 <= t < memory.num_tokens and memory.doc[t] == r.doc]
                assert r.left == "".join(tokens[t] for t in same if t < r.t)
                assert r.token == tokens[r.t]
                assert r.right == "".join(tokens[t] for t in same if t > r.t)
            from_store = A.expert_tokens(stored, layer, expert, context=3, sort=None)
            assert from_store[["doc", "pos", "left", "token", "right", "rank"]].values.tolist() == \
                rows[["doc", "pos", "left", "token", "right", "rank"]].values.tolist()
            np.testing.assert_allclose(from_store.weight, rows.weight, rtol=1e-2)  # stored as float16


def test_expert_tokens_with_the_tokenizer_decodes_split_characters_whole(tiny):
    lm = tiny("qwen3_moe")
    text = "¿Dónde está? 日本語 señor"
    trace = wb.record(lm, [text], progress=False)
    seen = set()
    for expert in range(lm.num_experts):
        rows = A.expert_tokens(trace, 0, expert, context=100, tokenizer=lm)
        assert ((rows.left + rows.token + rows.right) == text).all()  # whole characters, nothing lost
        seen.update(rows.token)
    assert "\ufffd" not in "".join(seen) and {"¿", "日"} <= {c for token in seen for c in token}
