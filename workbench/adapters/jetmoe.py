"""JetMoE: top-k of the logits, softmax over the kept ones; the router also sorts tokens by expert.

Only the MLP mixture (``mlp``) is handled; JetMoE's mixture of attention heads is not routed
through the workbench.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

JETMOE = register(Adapter(
    name="jetmoe",
    model_types=("jetmoe",),
    rule=lambda c: RoutingRule("topk_softmax", weights_in_logits_dtype=True),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    router_attr="router",
    experts_attr="input_linear",
    router_io="jetmoe",
))
