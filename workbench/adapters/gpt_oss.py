"""GPT-OSS: a router with a bias; top-k of the logits, then softmax over the kept ones.

Its experts store transposed, biased weights (``gate_up_proj [E, H, 2I]`` with bias); the block
returns ``(hidden, router_scores)``.
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

GPT_OSS = register(Adapter(
    name="gpt_oss",
    model_types=("gpt_oss",),
    rule=lambda c: RoutingRule("topk_softmax"),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    router_attr="router",
))
