"""Routing rules as data: how a family turns router logits into ``(indices, weights)``.

Every MoE family in transformers uses one of a few rules. :class:`RoutingRule` names the rule and
its constants; :mod:`workbench.kernels.routing` implements it (vectorised torch, plus an obvious
per-token reference in :mod:`workbench.kernels.reference`).

Scoring kinds:

* ``"softmax"`` — probabilities over all experts, keep the top-k probabilities (Mixtral, Qwen-MoE,
  OLMoE, DeepSeek-V2, DBRX). Optionally renormalise the kept weights (``renormalize``; DBRX uses a
  p-norm, ``renorm_p``), optionally group-limited (DeepSeek-V2 ``group_limited_greedy``).
* ``"sigmoid"`` — independent sigmoid scores; a per-expert *selection bias* is added for choosing but
  not for weighting; group-limited choice by the sum of each group's two best; renormalise; scale
  (DeepSeek-V3, GLM-4-MoE).
* ``"topk_softmax"`` — top-k of the raw logits, softmax over the kept ones (GPT-OSS, Granite-MoE,
  JetMoE).
* ``"topk_sigmoid"`` — top-k of the raw logits, weight = sigmoid(logit) (Llama-4).
* ``"sparsemixer"`` — PhiMoE's inference-time sparsemixer: the best expert, then the best of the
  rest, each weighted by a softmax over the experts within a relative threshold of the current best.
* ``"sqrtsoftplus"`` — like ``"sigmoid"`` with ``sqrt(softplus(z))`` as the per-expert score
  (DeepSeek-V4's ``scoring_func``).
* ``"probabilities"`` — the router already returns probabilities; keep the top-k of them (Gemma-4).

A *selection bias* (``biased=True``; the per-expert tensor is read from the model) is added to the
choice score of any scoring but never to the weight: to sigmoid scores (DeepSeek-V3), to softmax
probabilities (LongCat-Flash, Ernie-4.5), or to raw logits (top-k-then-normalise rules).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# new kinds go at the end: the Triton routing kernel indexes the first five
SCORINGS = ("softmax", "sigmoid", "topk_softmax", "topk_sigmoid", "sparsemixer", "sqrtsoftplus", "probabilities")


@dataclass(frozen=True)
class RoutingRule:
    """A family's routing rule.

    Args:
        scoring: one of :data:`SCORINGS`.
        renormalize: rescale the kept weights so that they sum to one (``norm_topk_prob``).
        renorm_p: the norm used to renormalise (1 = sum; DBRX may use another p-norm).
        renorm_eps: added to the denominator when renormalising (DeepSeek-V3 adds ``1e-20``).
        scaling: multiplies the final weights (``routed_scaling_factor``).
        n_group: expert groups for group-limited selection (1 = no groups).
        topk_group: how many groups a token may draw experts from.
        group_score: ``"max"`` (DeepSeek-V2) or ``"top2sum"`` (DeepSeek-V3, GLM-4-MoE).
        jitter_eps: PhiMoE's sparsemixer threshold.
        weights_in_logits_dtype: the router casts its weights back to the logits' dtype.
        biased: the family adds a per-expert selection bias to the choice score (not the weight).

    Example:
        >>> from workbench.kernels.rules import RoutingRule
        >>> RoutingRule("softmax", renormalize=True).describe()
        'softmax -> top-k -> renormalise'
    """

    scoring: str
    renormalize: bool = False
    renorm_p: float = 1.0
    renorm_eps: float = 0.0
    scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    jitter_eps: float = 0.01
    weights_in_logits_dtype: bool = False
    biased: bool = False

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; known: {', '.join(SCORINGS)}")
        if self.group_score not in ("max", "top2sum"):
            raise ValueError(f"group_score must be 'max' or 'top2sum', got {self.group_score!r}")

    def with_(self, **changes) -> "RoutingRule":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self) -> str:
        """A short human-readable form of the rule."""
        parts = {
            "softmax": ["softmax", "top-k"],
            "sigmoid": ["sigmoid (+ selection bias for choice)", "top-k"],
            "topk_softmax": ["top-k of logits", "softmax over kept"],
            "topk_sigmoid": ["top-k of logits", "sigmoid"],
            "sparsemixer": ["sparsemixer"],
            "sqrtsoftplus": ["sqrt(softplus)", "top-k"],
            "probabilities": ["router probabilities", "top-k"],
        }[self.scoring]
        if self.biased and self.scoring not in ("sigmoid", "sparsemixer"):
            parts[0] += " (+ selection bias for choice)"
        if self.n_group > 1:
            parts.insert(1, f"groups {self.topk_group}/{self.n_group} by {self.group_score}")
        if self.renormalize:
            parts.append("renormalise" if self.renorm_p == 1 else f"renormalise (p={self.renorm_p:g})")
            if self.renorm_eps:
                parts[-1] += f" (+{self.renorm_eps:g})"
        if self.scaling != 1.0:
            parts.append(f"x{self.scaling:g}")
        return " -> ".join(parts)
