"""Score offsets: SteerMoE's way of switching experts on and off (Fayyaz et al., 2025).

Before the family rule routes a token, the router output is rewritten: the token's scores become
*log-probabilities*, every expert to activate gets the token's largest log-probability plus
``margin``, every expert to deactivate its smallest minus ``margin``, and the family's own rule
(softmax -> top-k -> renormalise, top-k -> softmax, sparsemixer, ...) runs on the result. An
activated expert is then the token's best expert and its weight comes out of the family's own
normalisation (the weights of a renormalising family still sum to 1); a deactivated expert is the
token's worst and is chosen only when fewer than ``k`` other experts are left.

This follows the reference implementation, adobe-research/SteerMoE at commit 0c7e6b5,
``src/modeling_vllm/qwen3_moe.py`` lines 158-164 (the same lines in ``mixtral.py`` 126-132,
``olmoe.py`` 117-123, ``gpt_oss.py`` 186-192, ``phimoe.py`` 315-321): ``log_softmax`` of the router
logits, ``max + 0.01`` / ``min - 0.01``, then the unchanged vLLM routing on those scores.

Per scoring kind (what the rewritten router output is):

* ``softmax``, ``topk_softmax``, ``sparsemixer`` — the offset log-softmax scores themselves, exactly
  as the reference passes them on (for the two softmax kinds this equals offsetting the logits,
  softmax being shift-invariant; sparsemixer's thresholds are not, so the log-softmax matters).
* ``probabilities`` (the router returns probabilities) — ``log p`` offset, then softmax back to
  probabilities: the same maths with the router's own normalisation already applied.
* ``sigmoid``, ``sqrtsoftplus``, ``topk_sigmoid`` — no reference exists; each expert's score is a
  monotone function of its own logit, so the offset applies to the logits (largest logit + margin,
  smallest - margin) and the family's rule is kept whole: its selection bias and expert groups still
  decide, so an activated expert whose bias is low, or whose group loses, can stay out.

Shapes: ``T`` tokens, ``E`` experts.

Example:
    >>> import torch
    >>> from workbench.kernels.rules import RoutingRule
    >>> from workbench.kernels.offsets import offset_scores
    >>> z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    >>> s = offset_scores(z, RoutingRule("softmax", renormalize=True), on=[3], off=[0])
    >>> top = torch.log_softmax(z, -1)
    >>> bool(torch.isclose(s[0, 3], top.max() + 0.01)), bool(torch.isclose(s[0, 0], top.min() - 0.01))
    (True, True)
"""

from __future__ import annotations

import math

import torch

from workbench.kernels.rules import RoutingRule

#: the reference's offset: activated experts get the token's max + 0.01, deactivated its min - 0.01
MARGIN = 0.01
#: scorings whose offset applies to log-probabilities (the rest: to the router logits)
LOG_PROB_SCORINGS = ("softmax", "topk_softmax", "sparsemixer", "probabilities")


def _check(on, off, num_experts: int) -> tuple[list[int], list[int]]:
    on, off = sorted({int(e) for e in on}), sorted({int(e) for e in off})
    both = set(on) & set(off)
    if both:
        raise ValueError(f"experts {sorted(both)} are both activated and deactivated; give each expert one side")
    bad = [e for e in on + off if not 0 <= e < num_experts]
    if bad:
        raise ValueError(f"expert {bad[0]} is out of range; there are experts 0..{num_experts - 1}")
    return on, off


def offset_scores(logits: torch.Tensor, rule: RoutingRule, on=(), off=(), margin: float = MARGIN) -> torch.Tensor:
    """The router output with experts ``on`` activated and ``off`` deactivated by score offsets.

    Args:
        logits: ``[T, E]`` router output (logits; probabilities for ``scoring="probabilities"``).
        rule: the family rule (decides the space the offset is applied in; see the module doc).
        on: experts to activate: per token, ``max + margin`` of the token's scores.
        off: experts to deactivate: per token, ``min - margin``.
        margin: the offset beyond the token's extreme scores (the reference uses 0.01).

    Returns:
        ``[T, E]`` float32 router output to route with the family's rule.
    """
    on, off = _check(on, off, logits.shape[-1])
    z = logits.float()
    if not on and not off:
        return z
    if rule.scoring in LOG_PROB_SCORINGS:
        s = torch.log(z.clamp_min(0)) if rule.scoring == "probabilities" else torch.log_softmax(z, dim=-1)
    else:
        s = z.clone()
    top = s.max(dim=-1, keepdim=True).values
    low = s.min(dim=-1, keepdim=True).values
    if on:
        s[:, on] = (top + margin).expand(-1, len(on))
    if off:
        s[:, off] = (low - margin).expand(-1, len(off))
    if rule.scoring == "probabilities":
        return torch.softmax(s, dim=-1)
    return s


def offset_scores_reference(row, rule: RoutingRule, on=(), off=(), margin: float = MARGIN) -> list[float]:
    """One token's :func:`offset_scores`, in plain Python (slow on purpose; tests compare them).

    Args:
        row: ``E`` router outputs of one token.
        rule, on, off, margin: as :func:`offset_scores`.

    Returns:
        ``E`` floats.
    """
    on, off = _check(on, off, len(row))
    z = [float(x) for x in row]
    if not on and not off:
        return z
    if rule.scoring == "probabilities":
        s = [math.log(x) if x > 0 else -math.inf for x in z]
    elif rule.scoring in LOG_PROB_SCORINGS:
        m = max(z)
        log_total = m + math.log(sum(math.exp(x - m) for x in z))
        s = [x - log_total for x in z]
    else:
        s = list(z)
    top, low = max(s), min(s)
    s = [top + margin if e in on else low - margin if e in off else x for e, x in enumerate(s)]
    if rule.scoring == "probabilities":
        m = max(s)
        ex = [math.exp(x - m) if x != -math.inf else 0.0 for x in s]
        return [x / sum(ex) for x in ex]
    return s
