"""DBRX: the router returns logits only; the block takes softmax, top-k and a p-norm renormalisation.

Edits and recording therefore use the experts call ``experts(x, top_k_index, top_k_weights)``.
DBRX computes the softmax in the model's dtype; the workbench routes in float32, so bf16 DBRX
routing can differ from the model's in the last bit.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule


def _rule(c) -> RoutingRule:
    p = c.ffn_config.moe_normalize_expert_weights
    return RoutingRule("softmax", renormalize=p is not None, renorm_p=float(p or 1.0))


DBRX = register(Adapter(
    name="dbrx",
    model_types=("dbrx",),
    rule=_rule,
    num_experts=lambda c: c.ffn_config.moe_num_experts,
    top_k=lambda c: c.ffn_config.moe_top_k,
    layers_path="transformer.blocks",
    block_attr="ffn",
    router_attr="router",
    router_io="experts_call",
))
