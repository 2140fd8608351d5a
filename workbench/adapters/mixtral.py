"""Mixtral: softmax over all experts, top-k, renormalise the kept weights."""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

MIXTRAL = register(Adapter(
    name="mixtral",
    model_types=("mixtral",),
    rule=lambda c: RoutingRule("softmax", renormalize=True),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
))
