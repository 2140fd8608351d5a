"""Fused per-row routing for one common layout: some rows keep the model's own routing, the others
send every token to the single expert at one rank (self-contrast decoding's weak row).

:meth:`~workbench.probes.hooks.ProbeManager.decide` normally routes every distinct plan over all
tokens, pads each part to ``k`` slots and merges the parts row by row with ``torch.where`` (about 17
small tensor operations per layer). On a decoding step of SCMoE (2 rows of 1 token) those small
operations are the whole cost of the edit, so when a layer's layout is exactly *native rows + rows
with a* ``KeepRank`` *plan* (no blocked, emptied or forced experts, no skipping, no selection bias),
:class:`RankRows` computes the same :class:`~workbench.kernels.routing.Decision` in four: the
family's choice score, one ``topk``, and a ``where`` each for ids and weights (a third for ``valid``
when a listener reads it).

The result equals the general path exactly: the ranked expert comes from the same ``topk`` of the
same choice score as :func:`~workbench.kernels.routing.route_rank`; its slot is followed by empty
slots (the same expert id, weight 0, not valid) as the general path's padding makes them.
:func:`rank_rows_reference` is the obvious per-token form (through
:func:`workbench.kernels.reference.plan_token`) that tests compare it with.

Example:
    >>> import torch
    >>> from workbench.kernels import RoutingPlan, RoutingRule, route
    >>> from workbench.kernels.rank_rows import RankRows, rank_rows_reference
    >>> rule = RoutingRule("softmax", renormalize=True)
    >>> logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])   # [T=2 tokens, E=4]
    >>> native = route(logits, rule, k=2)
    >>> mask = torch.tensor([[False], [True]])                               # token 1: the weak row
    >>> fused = RankRows(mask, RoutingPlan(k=2, mode="rank", rank=2))(logits, native, rule)
    >>> fused.idx.tolist(), fused.w[1].tolist(), fused.valid.tolist()     # token 1: expert 1 (rank 2), weight 1
    ([[0, 1], [1, 1]], [1.0, 0.0], [[True, True], [True, False]])
    >>> torch.equal(fused.w[0], native.w[0])                                 # token 0: the model's own routing
    True
    >>> ref = rank_rows_reference(logits, native, rule, mask, RoutingPlan(k=2, mode="rank", rank=2))
    >>> torch.equal(ref.idx, fused.idx) and torch.equal(ref.valid, fused.valid)
    True
"""

from __future__ import annotations

import torch

from workbench.kernels.routing import Decision, RoutingPlan, scores
from workbench.kernels.rules import RoutingRule


def fusable(plans, bias) -> RoutingPlan | None:
    """The rank plan of a layout that :class:`RankRows` computes, else None.

    Args:
        plans: the layout's distinct plans (None = the model's own routing), as
            :meth:`~workbench.probes.hooks.ProbeManager.decide` builds them.
        bias: the layer's selection bias (a biased choice score is left to the general path).
    """
    if bias is not None or len(plans) != 2 or sum(p is None for p in plans) != 1:
        return None
    plan = plans[0] if plans[1] is None else plans[1]
    if plan.mode != "rank" or plan.rank is None:
        return None
    # nothing else may be set (blocked, emptied, forced, skipping, score offsets, any later field):
    # a plain rank plan equals the plan made of its rank, weight and slot count alone
    plain = RoutingPlan(k=plan.k, mode="rank", rank=plan.rank, rank_weight=plan.rank_weight, seed=plan.seed)
    return plan if plan == plain else None


def choice_scores(logits: torch.Tensor, rule: RoutingRule) -> torch.Tensor:
    """``[T, E]`` float32 scores :func:`~workbench.kernels.routing.route_rank` ranks experts by
    (no bias, nothing blocked): the softmax for softmax families, the logits for sparsemixer."""
    if rule.scoring == "softmax":
        # scores() adds nan_to_num, a no-op here: the logits were checked finite before routing
        return torch.softmax(logits.float(), dim=-1)
    if rule.scoring == "sparsemixer":
        return logits.float()
    return scores(logits, rule)[0]


class RankRows:
    """The fused routing of one layout (built once per layer and batch shape, then called per step).

    Args:
        mask: ``[T, 1]`` bool, True for the tokens whose row takes the rank plan.
        plan: a ``mode="rank"`` :class:`~workbench.kernels.routing.RoutingPlan` (see :func:`fusable`).
    """

    def __init__(self, mask: torch.Tensor, plan: RoutingPlan):
        self.mask = mask
        self.rank = int(plan.rank)
        self.weight = float(plan.rank_weight)
        self._slots = None  # ([1, k] weights, [1, k] valid) of a ranked token, made on the first call

    def _constants(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, k]`` weights ``[weight, 0, ...]`` and valid ``[True, False, ...]`` of a ranked token
        (on the mask's device: a layout belongs to one device)."""
        hit = self._slots
        if hit is None or hit[0].shape[1] != k:
            w = torch.zeros(1, k, dtype=torch.float32, device=self.mask.device)
            w[0, 0] = self.weight
            valid = torch.zeros(1, k, dtype=torch.bool, device=self.mask.device)
            valid[0, 0] = True
            hit = self._slots = (w, valid)
        return hit

    def __call__(self, logits: torch.Tensor, native: Decision, rule: RoutingRule,
                 need_valid: bool = True) -> Decision:
        """The merged routing ``[T, k]`` (``k`` = the native slots) of finite ``logits [T, E]``.

        Args:
            logits: router logits of all ``T`` tokens (checked finite by the caller).
            native: the model's own routing ``[T, k]`` (``valid`` may be None when ``need_valid``
                is False).
            rule: the family rule.
            need_valid: also build ``valid`` (else it is None, as the hooks need no more).
        """
        choice = choice_scores(logits, rule)
        ranked = torch.topk(choice, k=self.rank + 1, dim=-1).indices[:, self.rank:]  # [T, 1]
        w_row, valid_row = self._constants(native.idx.shape[1])
        idx = torch.where(self.mask, ranked, native.idx)
        w = torch.where(self.mask, w_row, native.w)
        valid = torch.where(self.mask, valid_row, native.valid) if need_valid else None
        return Decision(idx, w, valid)


def rank_rows_reference(logits: torch.Tensor, native: Decision, rule: RoutingRule, mask: torch.Tensor,
                        plan: RoutingPlan) -> Decision:
    """The obvious form of :class:`RankRows`: token by token, the rank plan routed by
    :func:`workbench.kernels.reference.plan_token` and padded with empty slots, or the native row."""
    from workbench.kernels.reference import plan_token

    k = native.idx.shape[1]
    idx, w, valid = native.idx.clone().long(), native.w.clone().float(), native.valid.clone()
    for t in range(logits.shape[0]):
        if not bool(mask[t, 0]):
            continue
        slots = plan_token(logits[t].float().tolist(), rule, plan)
        first = slots[0][0]
        slots = slots + [(first, 0.0, False)] * (k - len(slots))
        idx[t] = torch.tensor([e for e, _, _ in slots])
        w[t] = torch.tensor([x for _, x, _ in slots])
        valid[t] = torch.tensor([ok for _, _, ok in slots])
    return Decision(idx, w, valid)
