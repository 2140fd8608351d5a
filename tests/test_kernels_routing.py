"""The vectorised routing path equals the per-token reference for every rule and plan."""

import math

import pytest
import torch

from workbench.kernels import RoutingPlan, RoutingRule, apply_plan
from workbench.kernels import reference as ref

RULES = {
    "softmax_renorm": RoutingRule("softmax", renormalize=True),
    "softmax_plain": RoutingRule("softmax"),
    "softmax_groups": RoutingRule("softmax", n_group=4, topk_group=2, scaling=1.5),
    "softmax_pnorm": RoutingRule("softmax", renormalize=True, renorm_p=2.0),
    "sigmoid_v3": RoutingRule("sigmoid", renormalize=True, renorm_eps=1e-20, scaling=2.5, n_group=4,
                              topk_group=2, group_score="top2sum"),
    "sigmoid_nogroup": RoutingRule("sigmoid", renormalize=True),
    "topk_softmax": RoutingRule("topk_softmax"),
    "topk_sigmoid": RoutingRule("topk_sigmoid"),
    "sparsemixer": RoutingRule("sparsemixer"),
    "softmax_biased": RoutingRule("softmax", scaling=6.0, biased=True),
    "softmax_biased_groups": RoutingRule("softmax", renormalize=True, n_group=4, topk_group=2, biased=True),
    "topk_sigmoid_biased": RoutingRule("topk_sigmoid", renormalize=True, biased=True),
    "topk_softmax_biased": RoutingRule("topk_softmax", scaling=0.5, biased=True),
    "sqrtsoftplus": RoutingRule("sqrtsoftplus", renormalize=True, renorm_eps=1e-20, scaling=1.5, biased=True),
    "probabilities": RoutingRule("probabilities", renormalize=True),
}

PLANS = {
    "default": RoutingPlan(k=2),
    "k3": RoutingPlan(k=3),
    "blocked": RoutingPlan(k=2, blocked=frozenset({0, 5})),
    "emptied": RoutingPlan(k=3, emptied=frozenset({1, 2, 3})),
    "top_p": RoutingPlan(k=2, mode="top_p", top_p=0.6),
    "rank2": RoutingPlan(k=2, mode="rank", rank=2),
    "rank0_blocked": RoutingPlan(k=2, mode="rank", rank=0, blocked=frozenset({3})),
    "forced": RoutingPlan(k=3, forced=((7, None), (2, 0.3))),
    "skip": RoutingPlan(k=4, skip_beta=0.5),
    "mixed": RoutingPlan(k=3, blocked=frozenset({4}), forced=((1, 0.2),), skip_beta=0.3),
}


def _compare(rule, plan, seed, num_tokens=64, num_experts=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g) * 2
    bias = torch.randn(num_experts, generator=g) * 0.1 if rule.scoring == "sigmoid" or rule.biased else None
    if rule.scoring == "probabilities":
        logits = torch.softmax(logits, dim=-1)
    d = apply_plan(logits, rule, plan, bias)
    for t in range(num_tokens):
        expected = ref.plan_token(logits[t].tolist(), rule, plan, None if bias is None else bias.tolist())
        got = list(zip(d.idx[t].tolist(), d.w[t].tolist(), d.valid[t].tolist()))
        assert len(expected) <= len(got)
        for (e_ref, w_ref, ok_ref), (e, w, ok) in zip(expected, got):
            assert ok == ok_ref, (t, expected, got)
            if ok:
                assert e == e_ref, (t, expected, got)
            assert math.isclose(w, w_ref, rel_tol=1e-5, abs_tol=1e-6), (t, expected, got)
        assert not any(ok for _, _, ok in got[len(expected):])
        assert all(0 <= e < num_experts for e, _, _ in got), "expert ids must stay in range"


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_vectorised_equals_reference(rule_name, plan_name):
    rule, plan = RULES[rule_name], PLANS[plan_name]
    if rule.scoring == "sparsemixer" and plan.mode == "topk" and plan.k > 2:
        plan = RoutingPlan(**{**plan.__dict__, "k": 2})
    for seed in range(3):
        _compare(rule, plan, seed)


def test_weights_are_renormalised_and_scaled():
    rule = RoutingRule("softmax", renormalize=True, scaling=2.0)
    d = apply_plan(torch.randn(10, 8), rule, RoutingPlan(k=3))
    assert torch.allclose(d.w.sum(-1), torch.full((10,), 2.0))


def test_empty_slot_keeps_total_weight():
    rule = RoutingRule("softmax")
    logits = torch.randn(20, 8)
    before = apply_plan(logits, rule, RoutingPlan(k=2))
    after = apply_plan(logits, rule, RoutingPlan(k=2, emptied=frozenset({int(before.idx[0, 1])})))
    assert torch.allclose(after.w.sum(-1), before.w.sum(-1))
    assert not after.valid[0, 1:].any() or int(after.idx[0, 1]) != int(before.idx[0, 1])


def test_next_best_takes_the_slot():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    d = apply_plan(logits, RoutingRule("softmax", renormalize=True), RoutingPlan(k=2, blocked=frozenset({0})))
    assert d.idx.tolist() == [[1, 2]]
    # scores set to -inf before normalisation: the weights are the renormalised softmax over {1, 2}
    expected = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    assert torch.allclose(d.w[0], expected)


def test_all_blocked_gives_empty_slots_with_real_ids():
    d = apply_plan(torch.randn(5, 4), RoutingRule("softmax"), RoutingPlan(k=2, blocked=frozenset(range(4))))
    assert not d.valid.any()
    assert (d.w == 0).all()
    assert ((d.idx >= 0) & (d.idx < 4)).all()


def test_bad_plans_raise():
    with pytest.raises(ValueError, match="k=9"):
        apply_plan(torch.randn(2, 8), RoutingRule("softmax"), RoutingPlan(k=9))
    with pytest.raises(ValueError, match="rank 8"):
        apply_plan(torch.randn(2, 8), RoutingRule("softmax"), RoutingPlan(k=2, mode="rank", rank=8))
    with pytest.raises(ValueError, match="unknown scoring"):
        RoutingRule("cosine")
