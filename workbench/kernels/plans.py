"""Routing of ``T`` tokens under ``R`` plans at once, with the family rule.

The torch path groups plans that choose experts the same way (same mode, ``k``, forced experts,
``top_p``/rank) and routes each group in one call of the core's own :func:`~workbench.kernels.route`
(or ``route_top_p``/``route_rank``) on the logits repeated ``R`` times, with each plan's blocked
experts as a per-row ``allowed`` mask; emptied experts and skip thresholds are then applied per row
with the core's :func:`~workbench.kernels.empty_slots`. It equals :func:`~workbench.kernels.apply_plan`
plan by plan (tests compare them for every rule and plan kind).

Many expert masks (plans that differ only in blocked experts) take a shortcut under rules whose
weights depend only on the selected experts (:func:`selection_local`): only the (plan, token) rows
whose own top-k contains a blocked expert are routed again, by the same ``route`` on a narrow slice
of the token's expert ranking. This is what makes thousands of candidate masks cheap.

Plans with score offsets (``activated``/``deactivated``, SteerMoE) rewrite the logits first, once per
distinct offset, and are then routed like the others on the rewritten logits, by every backend
(:func:`route_offsets`).

Example:
    >>> import torch
    >>> from workbench.kernels import RoutingPlan, RoutingRule
    >>> from workbench.kernels.plans import route_plans
    >>> logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    >>> plans = [RoutingPlan(k=2), RoutingPlan(k=2, blocked=frozenset({0})), RoutingPlan(k=1)]
    >>> route_plans(logits, RoutingRule("softmax", renormalize=True), plans).idx[:, 0].tolist()
    [[0, 1], [1, 2], [0, 0]]
"""

from __future__ import annotations

import torch

from dataclasses import replace

from workbench.kernels.offsets import offset_scores, offset_scores_reference
from workbench.kernels.routing import (
    Decision, RoutingPlan, empty_slots, force, route, route_rank, route_top_p, scores,
)
from workbench.kernels.rules import RoutingRule

# logits rows x experts routed per chunk (bounds the memory of R repeated copies of the logits)
CHUNK_ELEMENTS = 1 << 24


class PlanDecisions:
    """The routing of ``T`` tokens under ``R`` plans.

    Attributes:
        idx: ``[R, T, k]`` int64 expert ids (real ids also in empty slots).
        w: ``[R, T, k]`` float32 weights (0 in empty slots).
        valid: ``[R, T, k]`` bool.
        sparse: None, or the same routing said compactly (many expert masks): every row equals the
            ``base`` routing ``[T, k]`` except rows ``(plan_i[n], tok_i[n])``, which equal
            ``rows[row_i[n]]`` (distinct routings ``[U, k]`` of tokens ``row_tok [U]``). The dense
            tensors are then built on first access.

    ``k`` is the largest slot count of any plan; plans with fewer slots are padded with empty slots.
    """

    def __init__(self, idx=None, w=None, valid=None, sparse: dict | None = None):
        if idx is None and sparse is None:
            raise ValueError("PlanDecisions needs dense tensors or a sparse form")
        self._dense = None if idx is None else (idx, w, valid)
        self.sparse = sparse

    def _materialise(self):
        if self._dense is None:
            sp = self.sparse
            table = [torch.cat([a, b]) for a, b in zip((sp["base"].idx, sp["base"].w, sp["base"].valid),
                                                         (sp["rows"].idx, sp["rows"].w, sp["rows"].valid))]
            num_tokens = sp["base"].idx.shape[0]
            which = torch.arange(num_tokens, device=table[0].device).expand(sp["num_plans"], -1).clone()
            which[sp["plan_i"], sp["tok_i"]] = num_tokens + sp["row_i"]
            flat = which.reshape(-1)
            self._dense = tuple(t.index_select(0, flat).view(*which.shape, -1) for t in table)
        return self._dense

    @property
    def idx(self) -> torch.Tensor:
        return self._materialise()[0]

    @property
    def w(self) -> torch.Tensor:
        return self._materialise()[1]

    @property
    def valid(self) -> torch.Tensor:
        return self._materialise()[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(R, T, k)``."""
        if self._dense is None:
            base = self.sparse["base"].idx
            return (self.sparse["num_plans"], int(base.shape[0]), int(base.shape[1]))
        return tuple(self._dense[0].shape)

    def __len__(self) -> int:
        return self.shape[0]

    def decision(self, r: int) -> Decision:
        """Plan ``r``'s routing as a :class:`~workbench.kernels.Decision`."""
        return Decision(self.idx[r], self.w[r], self.valid[r])


def pad_slots(d: Decision, k: int) -> Decision:
    """``d`` with empty slots appended up to ``k`` slots."""
    pad = k - d.idx.shape[-1]
    if pad <= 0:
        return d
    idx = torch.cat([d.idx, d.idx[..., :1].expand(*d.idx.shape[:-1], pad)], dim=-1)
    w = torch.cat([d.w, torch.zeros(*d.w.shape[:-1], pad, dtype=d.w.dtype, device=d.w.device)], dim=-1)
    valid = torch.cat([d.valid, torch.zeros(*d.valid.shape[:-1], pad, dtype=torch.bool, device=d.valid.device)],
                      dim=-1)
    return Decision(idx, w, valid)


def stack(decisions: list[Decision]) -> PlanDecisions:
    """Stack per-plan decisions ``[T, k_r]`` into one :class:`PlanDecisions` (padding slots)."""
    k = max(d.idx.shape[-1] for d in decisions)
    padded = [pad_slots(d, k) for d in decisions]
    return PlanDecisions(torch.stack([d.idx.long() for d in padded]), torch.stack([d.w.float() for d in padded]),
                         torch.stack([d.valid for d in padded]))


def check_plans(plans, num_experts: int) -> list[RoutingPlan]:
    plans = list(plans)
    if not plans:
        raise ValueError("no plans given: pass at least one RoutingPlan")
    for i, p in enumerate(plans):
        if not isinstance(p, RoutingPlan):
            raise TypeError(f"plan {i} is a {type(p).__name__}, not a RoutingPlan "
                            "(build plans from specs with lm.probes.plan_for([spec], layer))")
        if p.mode == "random":
            raise ValueError(f"plan {i} draws a random expert per token position, which replay and route_plans "
                             "do not have; route it live (wb.edit) or with apply_plan(..., positions=)")
        if p.mode == "topk" and not 1 <= p.k <= num_experts:
            raise ValueError(f"plan {i}: k={p.k} must be between 1 and the number of experts ({num_experts})")
    return plans


def group_key(plan: RoutingPlan) -> tuple:
    """Plans with equal keys choose experts the same way and can be routed in one call."""
    return (plan.mode, plan.k, plan.top_p, plan.rank, plan.rank_weight, plan.forced, plan.activated,
            plan.deactivated, plan.offset_margin)


def _offset_reference(logits: torch.Tensor, rule: RoutingRule, on, off, margin) -> torch.Tensor:
    rows = [offset_scores_reference(row, rule, on, off, margin) for row in logits.float().tolist()]
    return torch.tensor(rows, dtype=torch.float32, device=logits.device).view(logits.shape)


def route_offsets(logits: torch.Tensor, rule: RoutingRule, plans, bias, route_fn, reference: bool = False
                  ) -> PlanDecisions | None:
    """Route plans some of which carry score offsets; None when none does.

    The plans are grouped by their offsets; each group's logits are rewritten once
    (:func:`~workbench.kernels.offsets.offset_scores`, or its plain-Python reference when
    ``reference``) and routed by ``route_fn(logits, rule, plans, bias)`` with the offsets taken off
    the plans, so every backend routes them by the same code as any other plan.
    """
    if not any(p.offsets for p in plans):
        return None
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plans):
        groups.setdefault((p.activated, p.deactivated, p.offset_margin), []).append(i)
    shift = _offset_reference if reference else offset_scores
    parts: dict[int, Decision] = {}
    for (on, off, margin), members in groups.items():
        rewritten = shift(logits, rule, on, off, margin) if on or off else logits
        plain = [replace(plans[i], activated=frozenset(), deactivated=frozenset()) for i in members]
        d = route_fn(rewritten, rule, plain, bias)
        for j, i in enumerate(members):
            parts[i] = d.decision(j)
    return stack([parts[i] for i in range(len(plans))])


def drop_emptied(d: Decision, emptied: torch.Tensor) -> Decision:
    """Empty the slots of experts marked in ``emptied [rows, E]`` (bool), row by row."""
    drop = emptied.gather(1, d.idx) & d.valid
    return empty_slots(d, drop)


def skip_rows(d: Decision, beta: torch.Tensor) -> Decision:
    """Lu et al.'s skipping with one threshold per row (``beta [rows]``; NaN = no skipping)."""
    drop = d.w < beta[:, None] * d.w[:, :1]
    drop[:, 0] = False
    drop &= ~torch.isnan(beta)[:, None]
    return empty_slots(d, drop)


def selection_local(rule: RoutingRule) -> bool:
    """Whether the rule's weights depend only on the selected experts (so blocking an expert that a
    token does not use leaves that token's routing unchanged): no expert groups, and sigmoid,
    top-k-then-normalise, or softmax followed by renormalisation without a selection bias (blocking
    rescales every probability, which a bias added to them would reorder)."""
    return rule.n_group == 1 and (rule.scoring in ("sigmoid", "sqrtsoftplus", "topk_softmax", "topk_sigmoid")
                                  or (rule.scoring == "softmax" and rule.renormalize and not rule.biased))


def _blocked_only(plans) -> bool:
    p = plans[0]
    return (p.mode == "topk" and not p.forced and all(not q.emptied and q.skip_beta is None for q in plans))


def _route_blocked(logits, rule, plans, bias) -> dict | None:
    """Plans that differ only in blocked experts, under a :func:`selection_local` rule.

    Under such a rule a token's routing depends only on which of its ``k + m`` best experts are
    blocked (``m`` = the most experts any plan blocks): its choice among allowed experts lies there.
    That pattern is a ``(k + m)``-bit code per (plan, token), computed with one small matmul. Rows
    whose own top-k is untouched keep the unedited routing; the distinct (token, code) pairs of the
    others are routed by the core's ``route`` on the token's ``k + m`` best experts and shared.

    Returns the sparse form of :class:`PlanDecisions` (None when the pattern is too wide to encode).
    """
    num_tokens, num_experts = logits.shape
    r, k, dev = len(plans), plans[0].k, logits.device
    width = min(num_experts, k + max(len(p.blocked) for p in plans))
    if width > 24:
        return None
    pairs = [(i, e) for i, p in enumerate(plans) for e in p.blocked]
    blocked = torch.zeros(r, num_experts, dtype=torch.bool, device=dev)
    if pairs:
        blocked[tuple(torch.tensor(pairs, device=dev).T)] = True
    choice, _ = scores(logits, rule, bias)
    order = torch.topk(choice, width, dim=-1).indices                        # [T, width]
    bits = torch.zeros(num_experts, num_tokens, dtype=torch.float32, device=dev)
    bits.scatter_(0, order.T, (2.0 ** torch.arange(width, device=dev, dtype=torch.float32))[:, None]
                  .expand(width, num_tokens).contiguous())
    code = (blocked.float() @ bits).long()                                   # [R, T], exact below 2**24
    plan_i, tok_i = (code & ((1 << k) - 1)).nonzero(as_tuple=True)
    keys, inverse = _distinct(tok_i * (1 << width) + code[plan_i, tok_i], num_tokens << width)
    row_tok = torch.cat([torch.arange(num_tokens, device=dev), keys >> width])
    row_code = torch.cat([torch.zeros(num_tokens, dtype=torch.long, device=dev), keys & ((1 << width) - 1)])
    allowed = (row_code[:, None] >> torch.arange(width, device=dev)) & 1 == 0
    sub_order = order[row_tok]
    sub_bias = None if bias is None else bias.float()[sub_order]
    d = route(logits.float()[row_tok].gather(1, sub_order), rule, k, sub_bias, allowed)
    rows = Decision(sub_order.gather(1, d.idx), d.w, d.valid)
    base = Decision(rows.idx[:num_tokens], rows.w[:num_tokens], rows.valid[:num_tokens])
    changed = Decision(rows.idx[num_tokens:], rows.w[num_tokens:], rows.valid[num_tokens:])
    return {"base": base, "rows": changed, "row_tok": keys >> width, "plan_i": plan_i, "tok_i": tok_i,
            "row_i": inverse, "num_plans": r}


def _distinct(keys: torch.Tensor, key_range: int):
    """``torch.unique(keys, return_inverse=True)``; by a presence table when the key range is small."""
    if key_range > 4 * keys.numel() + 4096:
        return torch.unique(keys, return_inverse=True)
    present = torch.zeros(key_range, dtype=torch.bool, device=keys.device)
    present[keys] = True
    slot = torch.cumsum(present, 0) - 1
    return present.nonzero().squeeze(1), slot[keys]


def _route_group(logits, rule, plans, bias) -> Decision:
    """Route ``len(plans)`` plans with the same :func:`group_key`; rows are plan-major."""
    num_tokens, num_experts = logits.shape
    r = len(plans)
    dev = logits.device
    if selection_local(rule) and _blocked_only(plans):
        sparse = _route_blocked(logits, rule, plans, bias)
        if sparse is not None:
            d = PlanDecisions(sparse=sparse)
            return Decision(d.idx, d.w, d.valid)
    rep = logits.float().repeat(r, 1)
    allowed = None
    if any(p.blocked for p in plans):
        allowed = torch.ones(r, num_experts, dtype=torch.bool, device=dev)
        for i, p in enumerate(plans):
            if p.blocked:
                allowed[i, sorted(p.blocked)] = False
        allowed = allowed.repeat_interleave(num_tokens, dim=0)
    first = plans[0]
    if first.mode == "topk":
        d = route(rep, rule, first.k, bias, allowed)
    elif first.mode == "top_p":
        d = route_top_p(rep, rule, float(first.top_p), allowed)
    elif first.mode == "rank":
        d = route_rank(rep, rule, int(first.rank), first.rank_weight, bias, allowed)
    else:
        raise ValueError(f"unknown plan mode {first.mode!r}")
    if first.forced:
        d = force(d, first.forced, num_experts)
    if any(p.emptied for p in plans):
        emptied = torch.zeros(r, num_experts, dtype=torch.bool, device=dev)
        for i, p in enumerate(plans):
            if p.emptied:
                emptied[i, sorted(p.emptied)] = True
        d = drop_emptied(d, emptied.repeat_interleave(num_tokens, dim=0))
    if any(p.skip_beta is not None for p in plans):
        beta = torch.tensor([float("nan") if p.skip_beta is None else float(p.skip_beta) for p in plans],
                            device=dev)
        d = skip_rows(d, beta.repeat_interleave(num_tokens))
    return Decision(d.idx.view(r, num_tokens, -1), d.w.view(r, num_tokens, -1), d.valid.view(r, num_tokens, -1))


def route_plans_torch(logits: torch.Tensor, rule: RoutingRule, plans, bias: torch.Tensor | None = None
                      ) -> PlanDecisions:
    """Torch path of :func:`route_plans`."""
    plans = check_plans(plans, logits.shape[1])
    shifted = route_offsets(logits, rule, plans, bias, route_plans_torch)
    if shifted is not None:
        return shifted
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plans):
        groups.setdefault(group_key(p), []).append(i)
    if len(groups) == 1 and selection_local(rule) and _blocked_only(plans):
        sparse = _route_blocked(logits, rule, plans, bias)
        if sparse is not None:
            return PlanDecisions(sparse=sparse)
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, logits.numel()))
    parts: dict[int, Decision] = {}
    for members in groups.values():
        for s in range(0, len(members), per_chunk):
            chunk = members[s:s + per_chunk]
            d = _route_group(logits, rule, [plans[i] for i in chunk], bias)
            for j, i in enumerate(chunk):
                parts[i] = Decision(d.idx[j], d.w[j], d.valid[j])
    return stack([parts[i] for i in range(len(plans))])


def route_plans(logits: torch.Tensor, rule: RoutingRule, plans, bias: torch.Tensor | None = None, *,
                backend: str | None = None) -> PlanDecisions:
    """Route ``[T, E]`` logits under each of ``R`` plans with the family rule.

    Args:
        logits: ``[T, E]`` router logits.
        rule: the family's :class:`~workbench.kernels.RoutingRule`.
        plans: ``R`` :class:`~workbench.kernels.RoutingPlan` (from ``lm.probes.plan_for``).
        bias: ``[E]`` selection bias or None.
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or None.

    Returns:
        :class:`PlanDecisions` with ``[R, T, k]`` tensors; plan ``r`` equals
        ``apply_plan(logits, rule, plans[r], bias)`` (padded with empty slots to the common ``k``).
    """
    from workbench.kernels.dispatch import resolve

    name, fn = resolve("route_plans", backend, logits.device)
    plans = check_plans(plans, logits.shape[1])
    shifted = route_offsets(logits, rule, plans, bias, fn, reference=name == "reference")
    return fn(logits, rule, plans, bias) if shifted is None else shifted
