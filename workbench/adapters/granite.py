"""Granite-MoE (and its shared-expert variant): top-k of the logits, softmax over the kept ones."""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

GRANITE_MOE = register(Adapter(
    name="granitemoe",
    model_types=("granitemoe",),
    rule=lambda c: RoutingRule("topk_softmax", weights_in_logits_dtype=True),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    block_attr="block_sparse_moe",
    router_attr="router",
))

GRANITE_MOE_SHARED = register(Adapter(
    name="granitemoeshared",
    model_types=("granitemoeshared",),
    rule=lambda c: RoutingRule("topk_softmax", weights_in_logits_dtype=True),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    block_attr="block_sparse_moe",
    router_attr="router",
    notes="the shared MLP (layer.shared_mlp) is outside the MoE block",
))
