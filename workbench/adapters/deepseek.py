"""DeepSeek-V2 and DeepSeek-V3-style routers (V3, GLM-4-MoE).

* V2: softmax over experts, greedy or group-limited greedy top-k (group score = the group's best
  probability), no renormalisation, times ``routed_scaling_factor``.
* V3 and descendants: sigmoid scores; a per-expert selection bias (``e_score_correction_bias``)
  changes which experts are chosen but not their weights; group-limited choice by the sum of each
  group's two best biased scores; renormalise (``norm_topk_prob``); times ``routed_scaling_factor``.

Both have shared experts (``shared_experts``) that run for every token. The first
``first_k_dense_replace`` decoder layers are dense and are not MoE layers.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule


def _v2_rule(c) -> RoutingRule:
    grouped = c.topk_method == "group_limited_greedy"
    return RoutingRule("softmax", scaling=float(c.routed_scaling_factor),
                       n_group=int(c.n_group) if grouped else 1,
                       topk_group=int(c.topk_group) if grouped else 1, group_score="max")


def _v3_rule(c) -> RoutingRule:
    return RoutingRule("sigmoid", renormalize=bool(c.norm_topk_prob), renorm_eps=1e-20,
                       scaling=float(c.routed_scaling_factor), n_group=int(c.n_group),
                       topk_group=int(c.topk_group), group_score="top2sum")


DEEPSEEK_V2 = register(Adapter(
    name="deepseek_v2",
    model_types=("deepseek_v2",),
    rule=_v2_rule,
    num_experts=lambda c: c.n_routed_experts,
    top_k=lambda c: c.num_experts_per_tok,
    shared_expert_attrs=("shared_experts",),
))

DEEPSEEK_V3 = register(Adapter(
    name="deepseek_v3",
    model_types=("deepseek_v3", "glm4_moe"),
    rule=_v3_rule,
    num_experts=lambda c: c.n_routed_experts,
    top_k=lambda c: c.num_experts_per_tok,
    selection_bias_attr="gate.e_score_correction_bias",
    shared_expert_attrs=("shared_experts",),
))
