"""The obvious implementations of the replay operations: explicit loops, slow on purpose.

* :func:`route_plans_reference` — plan by plan, token by token, with the per-token routing reference
  :func:`workbench.kernels.reference.plan_token`.
* :func:`grouped_experts_reference` — token by token, slot by slot: one expert MLP on one vector.
* :func:`recombine_reference` — plan by plan, token by token, slot by slot, in float64.

Every other backend (torch, Triton) is tested against these.

Example:
    >>> import torch
    >>> from workbench.kernels import RoutingPlan, RoutingRule
    >>> from workbench.kernels.replay_reference import route_plans_reference
    >>> d = route_plans_reference(torch.tensor([[0.0, 2.0, 1.0]]), RoutingRule("softmax"), [RoutingPlan(k=1)])
    >>> d.idx.tolist()
    [[[1]]]
"""

from __future__ import annotations

import torch

from workbench.kernels import reference
from workbench.kernels.grouped import ExpertWeights, activate, check_routing
from workbench.kernels.plans import PlanDecisions, check_plans
from workbench.kernels.recombine import OutsideCacheError


def route_plans_reference(logits: torch.Tensor, rule, plans, bias=None) -> PlanDecisions:
    """Each plan, each token, routed by :func:`workbench.kernels.reference.plan_token`."""
    plans = check_plans(plans, logits.shape[1])
    rows = logits.float().tolist()
    b = None if bias is None else bias.float().tolist()
    slots = [[reference.plan_token(row, rule, plan, b) for row in rows] for plan in plans]
    k = max(len(s) for per_plan in slots for s in per_plan)
    r, t = len(plans), len(rows)
    idx = torch.zeros(r, t, k, dtype=torch.long)
    w = torch.zeros(r, t, k, dtype=torch.float32)
    valid = torch.zeros(r, t, k, dtype=torch.bool)
    for i in range(r):
        for j in range(t):
            for s, (e, weight, ok) in enumerate(slots[i][j]):
                idx[i, j, s], w[i, j, s], valid[i, j, s] = e, weight if ok else 0.0, ok
            for s in range(len(slots[i][j]), k):
                idx[i, j, s] = slots[i][j][0][0]
    dev = logits.device
    return PlanDecisions(idx.to(dev), w.to(dev), valid.to(dev))


def _expert_on_vector(ew: ExpertWeights, e: int, v: torch.Tensor) -> torch.Tensor:
    g = v @ ew.gate[e].float()
    u = v @ ew.up[e].float()
    if ew.gate_bias is not None:
        g = g + ew.gate_bias[e].float()
    if ew.up_bias is not None:
        u = u + ew.up_bias[e].float()
    y = activate(ew, g, u, use_module=False) @ ew.down[e].float()
    if ew.down_bias is not None:
        y = y + ew.down_bias[e].float()
    return y


def grouped_experts_reference(x: torch.Tensor, ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor,
                              valid: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """Every valid slot of every token: the expert's MLP on that token's vector, in float32."""
    valid = check_routing(x, ew, idx, w, valid)
    num_tokens, k = idx.shape
    out = torch.zeros(num_tokens, k, ew.hidden, dtype=torch.float32, device=x.device)
    for t in range(num_tokens):
        for j in range(k):
            if not bool(valid[t, j]):
                continue
            e, weight = int(idx[t, j]), float(w[t, j])
            v = x[t].float()
            if ew.scale_input:
                out[t, j] = _expert_on_vector(ew, e, v * weight)
            else:
                out[t, j] = weight * _expert_on_vector(ew, e, v)
    return out.sum(dim=1).to(x.dtype) if reduce else out.to(x.dtype)


def recombine_reference(Y: torch.Tensor, cand: torch.Tensor | None, decisions, shared, target,
                        outputs: bool = True, loss: bool = True, method: str = "auto", base=None):
    """Plan by plan, token by token: gather each slot's cached output, weight, sum; float64 loss.
    (``method`` and ``base`` are accepted for a common signature and ignored.)"""
    r, t, k = decisions.idx.shape
    cols, h = Y.shape[1], Y.shape[2]
    cand_rows = None if cand is None else cand.tolist()
    out_all = torch.zeros(r, t, h, dtype=torch.float64)
    for i in range(r):
        for tok in range(t):
            acc = torch.zeros(h, dtype=torch.float64) if shared is None else shared[tok].double().clone()
            for j in range(k):
                if not bool(decisions.valid[i, tok, j]):
                    continue
                e = int(decisions.idx[i, tok, j])
                row = list(range(cols)) if cand_rows is None else cand_rows[tok]
                if e not in row:
                    raise OutsideCacheError(f"routing #{i} sends token {tok} to expert {e}, which is not cached")
                acc += float(decisions.w[i, tok, j]) * Y[tok, row.index(e)].double()
            out_all[i, tok] = acc
    losses = None
    if loss:
        losses = torch.tensor([float(((out_all[i] - target.double()) ** 2).sum().sqrt()) for i in range(r)],
                              dtype=torch.float64)
    return (out_all.float() if outputs else None), losses
