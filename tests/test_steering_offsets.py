"""The score-offset routing mode (SteerMoE's on/off) against its plain-Python reference, for every
rule, alone and mixed with the other plan kinds, live (apply_plan) and batched (route_plans)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.kernels import RoutingPlan, RoutingRule, apply_plan
from workbench.kernels import reference as ref
from workbench.kernels.offsets import offset_scores, offset_scores_reference
from workbench.kernels.plans import route_plans

RULES = {
    "softmax_renorm": RoutingRule("softmax", renormalize=True),
    "softmax_plain": RoutingRule("softmax"),
    "softmax_groups": RoutingRule("softmax", n_group=4, topk_group=2, scaling=1.5),
    "sigmoid_v3": RoutingRule("sigmoid", renormalize=True, renorm_eps=1e-20, scaling=2.5, n_group=4,
                              topk_group=2, group_score="top2sum"),
    "topk_softmax": RoutingRule("topk_softmax"),
    "topk_sigmoid": RoutingRule("topk_sigmoid"),
    "sparsemixer": RoutingRule("sparsemixer"),
    "softmax_biased": RoutingRule("softmax", scaling=6.0, biased=True),
    "sqrtsoftplus": RoutingRule("sqrtsoftplus", renormalize=True, renorm_eps=1e-20, scaling=1.5, biased=True),
    "probabilities": RoutingRule("probabilities", renormalize=True),
}
ON, OFF = frozenset({6}), frozenset({0, 3})
PLANS = {
    "on_off": RoutingPlan(k=2, activated=ON, deactivated=OFF),
    "on_only_k3": RoutingPlan(k=3, activated=frozenset({1, 6})),
    "off_only": RoutingPlan(k=2, deactivated=frozenset({0, 1, 2, 3, 4, 5})),
    "margin": RoutingPlan(k=2, activated=ON, deactivated=OFF, offset_margin=0.5),
    "with_blocked": RoutingPlan(k=2, activated=ON, blocked=frozenset({4})),
    "with_emptied_skip": RoutingPlan(k=3, activated=ON, deactivated=OFF, emptied=frozenset({5}), skip_beta=0.3),
    "with_rank": RoutingPlan(k=2, mode="rank", rank=1, activated=ON),
    "with_top_p": RoutingPlan(k=2, mode="top_p", top_p=0.7, deactivated=OFF),
}


def _inputs(rule, seed, num_tokens=48, num_experts=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g) * 2
    bias = torch.randn(num_experts, generator=g) * 0.1 if rule.scoring == "sigmoid" or rule.biased else None
    if rule.scoring == "probabilities":
        logits = torch.softmax(logits, dim=-1)
    return logits, bias


def _expected(logits, rule, plan, bias):
    """Per token: the offset by the plain reference, then the per-token routing reference."""
    plain = RoutingPlan(**{**plan.__dict__, "activated": frozenset(), "deactivated": frozenset()})
    b = None if bias is None else bias.tolist()
    return [ref.plan_token(offset_scores_reference(row, rule, plan.activated, plan.deactivated, plan.offset_margin),
                           rule, plain, b) for row in logits.tolist()]


def _assert_same(expected, idx, w, valid):
    for t, slots in enumerate(expected):
        got = list(zip(idx[t].tolist(), w[t].tolist(), valid[t].tolist()))
        exp = {e: x for e, x, ok in slots if ok}
        have = {e: x for e, x, ok in got if ok}
        assert have.keys() == exp.keys(), (t, slots, got)
        for e in exp:
            assert math.isclose(have[e], exp[e], rel_tol=1e-5, abs_tol=1e-6), (t, slots, got)


def test_offset_scores_equal_the_reference_per_token():
    for name, rule in RULES.items():
        logits, _ = _inputs(rule, 0)
        fast = offset_scores(logits, rule, ON, OFF)
        slow = torch.tensor([offset_scores_reference(r, rule, ON, OFF) for r in logits.tolist()])
        finite = torch.isfinite(slow)
        assert torch.equal(finite, torch.isfinite(fast)), name
        assert torch.allclose(fast[finite], slow[finite], atol=1e-5), name


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_apply_plan_with_offsets_equals_the_reference(rule_name, plan_name):
    rule, plan = RULES[rule_name], PLANS[plan_name]
    for seed in (0, 1):
        logits, bias = _inputs(rule, seed)
        d = apply_plan(logits, rule, plan, bias)
        _assert_same(_expected(logits, rule, plan, bias), d.idx, d.w, d.valid)


@pytest.mark.parametrize("rule_name", ["softmax_renorm", "sigmoid_v3", "sparsemixer", "probabilities"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_route_plans_with_offsets_equal_apply_plan(rule_name, backend):
    rule = RULES[rule_name]
    logits, bias = _inputs(rule, 2)
    plans = [RoutingPlan(k=2), *PLANS.values(), RoutingPlan(k=2, blocked=frozenset({6}))]
    batched = route_plans(logits, rule, plans, bias, backend=backend)
    for r, plan in enumerate(plans):
        d = apply_plan(logits, rule, plan, bias)
        expected = [[(e, x, ok) for e, x, ok in zip(i.tolist(), ww.tolist(), v.tolist())]
                    for i, ww, v in zip(d.idx, d.w, d.valid)]
        _assert_same(expected, batched.idx[r], batched.w[r], batched.valid[r])


def test_softmax_offsets_are_the_token_extremes_and_weights_renormalise():
    rule = RoutingRule("softmax", renormalize=True)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    s = offset_scores(logits, rule, on=[4], off=[0])
    ls = torch.log_softmax(logits, -1)
    assert torch.isclose(s[0, 4], ls.max() + 0.01) and torch.isclose(s[0, 0], ls.min() - 0.01)
    d = apply_plan(logits, rule, RoutingPlan(k=2, activated=frozenset({4}), deactivated=frozenset({0})))
    assert d.idx.tolist() == [[4, 1]]
    assert math.isclose(float(d.w.sum()), 1.0, rel_tol=1e-6)
    assert float(d.w[0, 0]) > float(d.w[0, 1])  # the activated expert now has the token's best score


def test_offset_errors_are_clear():
    rule = RoutingRule("softmax")
    with pytest.raises(ValueError, match="both activated and deactivated"):
        offset_scores(torch.zeros(1, 4), rule, on=[1], off=[1])
    with pytest.raises(ValueError, match="out of range"):
        offset_scores(torch.zeros(1, 4), rule, on=[7])
