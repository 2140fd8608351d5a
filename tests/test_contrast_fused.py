"""The fused per-row routing of SCMoE's decoding shape (kernels.rank_rows.RankRows) against its
per-token reference, and ProbeManager.decide's use of it against decide_reference."""

import pytest
import torch

import workbench as wb
from workbench.kernels import RoutingPlan, RoutingRule, apply_plan, route
from workbench.kernels.rank_rows import RankRows, choice_scores, fusable, rank_rows_reference
from workbench.probes import seams

RULES = {"softmax renorm": RoutingRule("softmax", renormalize=True),
         "softmax": RoutingRule("softmax"),
         "topk_softmax": RoutingRule("topk_softmax"),
         "sigmoid": RoutingRule("sigmoid", renormalize=True, scaling=2.5),
         "sparsemixer": RoutingRule("sparsemixer", jitter_eps=0.01)}


def _rows_mask(rows: int, per_row: int, weak_rows) -> torch.Tensor:
    row_of = torch.arange(rows * per_row) // per_row
    return torch.isin(row_of, torch.tensor(list(weak_rows), dtype=torch.long)).unsqueeze(1)


def _general_path(logits, native, rule, mask, plan):
    """Expert ids as the general path makes them (route_rank on all tokens, padded, merged): the
    same topk, so ties are broken the same way."""
    ranked = apply_plan(logits, rule, plan).idx[:, :1]
    return torch.where(mask, ranked.expand(-1, native.idx.shape[1]), native.idx)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("shape", [(2, 1), (2, 7), (4, 3)])  # (rows, tokens per row)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_per_token_reference(rule, shape, dtype):
    rule = RULES[rule]
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    rows, per_row = shape
    for num_experts, k in ((8, 2), (16, 2), (64, 8), (4, 1)):
        logits = (torch.randn(rows * per_row, num_experts, generator=gen) * 3).to(dtype)
        native = route(logits, rule, k)
        for weak_rows in ({1} if rows > 1 else {0}, set(range(rows)), set()):
            mask = _rows_mask(rows, per_row, weak_rows)
            for rank in sorted({0, 1, num_experts // 2, num_experts - 1}):
                for weight in (1.0, 0.5):
                    plan = RoutingPlan(k=k, mode="rank", rank=rank, rank_weight=weight)
                    fused = RankRows(mask, plan)(logits, native, rule)
                    ref = rank_rows_reference(logits, native, rule, mask, plan)
                    # bfloat16 logits tie often: the ranked expert may differ only between tied experts
                    tied = choice_scores(logits, rule).gather(1, ref.idx) == choice_scores(logits, rule).gather(1, fused.idx)
                    assert bool(tied.all()), (num_experts, k, rank)
                    assert torch.equal(fused.valid, ref.valid)
                    torch.testing.assert_close(fused.w, ref.w, rtol=0, atol=0)
                    assert torch.equal(fused.idx, _general_path(logits, native, rule, mask, plan))
                    lean = RankRows(mask, plan)(logits, wb.kernels.Decision(native.idx, native.w, None), rule,
                                                need_valid=False)
                    assert lean.valid is None and torch.equal(lean.idx, fused.idx) and torch.equal(lean.w, fused.w)


def test_all_tokens_to_one_expert_and_native_rows_untouched():
    rule = RULES["softmax renorm"]
    logits = torch.zeros(6, 8)
    logits[:, 5], logits[:, 2], logits[:, 7] = 4.0, 3.0, 2.0     # every token ranks 5, 2, 7, ...
    native = route(logits, rule, 2)
    mask = _rows_mask(2, 3, {1})
    d = RankRows(mask, RoutingPlan(k=2, mode="rank", rank=2))(logits, native, rule)
    assert d.idx[3:, 0].tolist() == [7, 7, 7] and d.w[3:].tolist() == [[1.0, 0.0]] * 3
    assert torch.equal(d.idx[:3], native.idx[:3]) and torch.equal(d.w[:3], native.w[:3])


def test_only_the_plain_rank_layout_is_fused():
    rank = RoutingPlan(k=2, mode="rank", rank=2)
    assert fusable([None, rank], None) is rank and fusable([rank, None], None) is rank
    assert fusable([None, rank], torch.zeros(8)) is None                      # biased choice score
    assert fusable([None, RoutingPlan(k=1)], None) is None                     # a top-k plan
    assert fusable([None, RoutingPlan(k=2, mode="rank", rank=1, blocked=frozenset({0}))], None) is None
    assert fusable([None, rank, RoutingPlan(k=1)], None) is None               # three groups
    assert fusable([rank], None) is None                                       # every row edited


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss", "phimoe", "deepseek_v3", "dbrx"])
@pytest.mark.parametrize("weak_row", [0, 1])
def test_decide_takes_the_fused_path_and_equals_the_reference(family, weak_row, tiny):
    lm = tiny(family)
    torch.manual_seed(1)
    rank = 2 if lm.num_experts > 2 else 1
    with wb.edit(lm, wb.KeepRank(rank, rows=[weak_row])):
        pm = lm.probes
        for rows, per_row in ((2, 1), (2, 6)):
            for layer in lm.moe_layers:
                pm._shapes[layer] = (rows, per_row)
                logits = torch.randn(rows * per_row, lm.num_experts) * 2
                native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k), lm.selection_bias(layer))
                fast, _ = pm.decide(layer, logits, seams.native_decision(native.idx, native.w))
                ref, _ = pm.decide_reference(layer, logits, seams.native_decision(native.idx, native.w))
                assert torch.equal(fast.idx, ref.idx) and torch.equal(fast.valid, ref.valid)
                torch.testing.assert_close(fast.w, ref.w, rtol=0, atol=1e-7)
                layout = pm._memo()[layer]["rows"][(rows * per_row, per_row, logits.device)]
                biased = lm.selection_bias(layer) is not None
                assert (layout[3] is None) == biased, "the plain rank layout is fused unless the choice is biased"


def test_router_nan_is_still_refused_on_the_fused_path(tiny):
    lm = tiny("qwen3_moe")
    layer = lm.moe_layers[0]
    logits = torch.randn(2, lm.num_experts)
    native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k))
    logits[1, 3] = float("nan")
    with wb.edit(lm, wb.KeepRank(2, rows=[1])):
        lm.probes._shapes[layer] = (2, 1)
        with pytest.raises(FloatingPointError, match="token 1"):
            lm.probes.decide(layer, logits, seams.native_decision(native.idx, native.w))
