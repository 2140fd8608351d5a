"""Qwen2-MoE and Qwen3-MoE: softmax, top-k, optional renormalisation (``norm_topk_prob``).

Qwen2-MoE adds one shared expert per block whose output is scaled by a sigmoid gate; it runs for
every token and does not depend on routing.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule


def _rule(config) -> RoutingRule:
    return RoutingRule("softmax", renormalize=bool(config.norm_topk_prob), weights_in_logits_dtype=True)


QWEN2_MOE = register(Adapter(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    rule=_rule,
    num_experts=lambda c: c.num_experts,
    top_k=lambda c: c.num_experts_per_tok,
    shared_expert_attrs=("shared_expert",),
    notes="shared expert gated by sigmoid(shared_expert_gate(x))",
))

QWEN3_MOE = register(Adapter(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    rule=_rule,
    num_experts=lambda c: c.num_experts,
    top_k=lambda c: c.num_experts_per_tok,
))
