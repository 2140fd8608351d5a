"""Switch Transformers: an encoder-decoder whose sparse layers route each token to its top-1 expert.

The router returns ``(one-hot dispatch mask [B, S, E], top-1 probability [B, S, 1], logits)`` and
the block calls ``experts(x, mask [T, 1, E], p [T, 1])``, so routing is read and replaced at that
call (``router_io="switch"``; the experts module runs any number of slots). The weight is the
top-1 softmax probability, not renormalised. Tokens beyond an expert's capacity get an all-zero
mask: the trace shows them with weight 0. Edits recompute routing from the logits and do not
re-apply the capacity limit. Encoder layers come first, then decoder layers
(``lm.layer_names``: ``"encoder.1"``, ``"decoder.3"``).
"""

from workbench.adapters.base import Adapter, register
from workbench.kernels.rules import RoutingRule

SWITCH = register(Adapter(
    name="switch_transformers",
    model_types=("switch_transformers",),
    rule=lambda c: RoutingRule("softmax"),
    num_experts=lambda c: c.num_experts,
    top_k=lambda c: 1,
    layers_path=("encoder.block", "decoder.block"),
    block_attr=("layer.1.mlp", "layer.2.mlp"),
    router_attr="router",
    router_io="switch",
    notes="top-1 routing with a capacity limit; edits do not re-apply capacity",
))
