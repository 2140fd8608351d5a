"""Vectorised routing: router logits -> ``(indices, weights)`` under a family rule and a plan.

This is the torch path used on every forward pass that carries an edit. An obvious per-token
implementation of the same maths lives in :mod:`workbench.kernels.reference`; tests compare them.

Shapes: ``T`` tokens, ``E`` routed experts, ``k`` slots. A :class:`Decision` always lists slots in
rank order (best selection score first). A slot may be *empty* (``valid`` False): its expert id is
still a real expert (transformers' grouped experts kernels silently misbehave on out-of-range ids)
and its weight is exactly 0, so it contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.kernels.offsets import MARGIN, offset_scores
from workbench.kernels.rules import RoutingRule

NEG_INF = float("-inf")
_NEG_INF_T = torch.tensor(NEG_INF)  # a 0-dim operand compares faster than a Python float


@dataclass
class Decision:
    """The routing of ``T`` tokens.

    Attributes:
        idx: ``[T, k]`` int64 expert ids, rank order.
        w: ``[T, k]`` float32 weights (0 in empty slots).
        valid: ``[T, k]`` bool, False for empty slots.
    """

    idx: torch.Tensor
    w: torch.Tensor
    valid: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.idx.shape[1])

    def recorded_idx(self) -> torch.Tensor:
        """Expert ids with ``-1`` in empty slots (what a trace stores)."""
        return torch.where(self.valid, self.idx, torch.full_like(self.idx, -1))


@dataclass
class RoutingPlan:
    """What an edit asks of one layer for some tokens. Built by :mod:`workbench.probes.edits`.

    Attributes:
        k: number of slots for top-k selection.
        blocked: experts never selected; the next-best expert takes the slot (score -inf before
            normalisation, as in Lu et al.).
        emptied: experts whose slot is left empty; the remaining weights are rescaled to the
            token's original total weight.
        mode: ``"topk"``, ``"top_p"``, ``"rank"`` or ``"random"``.
        top_p: probability mass for ``mode="top_p"``.
        rank: 0-based rank for ``mode="rank"`` (a single expert).
        rank_weight: weight of the single expert of ``mode="rank"`` or ``"random"``.
        seed: for ``mode="random"``: each token goes to one expert drawn from ``seed`` and the
            token's position (:func:`random_experts`), the same in every forward pass that sees
            that position; blocked experts are never drawn.
        forced: ``(expert, weight)`` pairs forced into the selection; weight None = the token's
            top-1 weight.
        skip_beta: drop the slot of rank ``i >= 1`` when ``w_i < beta * w_0``, then rescale.
        activated: experts switched on by a score offset before routing (SteerMoE): the token's
            largest log-probability + ``offset_margin``, then the family rule with its own
            normalisation (:func:`~workbench.kernels.offsets.offset_scores`).
        deactivated: experts switched off the same way: the token's smallest score - ``offset_margin``
            (chosen only when fewer than ``k`` other experts are left, unlike ``blocked``).
        offset_margin: the offset beyond the token's extreme scores (0.01 in SteerMoE).
    """

    k: int
    blocked: frozenset = field(default_factory=frozenset)
    emptied: frozenset = field(default_factory=frozenset)
    mode: str = "topk"
    top_p: float | None = None
    rank: int | None = None
    rank_weight: float = 1.0
    forced: tuple = ()
    skip_beta: float | None = None
    seed: int | None = None
    activated: frozenset = field(default_factory=frozenset)
    deactivated: frozenset = field(default_factory=frozenset)
    offset_margin: float = MARGIN

    @property
    def offsets(self) -> bool:
        """Whether the plan rewrites the router scores before routing (``activated``/``deactivated``)."""
        return bool(self.activated or self.deactivated)


def _allowed_mask(num_tokens: int, num_experts: int, blocked, device) -> torch.Tensor | None:
    if not blocked:
        return None
    allowed = torch.ones(num_tokens, num_experts, dtype=torch.bool, device=device)
    allowed[:, sorted(blocked)] = False
    return allowed


def _group_mask(choice: torch.Tensor, rule: RoutingRule, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only experts of the ``topk_group`` best groups (DeepSeek's group-limited greedy).

    Returns the masked choice scores and the ``[T, E]`` bool mask of experts in kept groups.
    """
    t, e = choice.shape
    grouped = choice.view(t, rule.n_group, e // rule.n_group)
    if rule.group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=rule.topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
    keep = keep.unsqueeze(-1).expand(-1, -1, e // rule.n_group).reshape(t, e)
    return choice.masked_fill(~keep, fill), keep


def scores(logits: torch.Tensor, rule: RoutingRule, bias: torch.Tensor | None = None,
           allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection scores and weight source for every expert.

    Args:
        logits: ``[T, E]`` router logits.
        rule: the family rule.
        bias: ``[E]`` selection bias (sigmoid families), or None.
        allowed: ``[T, E]`` bool, False for experts that may not be chosen, or None.

    Returns:
        ``(choice, value)``, both ``[T, E]`` float32: ``choice`` ranks experts (``-inf`` where not
        allowed); ``value`` is what a chosen expert's weight is computed from (probabilities for
        softmax, sigmoid scores, or raw logits for the top-k-then-normalise rules).
    """
    z = logits.float()
    if rule.scoring == "softmax":
        masked = z if allowed is None else z.masked_fill(~allowed, NEG_INF)
        value = torch.nan_to_num(torch.softmax(masked, dim=-1), nan=0.0)
    elif rule.scoring == "sigmoid":
        value = z.sigmoid()
    elif rule.scoring == "sqrtsoftplus":
        value = torch.nn.functional.softplus(z).sqrt()
    else:  # the top-k-then-normalise rules and "probabilities" choose on the router output itself
        value = z
    choice = value if bias is None else value + bias.float()
    if allowed is not None:
        choice = choice.masked_fill(~allowed, NEG_INF)
    return choice, value


def _renormalize(w: torch.Tensor, rule: RoutingRule) -> torch.Tensor:
    if rule.renorm_p == 1.0:
        denom = w.sum(dim=-1, keepdim=True)
    else:
        denom = torch.norm(w, p=rule.renorm_p, dim=-1, keepdim=True)
    denom = denom + rule.renorm_eps
    return torch.where(denom > 0, w / torch.where(denom > 0, denom, torch.ones_like(denom)), w)


def _sort_by(choice_sel: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    order = torch.argsort(choice_sel, dim=-1, descending=True, stable=True)
    return [t.gather(1, order) for t in tensors]


def _sparsemixer(z: torch.Tensor, k: int, rule: RoutingRule, allowed) -> Decision:
    masked = z if allowed is None else z.masked_fill(~allowed, NEG_INF)
    idx_cols, w_cols, valid_cols = [], [], []
    for _ in range(k):
        threshold, sel = masked.max(dim=-1, keepdim=True)
        factor = z.abs().clamp(min=threshold)
        far = ((threshold - z) / factor) > (2 * rule.jitter_eps)
        gates = torch.softmax(masked.masked_fill(far, NEG_INF), dim=-1)
        w_cols.append(torch.nan_to_num(gates.gather(1, sel), nan=0.0))
        idx_cols.append(sel)
        valid_cols.append(torch.isfinite(threshold))
        masked = masked.scatter(1, sel, NEG_INF)
    idx = torch.cat(idx_cols, dim=1)
    w = torch.cat(w_cols, dim=1)
    valid = torch.cat(valid_cols, dim=1)
    return Decision(idx, torch.where(valid, w, torch.zeros_like(w)), valid)


def route(logits: torch.Tensor, rule: RoutingRule, k: int, bias: torch.Tensor | None = None,
          allowed: torch.Tensor | None = None) -> Decision:
    """The family's own top-k routing, optionally with some experts not allowed.

    Args:
        logits: ``[T, E]`` router logits.
        rule: the family rule.
        k: slots per token.
        bias: ``[E]`` selection bias or None.
        allowed: ``[T, E]`` bool or None.

    Returns:
        A :class:`Decision` in rank order.

    Example:
        >>> import torch
        >>> from workbench.kernels import RoutingRule, route
        >>> d = route(torch.tensor([[2.0, 0.0, 1.0]]), RoutingRule("softmax", renormalize=True), k=2)
        >>> d.idx.tolist(), [round(x, 3) for x in d.w[0].tolist()]
        ([[0, 2]], [0.731, 0.269])
    """
    if rule.scoring == "sparsemixer":
        return _sparsemixer(logits.float(), k, rule, allowed)
    choice, value = scores(logits, rule, bias, allowed)
    in_group = None
    if rule.n_group > 1:
        choice, in_group = _group_mask(choice, rule, 0.0 if rule.scoring == "softmax" and bias is None else NEG_INF)
    unsorted = rule.n_group > 1 or bias is not None or rule.scoring in ("sigmoid", "sqrtsoftplus")
    top_choice, idx = torch.topk(choice, k=k, dim=-1, sorted=not unsorted)
    valid = top_choice > NEG_INF
    if allowed is not None:
        valid &= allowed.gather(1, idx)
    if in_group is not None:
        valid &= in_group.gather(1, idx)
    picked = value.gather(1, idx)
    if rule.scoring == "topk_softmax":
        w = torch.softmax(picked.masked_fill(~valid, NEG_INF), dim=-1)
    elif rule.scoring == "topk_sigmoid":
        w = picked.sigmoid()
    else:
        w = picked
    w = torch.nan_to_num(torch.where(valid, w, torch.zeros_like(w)), nan=0.0)
    if rule.renormalize:
        w = _renormalize(w, rule)
    if rule.scaling != 1.0:
        w = w * rule.scaling
    if unsorted:
        idx, w, valid = _sort_by(top_choice, idx, w, valid)
    return Decision(idx, w, valid)


def probabilities(logits: torch.Tensor, rule: RoutingRule, allowed=None) -> torch.Tensor:
    """``[T, E]`` probabilities used by top-p routing (sigmoid scores are normalised to sum 1)."""
    z = logits.float()
    if allowed is not None:
        z = z.masked_fill(~allowed, NEG_INF)
    if rule.scoring in ("sigmoid", "sqrtsoftplus", "probabilities"):
        s = z.sigmoid() if rule.scoring == "sigmoid" else (
            torch.nn.functional.softplus(z).sqrt() if rule.scoring == "sqrtsoftplus" else z.clamp_min(0))
        return s / s.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.nan_to_num(torch.softmax(z, dim=-1), nan=0.0)


def route_top_p(logits: torch.Tensor, rule: RoutingRule, p: float, allowed=None) -> Decision:
    """Top-p routing: keep experts by probability until the kept mass first exceeds ``p``.

    The expert that crosses the threshold is kept; weights are the probabilities (times the
    rule's scaling), not renormalised. The slot count is the largest count any token needs.
    """
    probs = probabilities(logits, rule, allowed)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep = (before < p) & (sorted_p > 0)
    keep[:, 0] |= sorted_p[:, 0] > 0
    k = max(int(keep.sum(dim=-1).max().item()), 1)
    w = torch.where(keep[:, :k], sorted_p[:, :k], torch.zeros_like(sorted_p[:, :k])) * rule.scaling
    return Decision(order[:, :k], w, keep[:, :k])


def route_rank(logits: torch.Tensor, rule: RoutingRule, rank: int, weight: float = 1.0,
               bias: torch.Tensor | None = None, allowed=None) -> Decision:
    """Only the expert at 0-based ``rank`` of the family's selection score, with ``weight``."""
    choice, _ = scores(logits, rule, bias, allowed)
    if rule.scoring == "sparsemixer":
        choice = logits.float() if allowed is None else logits.float().masked_fill(~allowed, NEG_INF)
    if not 0 <= rank < choice.shape[-1]:
        raise ValueError(f"rank {rank} is out of range for {choice.shape[-1]} experts")
    top_choice, idx = torch.topk(choice, k=rank + 1, dim=-1)
    idx = idx[:, rank:]
    valid = top_choice[:, rank:] > _NEG_INF_T
    if weight == 1.0:
        w = valid.to(torch.float32)
    else:
        w = torch.where(valid, torch.full(idx.shape, float(weight), device=idx.device),
                        torch.zeros(idx.shape, device=idx.device))
    return Decision(idx, w, valid)


_HASH_MASK = (1 << 31) - 1


def _mix31(x: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in ``[0, 2**31)`` (products stay below ``2**63``)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _HASH_MASK
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _HASH_MASK
    return x ^ (x >> 16)


def random_experts(seed: int, positions: torch.Tensor, num_experts: int, blocked=()) -> torch.Tensor:
    """``[T]`` int64: the expert that :func:`route_random` draws for each token position.

    A hash of ``seed`` and the position, so the draw depends on nothing else (not on the batch,
    the router logits or how the sequence is split into forward passes). Blocked experts are
    skipped: the draw picks among the others, in id order.
    """
    candidates = [e for e in range(num_experts) if e not in blocked]
    if not candidates:
        raise ValueError("every expert is blocked: a random expert cannot be drawn")
    pos = positions.long() & _HASH_MASK
    h = _mix31((_mix31(pos) + (int(seed) & _HASH_MASK)) & _HASH_MASK) % len(candidates)
    if len(candidates) == num_experts:
        return h
    return torch.tensor(candidates, device=positions.device)[h]


def route_random(positions: torch.Tensor, num_experts: int, seed: int, weight: float = 1.0,
                 blocked=()) -> Decision:
    """Each token to one expert drawn by :func:`random_experts`, with weight ``weight``."""
    idx = random_experts(seed, positions, num_experts, blocked).unsqueeze(1)
    valid = torch.ones_like(idx, dtype=torch.bool)
    return Decision(idx, torch.full(idx.shape, float(weight), device=idx.device), valid)


def _rescale_to(w_new: torch.Tensor, w_old: torch.Tensor) -> torch.Tensor:
    old = w_old.sum(dim=-1, keepdim=True)
    new = w_new.sum(dim=-1, keepdim=True)
    factor = torch.where(new > 0, old / torch.where(new > 0, new, torch.ones_like(new)), torch.zeros_like(new))
    return w_new * factor


def empty_slots(d: Decision, drop: torch.Tensor) -> Decision:
    """Empty the slots where ``drop`` ``[T, k]`` is True; rescale the rest to the old total."""
    valid = d.valid & ~drop
    w = torch.where(valid, d.w, torch.zeros_like(d.w))
    return Decision(d.idx, _rescale_to(w, d.w), valid)


def force(d: Decision, forced, num_experts: int) -> Decision:
    """Put each ``(expert, weight)`` of ``forced`` into every token's selection.

    A forced expert already selected keeps its slot (its weight is set when one is given); otherwise
    it replaces the lowest-ranked slot that is not forced. ``weight=None`` means the token's top-1
    weight. Slots are re-sorted by weight afterwards.
    """
    idx, w, valid = d.idx.clone(), d.w.clone(), d.valid.clone()
    if len(forced) > idx.shape[1]:
        raise ValueError(f"cannot force {len(forced)} experts into {idx.shape[1]} slots")
    top1 = d.w[:, 0].clone()
    forced_ids = torch.tensor([e for e, _ in forced], device=idx.device)
    pinned = valid & torch.isin(idx, forced_ids)  # never evict an expert that is itself forced
    rows = torch.arange(idx.shape[0], device=idx.device)
    position = torch.arange(1, idx.shape[1] + 1, device=idx.device)
    for expert, weight in forced:
        if not 0 <= expert < num_experts:
            raise ValueError(f"expert {expert} out of range 0..{num_experts - 1}")
        present = (idx == expert) & valid
        has = present.any(dim=-1)
        # otherwise: an empty slot if there is one, else the lowest-ranked slot not yet forced
        priority = torch.where(pinned, torch.zeros_like(position), position + (~valid) * idx.shape[1])
        slot = torch.where(has, present.float().argmax(dim=-1), priority.argmax(dim=-1))
        if weight is None:
            new_w = torch.where(has, w[rows, slot], top1)
        else:
            new_w = torch.full_like(top1, float(weight))
        idx[rows, slot] = expert
        w[rows, slot] = new_w
        valid[rows, slot] = True
        pinned[rows, slot] = True
    idx, w, valid = _sort_by(torch.where(valid, w, torch.full_like(w, NEG_INF)), idx, w, valid)
    return Decision(idx, w, valid)


def skip(d: Decision, beta: float) -> Decision:
    """Lu et al.'s dynamic skipping: empty slot ``i >= 1`` when ``w_i < beta * w_0``."""
    drop = d.w < beta * d.w[:, :1]
    drop[:, 0] = False
    return empty_slots(d, drop)


def apply_plan(logits: torch.Tensor, rule: RoutingRule, plan: RoutingPlan,
               bias: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> Decision:
    """Route ``[T, E]`` logits under ``plan`` with the family's rule.

    ``positions`` (``[T]`` int) are the tokens' positions in their sequences, used only by
    ``mode="random"``; None numbers the tokens ``0..T-1``. A plan with ``activated`` or
    ``deactivated`` experts first rewrites the scores (:func:`~workbench.kernels.offsets.offset_scores`),
    then routes them like any other plan.

    Example:
        >>> import torch
        >>> from workbench.kernels import RoutingRule, RoutingPlan, apply_plan
        >>> logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
        >>> rule = RoutingRule("softmax", renormalize=True)
        >>> apply_plan(logits, rule, RoutingPlan(k=2, blocked=frozenset({0}))).idx.tolist()
        [[1, 2]]
        >>> apply_plan(logits, rule, RoutingPlan(k=2, mode="rank", rank=2)).idx.tolist()
        [[2]]
        >>> d = apply_plan(logits, rule, RoutingPlan(k=2, activated=frozenset({3}), deactivated=frozenset({0})))
        >>> d.idx.tolist(), round(float(d.w.sum()), 6)
        ([[3, 1]], 1.0)
    """
    num_tokens, num_experts = logits.shape
    if plan.offsets:
        logits = offset_scores(logits, rule, plan.activated, plan.deactivated, plan.offset_margin)
    allowed = _allowed_mask(num_tokens, num_experts, plan.blocked, logits.device)
    if plan.mode == "topk":
        if not 1 <= plan.k <= num_experts:
            raise ValueError(f"k={plan.k} must be between 1 and the number of experts ({num_experts})")
        d = route(logits, rule, plan.k, bias, allowed)
    elif plan.mode == "top_p":
        d = route_top_p(logits, rule, float(plan.top_p), allowed)
    elif plan.mode == "rank":
        d = route_rank(logits, rule, int(plan.rank), plan.rank_weight, bias, allowed)
    elif plan.mode == "random":
        if positions is None:
            positions = torch.arange(num_tokens, device=logits.device)
        d = route_random(positions.to(logits.device), num_experts, int(plan.seed or 0), plan.rank_weight,
                         plan.blocked)
    else:
        raise ValueError(f"unknown plan mode {plan.mode!r}")
    if plan.forced:
        d = force(d, plan.forced, num_experts)
    if plan.emptied:
        drop = torch.zeros_like(d.valid)
        for e in plan.emptied:
            drop |= d.idx == e
        d = empty_slots(d, drop & d.valid)
    if plan.skip_beta is not None:
        d = skip(d, float(plan.skip_beta))
    return d
