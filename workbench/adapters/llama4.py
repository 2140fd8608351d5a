"""Llama-4 (text): top-k of the logits, weight = sigmoid(logit); one shared expert.

The router returns dense ``[T, E]`` scores (0 for unselected experts) and the logits; the block
scales each expert's *input* by its score. Dense and MoE layers may interleave (``moe_layers``).
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

LLAMA4 = register(Adapter(
    name="llama4",
    model_types=("llama4_text",),
    rule=lambda c: RoutingRule("topk_sigmoid"),
    num_experts=lambda c: c.num_local_experts,
    top_k=lambda c: c.num_experts_per_tok,
    block_attr="feed_forward",
    router_attr="router",
    router_io="scores_logits",
    shared_expert_attrs=("shared_expert",),
))
