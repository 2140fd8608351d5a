"""Triton path of :func:`~workbench.kernels.plans.route_plans`: every family rule, many plans at once.

One program routes a block of tokens under one plan: it loads the tokens' logits ``[BT, E]``, masks
the plan's blocked experts, computes the family's scores (softmax, sigmoid plus selection bias, raw
logits, or PhiMoE's sparsemixer), limits the choice to the best expert groups (DeepSeek), selects
``k`` experts by repeated arg-max (ties to the lowest id, like the reference), turns the picked
scores into weights (softmax over the kept logits, sigmoid, p-norm renormalisation, scaling), then
empties the plan's emptied experts and applies its skip threshold, rescaling to the old total.

Plans in ``top_p`` mode or with forced experts go to the torch path (their slot count depends on
the data, or they edit slots after routing); everything else runs here. Kernels are defined on first
use (see :mod:`~workbench.kernels.triton_replay` on the interpreter).

Example:
    >>> from workbench.kernels.plans import route_plans
    >>> # route_plans(logits_cuda, rule, plans, backend="triton")  # needs CUDA (or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import functools
import math

import torch

from workbench.kernels.plans import PlanDecisions, check_plans, group_key, route_plans_torch, stack
from workbench.kernels.routing import Decision
from workbench.kernels.rules import SCORINGS, RoutingRule


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _route(logits_ptr, sl0, sl1, bias_ptr, blocked_ptr, emptied_ptr, beta_ptr,
               idx_ptr, w_ptr, valid_ptr, T, E, gsize, rank, rank_weight,
               renorm_p, renorm_eps, scaling, jitter_eps,
               SCORING: tl.constexpr, MODE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
               RENORM: tl.constexpr, P_ONE: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
               TOP2: tl.constexpr, NGP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BLOCKED: tl.constexpr,
               HAS_EMPTIED: tl.constexpr, HAS_SKIP: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr):
        NEG = float("-inf")
        BIG = 1 << 30
        r = tl.program_id(1)
        rt = tl.program_id(0) * BT + tl.arange(0, BT)
        mt = rt < T
        re = tl.arange(0, BE)
        me = re < E
        z = tl.load(logits_ptr + rt[:, None] * sl0 + re[None, :] * sl1, mask=mt[:, None] & me[None, :],
                    other=NEG).to(tl.float32)
        allowed = me[None, :] & (rt[:, None] >= 0)
        if HAS_BLOCKED:
            blk = tl.load(blocked_ptr + r * E + re, mask=me, other=1)
            allowed = allowed & (blk == 0)[None, :]
        masked = tl.where(allowed, z, NEG)
        # scores: `choice` ranks experts, `value` is what a chosen expert's weight comes from
        if SCORING == 0:  # softmax over allowed experts
            mx = tl.max(masked, axis=1)
            mx = tl.where(mx == NEG, 0.0, mx)
            ex = tl.where(allowed, tl.exp(masked - mx[:, None]), 0.0)
            tot = tl.sum(ex, axis=1)
            value = ex / tl.where(tot > 0, tot, 1.0)[:, None]
            choice = tl.where(allowed, value, NEG)
        elif SCORING == 1:  # sigmoid (+ selection bias for choosing only)
            value = tl.sigmoid(z)
            choice = value
            if HAS_BIAS:
                choice = choice + tl.load(bias_ptr + re, mask=me, other=0.0).to(tl.float32)[None, :]
            choice = tl.where(allowed, choice, NEG)
        else:  # top-k of raw logits (topk_softmax, topk_sigmoid); sparsemixer ranks by logits too
            value = z
            choice = masked
        in_group = me[None, :] & (rt[:, None] >= 0)
        if MODE == 0 and N_GROUP > 1 and SCORING != 4:
            gcol = tl.arange(0, NGP)
            grp = re // gsize
            gscore = tl.full((BT, NGP), NEG, tl.float32)
            for g in tl.static_range(N_GROUP):
                cg = tl.where(((grp == g) & me)[None, :], choice, NEG)
                m1 = tl.max(cg, axis=1)
                if TOP2:
                    a1 = tl.min(tl.where(cg == m1[:, None], re[None, :], BIG), axis=1)
                    m2 = tl.max(tl.where(re[None, :] == a1[:, None], NEG, cg), axis=1)
                    m1 = m1 + m2
                gscore = tl.where(gcol[None, :] == g, m1[:, None], gscore)
            kept = (gcol[None, :] < 0) & (rt[:, None] >= 0)
            for j in tl.static_range(TOPK_GROUP):
                open_g = (~kept) & (gcol[None, :] < N_GROUP)
                best = tl.max(tl.where(open_g, gscore, NEG), axis=1)
                ga = tl.min(tl.where(open_g & (gscore == best[:, None]), gcol[None, :], BIG), axis=1)
                kept = kept | (gcol[None, :] == ga[:, None])
            in_group = (re[None, :] < 0) & (rt[:, None] >= 0)
            for g in tl.static_range(N_GROUP):
                kg = tl.sum(tl.where(gcol[None, :] == g, kept.to(tl.int32), 0), axis=1) > 0
                in_group = in_group | (((grp == g) & me)[None, :] & kg[:, None])
            if SCORING == 0:  # DeepSeek-V2 fills dropped groups with 0, sigmoid routers with -inf
                choice = tl.where(me[None, :] & ~in_group, 0.0, choice)
            else:
                choice = tl.where(me[None, :] & ~in_group, NEG, choice)
        col = tl.arange(0, KP)
        idx_t = tl.zeros((BT, KP), dtype=tl.int32)
        w_t = tl.zeros((BT, KP), dtype=tl.float32)
        ok_t = (col[None, :] < 0) & (rt[:, None] >= 0)
        taken = (re[None, :] < 0) & (rt[:, None] >= 0)
        if MODE == 1:  # only the expert at `rank` of the selection score
            best = tl.full((BT,), NEG, tl.float32)
            arg = tl.zeros((BT,), dtype=tl.int32)
            for j in range(rank + 1):
                open_e = (~taken) & me[None, :]
                best = tl.max(tl.where(open_e, choice, NEG), axis=1)
                arg = tl.min(tl.where(open_e & (choice == best[:, None]), re[None, :], BIG), axis=1)
                taken = taken | (re[None, :] == arg[:, None])
            ok = best > NEG
            idx_t = tl.where(col[None, :] == 0, arg[:, None], idx_t)
            w_t = tl.where((col[None, :] == 0) & ok[:, None], rank_weight, w_t)
            ok_t = ok_t | ((col[None, :] == 0) & ok[:, None])
        elif SCORING == 4:  # sparsemixer: best expert, weighted against the experts near it; repeat
            for j in tl.static_range(K):
                open_e = (~taken) & me[None, :]
                thr = tl.max(tl.where(open_e, masked, NEG), axis=1)
                arg = tl.min(tl.where(open_e & (masked == thr[:, None]), re[None, :], BIG), axis=1)
                factor = tl.maximum(tl.abs(z), thr[:, None])
                far = ((thr[:, None] - z) / factor) > 2 * jitter_eps
                gm = tl.where(far | taken, NEG, masked)
                gmx = tl.max(gm, axis=1)
                gmx = tl.where(gmx == NEG, 0.0, gmx)
                gex = tl.where(gm > NEG, tl.exp(gm - gmx[:, None]), 0.0)
                gsum = tl.sum(gex, axis=1)
                pick = re[None, :] == arg[:, None]
                wj = tl.sum(tl.where(pick, gex, 0.0), axis=1) / tl.where(gsum > 0, gsum, 1.0)
                ok = thr > NEG
                idx_t = tl.where(col[None, :] == j, arg[:, None], idx_t)
                w_t = tl.where((col[None, :] == j) & ok[:, None], wj[:, None], w_t)
                ok_t = ok_t | ((col[None, :] == j) & ok[:, None])
                taken = taken | pick
        else:
            for j in tl.static_range(K):
                open_e = (~taken) & me[None, :]
                best = tl.max(tl.where(open_e, choice, NEG), axis=1)
                arg = tl.min(tl.where(open_e & (choice == best[:, None]), re[None, :], BIG), axis=1)
                pick = re[None, :] == arg[:, None]
                ok = (best > NEG) & (tl.sum(tl.where(pick & allowed & in_group, 1, 0), axis=1) > 0)
                v = tl.sum(tl.where(pick, value, 0.0), axis=1)
                idx_t = tl.where(col[None, :] == j, arg[:, None], idx_t)
                w_t = tl.where(col[None, :] == j, v[:, None], w_t)
                ok_t = ok_t | ((col[None, :] == j) & ok[:, None])
                taken = taken | pick
            if SCORING == 2:  # softmax over the kept logits
                kmx = tl.max(tl.where(ok_t, w_t, NEG), axis=1)
                kmx = tl.where(kmx == NEG, 0.0, kmx)
                kex = tl.where(ok_t, tl.exp(w_t - kmx[:, None]), 0.0)
                ksum = tl.sum(kex, axis=1)
                w_t = kex / tl.where(ksum > 0, ksum, 1.0)[:, None]
            elif SCORING == 3:
                w_t = tl.sigmoid(w_t)
            w_t = tl.where(ok_t & (w_t == w_t), w_t, 0.0)
            if RENORM:
                if P_ONE:
                    den = tl.sum(w_t, axis=1)
                else:
                    pw = tl.where(w_t != 0, tl.exp(renorm_p * tl.log(tl.abs(w_t))), 0.0)
                    ps = tl.sum(pw, axis=1)
                    den = tl.where(ps > 0, tl.exp(tl.log(ps) / renorm_p), 0.0)
                den = den + renorm_eps
                w_t = tl.where(den[:, None] > 0, w_t / tl.where(den > 0, den, 1.0)[:, None], w_t)
            w_t = w_t * scaling
        if HAS_EMPTIED:
            emp = tl.load(emptied_ptr + r * E + idx_t, mask=mt[:, None] & (col[None, :] < K), other=0)
            drop = (emp != 0) & ok_t
            old = tl.sum(w_t, axis=1)
            ok_t = ok_t & ~drop
            w_t = tl.where(ok_t, w_t, 0.0)
            new = tl.sum(w_t, axis=1)
            w_t = w_t * tl.where(new > 0, old / tl.where(new > 0, new, 1.0), 0.0)[:, None]
        if HAS_SKIP:
            beta = tl.load(beta_ptr + r)
            w0 = tl.sum(tl.where(col[None, :] == 0, w_t, 0.0), axis=1)
            drop = (w_t < beta * w0[:, None]) & (col[None, :] >= 1)
            old = tl.sum(w_t, axis=1)
            ok_t = ok_t & ~drop
            w_t = tl.where(ok_t, w_t, 0.0)
            new = tl.sum(w_t, axis=1)
            w_t = w_t * tl.where(new > 0, old / tl.where(new > 0, new, 1.0), 0.0)[:, None]
        out = r * T * K + rt[:, None] * K + col[None, :]
        smask = mt[:, None] & (col[None, :] < K)
        tl.store(idx_ptr + out, idx_t.to(tl.int64), mask=smask)
        tl.store(w_ptr + out, w_t, mask=smask)
        tl.store(valid_ptr + out, ok_t.to(tl.int8), mask=smask)

    return _route


#: the scorings the kernel implements (selection bias on sigmoid only); other rules route with torch
KERNEL_SCORINGS = SCORINGS[:5]


def _pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(n, 2))))


def triton_supports(plan) -> bool:
    """Whether the Triton routing kernel handles ``plan`` (else the torch path routes it)."""
    return plan.mode in ("topk", "rank") and not plan.forced


def _launch(logits, rule: RoutingRule, plans, bias) -> Decision:
    num_tokens, num_experts = logits.shape
    dev = logits.device
    r = len(plans)
    first = plans[0]
    k = 1 if first.mode == "rank" else first.k
    blocked = torch.zeros(r, num_experts, dtype=torch.int8, device=dev)
    emptied = torch.zeros(r, num_experts, dtype=torch.int8, device=dev)
    for i, p in enumerate(plans):
        if p.blocked:
            blocked[i, sorted(p.blocked)] = 1
        if p.emptied:
            emptied[i, sorted(p.emptied)] = 1
    beta = torch.tensor([float("nan") if p.skip_beta is None else float(p.skip_beta) for p in plans],
                        dtype=torch.float32, device=dev)
    idx = torch.empty(r, num_tokens, k, dtype=torch.long, device=dev)
    w = torch.empty(r, num_tokens, k, dtype=torch.float32, device=dev)
    valid = torch.empty(r, num_tokens, k, dtype=torch.int8, device=dev)
    be = _pow2(num_experts)
    bt = max(2, min(64, 4096 // be))
    lg = logits.float()
    b = bias.float().contiguous() if bias is not None else torch.zeros(1, device=dev)
    _kernel()[(-(-num_tokens // bt), r)](
        lg, lg.stride(0), lg.stride(1), b, blocked, emptied, beta, idx, w, valid, num_tokens, num_experts,
        max(1, num_experts // max(1, rule.n_group)), int(first.rank or 0), float(first.rank_weight),
        float(rule.renorm_p), float(rule.renorm_eps), float(rule.scaling), float(rule.jitter_eps),
        SCORING=SCORINGS.index(rule.scoring), MODE=1 if first.mode == "rank" else 0, K=k, KP=_pow2(k),
        RENORM=bool(rule.renormalize), P_ONE=rule.renorm_p == 1.0, N_GROUP=int(rule.n_group),
        TOPK_GROUP=int(rule.topk_group), TOP2=rule.group_score == "top2sum", NGP=_pow2(rule.n_group),
        HAS_BIAS=bias is not None, HAS_BLOCKED=any(p.blocked for p in plans),
        HAS_EMPTIED=any(p.emptied for p in plans), HAS_SKIP=any(p.skip_beta is not None for p in plans),
        BT=bt, BE=be)
    return Decision(idx, w, valid.bool())


def route_plans_triton(logits: torch.Tensor, rule: RoutingRule, plans, bias: torch.Tensor | None = None
                       ) -> PlanDecisions:
    """Triton path of :func:`~workbench.kernels.plans.route_plans`."""
    plans = check_plans(plans, logits.shape[1])
    if rule.scoring not in KERNEL_SCORINGS or (bias is not None and rule.scoring != "sigmoid"):
        return route_plans_torch(logits, rule, plans, bias)
    parts: dict[int, Decision] = {}
    rest = [i for i, p in enumerate(plans) if not triton_supports(p)]
    if rest:
        d = route_plans_torch(logits, rule, [plans[i] for i in rest], bias)
        for j, i in enumerate(rest):
            parts[i] = d.decision(j)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plans):
        if triton_supports(p):
            groups.setdefault(group_key(p), []).append(i)
    for members in groups.values():
        d = _launch(logits, rule, [plans[i] for i in members], bias)
        for j, i in enumerate(members):
            parts[i] = Decision(d.idx[j], d.w[j], d.valid[j])
    return stack([parts[i] for i in range(len(plans))])
