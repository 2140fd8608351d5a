"""Fast replay of MoE layers: layer caches, recombine and replay under edited routing.

* :func:`capture` — cache a layer's inputs, router logits, outputs, shared part and (optionally)
  every candidate expert's output over calibration text, one layer at a time, saved as safetensors.
* :func:`recombine` — outputs and reconstruction losses of many routings at once from cached expert
  outputs (a gather and a weighted sum; exact for that layer).
* :func:`replay` — rerun the layer's experts under any routing from the model's own weights (grouped
  GEMM kernels), for routings outside the cache and to verify recombine.

The invariant tested first: the model's own routing reproduces the cached output.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import replay as rp
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> cache = rp.capture(lm, ["some calibration text"], layers=[1], progress=False)[1]
    >>> res = rp.recombine(lm, cache, [wb.Mask({1: [e]}) for e in range(lm.num_experts)])
    >>> len(res.best(3))
    3
"""

from workbench.replay.cache import LayerCache, LayerCaches
from workbench.replay.capture import capture
from workbench.replay.recombine import RecombineResult, recombine
from workbench.replay.replay import loss, replay, replay_decision
from workbench.replay.weights import UnsupportedExperts, expert_weights

__all__ = ["LayerCache", "LayerCaches", "RecombineResult", "UnsupportedExperts", "capture", "expert_weights",
           "loss", "recombine", "replay", "replay_decision"]
