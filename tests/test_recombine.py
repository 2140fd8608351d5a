"""Recombine: routing many plans at once with the family rule, and outputs/losses from cached experts."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.kernels import apply_plan
from workbench.kernels import plans as plans_mod
from workbench.kernels import recombine as recombine_mod
from workbench.kernels.plans import PlanDecisions, route_plans, stack
from workbench.kernels.recombine import OutsideCacheError, recombine_torch
from workbench.kernels.replay_reference import recombine_reference
from workbench.kernels.triton_check import PLANS, RULES, same_routing
from workbench.replay import capture, recombine
from workbench.testing import FAMILIES

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b"]


def _plans_for(rule):
    return [p for p in PLANS if not (rule.scoring == "sparsemixer" and p.mode == "topk" and p.k > 2)]


@pytest.mark.parametrize("rule_name", list(RULES))
def test_batched_routing_equals_apply_plan_plan_by_plan(rule_name):
    rule = RULES[rule_name]
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 8, generator=g) * 2
    bias = torch.randn(8, generator=g) * 0.1 if rule.scoring == "sigmoid" else None
    plans = _plans_for(rule)
    got = route_plans(logits, rule, plans, bias)
    want = stack([apply_plan(logits, rule, p, bias) for p in plans])
    assert same_routing(got, want, tol=1e-6)
    assert same_routing(got, route_plans(logits, rule, plans, bias, backend="reference"), tol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_routing_with_each_family_rule(tiny, family):
    lm = tiny(family)
    layer = lm.moe_layers[0]
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(30, lm.num_experts, generator=g) * 3
    bias = lm.selection_bias(layer)
    routings = [[], [wb.Mask({layer: [0, 1]})], [wb.Mask({layer: [2]}, mode="empty")], [wb.Skip(0.4)],
                [wb.KeepRank(1)], [wb.TopP(0.7)], [wb.Force({layer: [3]}, weight=0.2)]]
    plans = [lm.probes.plan_for(r, layer) for r in routings]
    got = route_plans(logits, lm.rule, plans, bias)
    want = stack([apply_plan(logits, lm.rule, p, bias) for p in plans])
    assert same_routing(got, want, tol=1e-6)


def test_batched_routing_in_small_chunks(monkeypatch):
    rule = RULES["sigmoid_groups"]
    g = torch.Generator().manual_seed(5)
    logits, bias = torch.randn(16, 8, generator=g), torch.randn(8, generator=g) * 0.1
    plans = [plans_mod.RoutingPlan(k=2, blocked=frozenset({e})) for e in range(8)]
    whole = route_plans(logits, rule, plans, bias)
    monkeypatch.setattr(plans_mod, "CHUNK_ELEMENTS", 16 * 8 * 3)
    assert same_routing(route_plans(logits, rule, plans, bias), whole, tol=0)


def _random_case(g, r=5, t=9, c=6, h=12, k=3, num_experts=10, with_cand=True):
    Y = torch.randn(t, c, h, generator=g)
    cand = torch.stack([torch.randperm(num_experts, generator=g)[:c] for _ in range(t)]) if with_cand else None
    cols = torch.randint(0, c, (r, t, k), generator=g)
    idx = cand.gather(1, cols.permute(1, 0, 2).reshape(t, -1)).view(t, r, k).permute(1, 0, 2) if with_cand else cols
    valid = torch.rand(r, t, k, generator=g) > 0.25
    w = torch.where(valid, torch.rand(r, t, k, generator=g), torch.zeros(r, t, k))
    return Y, cand, PlanDecisions(idx, w, valid), torch.randn(t, h, generator=g), torch.randn(t, h, generator=g)


@pytest.mark.parametrize("with_cand", [True, False])
@pytest.mark.parametrize("method", ["gram", "direct"])
def test_recombine_equals_the_loop_reference(with_cand, method):
    g = torch.Generator().manual_seed(6)
    Y, cand, d, shared, target = _random_case(g, with_cand=with_cand)
    out, losses = recombine_torch(Y, cand, d, shared, target, outputs=method == "direct", method=method)
    ref_out, ref_loss = recombine_reference(Y, cand, d, shared, target)
    assert losses.dtype == torch.float64
    torch.testing.assert_close(losses, ref_loss, rtol=1e-6, atol=1e-6)
    if out is not None:
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    # the loss is the Frobenius norm, not its square
    manual = torch.stack([torch.linalg.norm((ref_out[i].double() - target.double())) for i in range(len(d))])
    torch.testing.assert_close(losses, manual, rtol=1e-5, atol=1e-6)


def test_recombine_gather_path_and_chunks(monkeypatch):
    g = torch.Generator().manual_seed(7)
    Y, cand, d, shared, target = _random_case(g, r=7, c=40, k=2, num_experts=50)  # C > 4k: gather path
    ref_out, ref_loss = recombine_reference(Y, cand, d, shared, target)
    monkeypatch.setattr(recombine_mod, "CHUNK_ELEMENTS", 9 * 12 * 2)
    out, losses = recombine_torch(Y, cand, d, shared, target, method="direct")
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses, ref_loss, rtol=1e-6, atol=1e-6)
    _, gram = recombine_torch(Y, cand, d, shared, target, outputs=False, method="gram")
    torch.testing.assert_close(gram, ref_loss, rtol=1e-6, atol=1e-6)


def test_recombine_refuses_experts_outside_the_cache(tiny):
    lm = tiny("qwen3_moe")
    cache = capture(lm, TEXTS, layers=[0], candidates=2, progress=False)[0]
    res = recombine(lm, cache, [None, wb.Mask({0: [1]}, mode="empty"), wb.Skip(0.5)])  # all inside the cache
    assert float(res.loss[0]) / float(res.norm) < 1e-5
    with pytest.raises(OutsideCacheError, match=r"outside the cached candidates.*candidates='all'"):
        recombine(lm, cache, [None, wb.TopK(3)])
    used = int(cache.topk_idx[0, 0])
    with pytest.raises(OutsideCacheError, match=r"#1 sends token"):
        recombine(lm, cache, [None, wb.Mask({0: [used]})])
    with pytest.raises(OutsideCacheError):
        recombine_reference(cache.expert_out, cache.candidates,
                            route_plans(cache.logits, lm.rule, [lm.probes.plan_for([wb.TopK(3)], 0)]),
                            cache.shared, cache.y)


def test_recombine_result_table(tiny):
    lm = tiny("mixtral")
    cache = capture(lm, TEXTS, layers=[1], progress=False)[1]
    routings = [None] + [wb.Mask({1: [e]}) for e in range(lm.num_experts)]
    res = recombine(lm, cache, routings)
    frame = res.to_dataframe()
    assert list(frame.columns) == ["layer", "routing", "experts_per_token", "loss", "relative_loss"]
    assert frame.routing[0] == "model routing" and len(frame) == 9
    assert res.best(1).index[0] == 0  # the unedited routing reconstructs best
    assert (frame.experts_per_token == 2).all()
    emptied = recombine(lm, cache, [wb.Mask({1: list(range(8))}, mode="empty")])
    assert float(emptied.to_dataframe().experts_per_token[0]) == 0
    torch.testing.assert_close(emptied.loss[0], (cache.y.double() - cache.shared.double()).norm())


def test_recombine_backends_agree_on_a_model(tiny):
    lm = tiny("deepseek_v2")
    layer = lm.moe_layers[0]
    cache = capture(lm, TEXTS, layers=[layer], progress=False)[layer]
    routings = [None, wb.Mask({layer: [0, 5]}), wb.TopK(3), wb.Skip(0.3)]
    fast = recombine(lm, cache, routings, outputs=True)
    slow = recombine(lm, cache, routings, outputs=True, backend="reference", route_backend="reference")
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(fast.outputs, slow.outputs, rtol=1e-4, atol=1e-7)
    with pytest.raises(TypeError, match="list of routings"):
        recombine(lm, cache, wb.TopK(3))
    with pytest.raises(ValueError, match="no backend"):
        recombine(lm, cache, [None], backend="triton")


SELECTION_LOCAL = ["softmax_renorm", "softmax_pnorm", "sigmoid", "topk_softmax", "topk_sigmoid"]


@pytest.mark.parametrize("rule_name", SELECTION_LOCAL)
@pytest.mark.parametrize("num_experts,k", [(8, 1), (8, 2), (16, 3)])
def test_many_masks_shortcut_equals_apply_plan(rule_name, num_experts, k):
    rule = RULES[rule_name]
    assert plans_mod.selection_local(rule)
    g = torch.Generator().manual_seed(num_experts + k)
    logits = torch.randn(25, num_experts, generator=g) * 2
    bias = torch.randn(num_experts, generator=g) * 0.1 if rule.scoring == "sigmoid" else None
    subsets = [torch.randperm(num_experts, generator=g)[:int(torch.randint(0, 6, (1,), generator=g))].tolist()
               for _ in range(40)]
    plans = [plans_mod.RoutingPlan(k=k, blocked=frozenset(s)) for s in subsets]
    got = route_plans(logits, rule, plans, bias)
    assert got.sparse is not None and got.shape == (40, 25, k)
    want = stack([apply_plan(logits, rule, p, bias) for p in plans])
    assert same_routing(got, want, tol=1e-6)
    assert not bool((got.valid & torch.stack([torch.isin(got.idx[i], torch.tensor(s, dtype=torch.long))
                                              for i, s in enumerate(subsets)])).any()), "a blocked expert was used"


def test_shortcut_is_not_taken_where_it_would_be_wrong():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(10, 8, generator=g)
    masks = [plans_mod.RoutingPlan(k=2, blocked=frozenset({e})) for e in range(8)]
    for name in ("softmax_plain", "softmax_groups", "sigmoid_groups", "sparsemixer"):
        assert not plans_mod.selection_local(RULES[name])
        assert route_plans(logits, RULES[name], masks).sparse is None
    wide = torch.randn(10, 40, generator=g)
    plans = [plans_mod.RoutingPlan(k=8, blocked=frozenset(range(i, i + 20))) for i in range(3)]
    got = route_plans(wide, RULES["topk_softmax"], plans)  # pattern wider than 24 bits: the generic path
    assert got.sparse is None
    assert same_routing(got, stack([apply_plan(wide, RULES["topk_softmax"], p) for p in plans]), tol=1e-6)


@pytest.mark.parametrize("candidates", [None, 5])
def test_sparse_mask_losses_equal_the_reference(tiny, candidates):
    lm = tiny("qwen3_moe")
    cache = capture(lm, TEXTS, layers=[1], candidates=candidates or "all", progress=False)[1]
    g = torch.Generator().manual_seed(1)
    masks = [None] + [wb.Mask({1: torch.randperm(8, generator=g)[:2].tolist()}) for _ in range(12)]
    if candidates:  # keep to masks whose routing stays inside each token's 5 cached experts
        masks = [m for m in masks if m is None or not _outside(lm, cache, m)]
        assert len(masks) > 3
    fast = recombine(lm, cache, masks)
    assert fast.decisions.sparse is not None
    slow = recombine(lm, cache, masks, backend="reference", route_backend="reference")
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-5, atol=1e-6 * float(fast.norm))


def _outside(lm, cache, mask):
    try:
        recombine(lm, cache, [mask], method="direct")
    except OutsideCacheError:
        return True
    return False


def test_loss_sweeps_reuse_the_unedited_rows(tiny):
    lm = tiny("olmoe")
    cache = capture(lm, TEXTS, layers=[0], progress=False)[0]
    sweep = [wb.Skip(b) for b in (0.0, 0.1, 0.3, 0.5, 0.9)] + [wb.TopK(1), wb.TopK(3), None]
    gram = recombine(lm, cache, sweep, method="gram")
    direct = recombine(lm, cache, sweep, method="direct")
    ref = recombine(lm, cache, sweep, backend="reference", route_backend="reference")
    torch.testing.assert_close(gram.loss, ref.loss, rtol=1e-5, atol=1e-6 * float(gram.norm))
    torch.testing.assert_close(direct.loss, ref.loss, rtol=1e-5, atol=1e-6 * float(gram.norm))
    assert float(gram.loss[0]) < 1e-5 * float(gram.norm)  # beta = 0 skips nothing
