"""OLMoE and FlexOlmo: softmax, top-k, optional renormalisation (``norm_topk_prob``)."""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

OLMOE = register(Adapter(
    name="olmoe",
    model_types=("olmoe", "flex_olmo"),
    rule=lambda c: RoutingRule("softmax", renormalize=bool(c.norm_topk_prob), weights_in_logits_dtype=True),
    num_experts=lambda c: c.num_experts,
    top_k=lambda c: c.num_experts_per_tok,
))
