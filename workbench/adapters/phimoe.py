"""PhiMoE: sparsemixer routing (top-2).

At inference: the best expert, weighted by a softmax over the experts whose logit is within a
relative threshold (``2 * router_jitter_noise``) of it; then the best of the remaining experts,
weighted the same way against the new best. Training-time Gumbel sampling is not reproduced: the
workbench routes models in eval mode.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

PHIMOE = register(Adapter(
    name="phimoe",
    model_types=("phimoe",),
    rule=lambda c: RoutingRule("sparsemixer", jitter_eps=float(c.router_jitter_noise)),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    router_attr="router",
))
