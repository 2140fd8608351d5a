"""The expert-output-norm analysis on tiny real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import analysis as A
from workbench.testing import tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b"]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "llama4_text", "jetmoe"])
def test_norms_match_the_recorded_routing(family):
    lm = wb.wrap(*tiny_model(family))
    norms = A.expert_output_norms(lm, TEXTS, labels=["en", "code"], progress=False)
    trace = wb.record(lm, TEXTS, labels=["en", "code"], progress=False)
    num_experts = lm.num_experts
    assert len(norms) == len(lm.moe_layers) * trace.num_tokens * num_experts
    for pos, layer in enumerate(trace.layers):
        sub = norms[norms.layer == layer]
        chosen = sub.chosen.to_numpy().reshape(-1, num_experts)
        recorded = np.zeros_like(chosen)
        for slot in range(trace.k):
            e = trace.topk_idx[pos, :, slot]
            recorded[np.arange(len(e))[e >= 0], e[e >= 0]] = True
        np.testing.assert_array_equal(chosen, recorded)
        for col in ("router_rank", "norm_rank"):
            ranks = np.sort(sub[col].to_numpy().reshape(-1, num_experts), axis=1)
            assert (ranks == np.arange(num_experts)).all()
        if lm.rule.scoring == "softmax":  # plain top-k: the chosen experts are the router's first k
            assert (sub[sub.chosen].router_rank < lm.top_k).all()
    assert set(norms.label) == {"en", "code"}


def test_a_scaled_up_expert_has_the_largest_output_everywhere():
    model, tok = tiny_model("qwen3_moe")
    lm = wb.wrap(model, tok)
    with torch.no_grad():
        lm.experts(0).down_proj[3].mul_(1000.0)
    norms = A.expert_output_norms(lm, TEXTS, layers=[0], progress=False)
    assert (norms[norms.expert == 3].norm_rank == 0).all()
    stats = A.expert_norm_stats(norms).set_index("expert")
    assert stats.loc[3, "largest_share"] == 1.0
    assert stats.mean_norm.idxmax() == 3


def test_router_rank_uses_the_selection_bias_of_sigmoid_families():
    lm = wb.wrap(*tiny_model("deepseek_v3"))
    layer = lm.moe_layers[0]
    bias = lm.selection_bias(layer)
    assert bias is not None
    with torch.no_grad():
        bias.copy_(torch.arange(lm.num_experts, dtype=bias.dtype) * 10)  # the bias alone decides the ranking
    norms = A.expert_output_norms(lm, TEXTS[:1], layers=[layer], progress=False)
    trace = wb.record(lm, TEXTS[:1], layers=[layer], scores=True, progress=False)
    expected = torch.sigmoid(torch.from_numpy(trace.scores[0].astype(np.float32))) + bias.float()
    np.testing.assert_allclose(norms.score.to_numpy().reshape(-1, lm.num_experts), expected.numpy(), atol=2e-3)
    ranks = norms.router_rank.to_numpy().reshape(-1, lm.num_experts)
    assert (ranks[:, -1] == 0).all()  # the expert with the largest bias ranks first


def test_rank_table_rows_sum_to_one_and_summary_is_bounded():
    lm = wb.wrap(*tiny_model("olmoe"))
    norms = A.expert_output_norms(lm, TEXTS, max_tokens=7, progress=False)
    assert norms.t.nunique() == 7
    table = A.norm_rank_table(norms)
    assert len(table) == len(lm.moe_layers) * lm.num_experts ** 2
    np.testing.assert_allclose(table.groupby(["layer", "router_rank"]).share.sum(), 1.0)
    summary = A.norm_rank_summary(norms)
    assert summary.top1_is_largest.between(0, 1).all() and summary.spearman.between(-1, 1).all()


def test_norm_inputs_are_checked():
    lm = wb.wrap(*tiny_model("mixtral"))
    with pytest.raises(TypeError, match="list of strings"):
        A.expert_output_norms(lm, "one text", progress=False)
    with pytest.raises(ValueError, match="MoE layer"):
        A.expert_output_norms(lm, TEXTS, layers=[7], progress=False)
    with pytest.raises(ValueError, match="one label per text"):
        A.expert_output_norms(lm, TEXTS, labels=["a"], progress=False)
