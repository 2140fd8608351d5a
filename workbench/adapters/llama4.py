"""Llama-4: top-k of the logits, weight = sigmoid(logit); one shared expert.

For ``llama4_text`` and for the language model of the multimodal ``Llama4ForConditionalGeneration``.

The router returns dense ``[T, E]`` scores (0 for unselected experts) and the logits; the block
scales each expert's *input* by its score. Dense and MoE layers may interleave (``moe_layers``).
"""

from dataclasses import replace

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

# the multimodal Llama4ForConditionalGeneration (what Llama-4 checkpoints load as): the same blocks in
# its language model, the sizes read from its text config
LLAMA4_MULTIMODAL = register(replace(
    LLAMA4, name="llama4_multimodal", model_types=("llama4",), layers_path="language_model.model.layers",
    text_config=lambda c: c.get_text_config(),
    notes="the language model of Llama4ForConditionalGeneration (its vision encoder has no experts)",
))
