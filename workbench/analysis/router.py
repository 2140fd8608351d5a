"""How decided the router is: entropy of its distribution and the top-1 margin, per layer.

Both need the full router logits, so the trace must be recorded with ``wb.record(..., scores=True)``.
Logits become a distribution over the ``E`` experts with the family's rule
(:func:`workbench.kernels.probabilities`): a softmax, or for sigmoid families the sigmoid scores
normalised to sum 1. Entropy is in nats; ``entropy_norm`` divides by ``log E`` (1 = uniform,
0 = one expert takes everything). The margin is the gap between the two largest probabilities.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis import router_entropy
    >>> logits = np.array([[[0.0, 0.0], [50.0, 0.0]]])
    >>> trace = wb.RoutingTrace(topk_idx=[[[0], [0]]], topk_w=np.ones((1, 2, 1)), token_ids=[1, 2],
    ...                         doc=[0, 0], pos=[0, 1], layers=[0], num_experts=2, fingerprint="x",
    ...                         scores=logits)
    >>> router_entropy(trace)[["layer", "entropy_norm", "margin"]].round(3)
       layer  entropy_norm  margin
    0      0           0.5     0.5
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from workbench.kernels import RoutingRule, probabilities
from workbench.trace import is_stored

CHUNK = 65536


class MissingScoresError(ValueError):
    """The trace has no router scores, but the analysis needs them."""


def _rule_of(rule) -> RoutingRule:
    if rule is None:
        return RoutingRule("softmax")
    if isinstance(rule, RoutingRule):
        return rule
    if isinstance(getattr(rule, "rule", None), RoutingRule):
        return rule.rule
    raise TypeError(f"rule must be a RoutingRule or a model with .rule (e.g. lm), got {type(rule).__name__}")


def require_scores(trace) -> np.ndarray:
    """The trace's ``[L, T, E]`` router logits, or a :class:`MissingScoresError` saying what to do."""
    scores = getattr(trace, "scores", None)
    if scores is None:
        raise MissingScoresError(
            "this trace has no router scores (logits); record it again with "
            "wb.record(lm, texts, scores=True) (CLI: python -m workbench record --scores)")
    return scores


def token_entropy(trace, rule=None) -> pd.DataFrame:
    """Entropy and top-1 margin of every token at every layer.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` recorded with ``scores=True``.
        rule: the model's :class:`~workbench.kernels.RoutingRule` (or the model, ``lm``); default
            softmax, right for Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2 and the demo model.

    Returns:
        One row per (layer, token): ``layer``, ``t``, ``entropy`` (nats), ``entropy_norm``,
        ``margin``.
    """
    rule = _rule_of(rule)
    if is_stored(trace):
        from workbench.store.analyses import stored_token_entropy
        return stored_token_entropy(trace, rule)
    scores = require_scores(trace)
    frames = []
    for pos, layer in enumerate(trace.layers):
        ent, margin = entropy_margin(scores[pos], rule)
        frames.append(pd.DataFrame({"layer": layer, "t": np.arange(scores.shape[1], dtype=np.int64),
                                    "entropy": ent, "entropy_norm": ent / _log_e(trace.num_experts),
                                    "margin": margin}))
    return pd.concat(frames, ignore_index=True)


def _log_e(num_experts: int) -> float:
    return math.log(num_experts) if num_experts > 1 else 1.0


def entropy_margin(scores: np.ndarray, rule: RoutingRule) -> tuple[np.ndarray, np.ndarray]:
    """``(entropy, margin)``, each ``[n]`` float64, of ``[n, E]`` router scores under ``rule``."""
    num_tokens, num_experts = scores.shape
    ent = np.empty(num_tokens)
    margin = np.empty(num_tokens)
    for start in range(0, num_tokens, CHUNK):
        z = torch.from_numpy(scores[start:start + CHUNK].astype(np.float32))
        p = probabilities(z, rule).double()
        ent[start:start + CHUNK] = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).numpy()
        top = torch.topk(p, k=min(2, num_experts), dim=-1).values
        margin[start:start + CHUNK] = (top[:, 0] - top[:, 1]).numpy() if num_experts > 1 else 1.0
    return ent, margin


def router_entropy(trace, rule=None) -> pd.DataFrame:
    """Per layer: mean router entropy and top-1 margin (see :func:`token_entropy`).

    Returns:
        One row per layer: ``layer``, ``tokens``, ``entropy`` (mean, nats), ``entropy_norm`` (mean),
        ``entropy_norm_std``, ``margin`` (mean), ``margin_median``, ``max_entropy`` (``log E``).
    """
    if is_stored(trace):
        from workbench.store.analyses import stored_router_entropy
        return stored_router_entropy(trace, _rule_of(rule))
    frame = token_entropy(trace, rule)
    grouped = frame.groupby("layer", sort=False)
    out = pd.DataFrame({
        "tokens": grouped.size(), "entropy": grouped.entropy.mean(),
        "entropy_norm": grouped.entropy_norm.mean(),
        "entropy_norm_std": grouped.entropy_norm.std(ddof=0),
        "margin": grouped.margin.mean(), "margin_median": grouped.margin.median(),
        "max_entropy": math.log(trace.num_experts)}).reset_index()
    return out
