"""The obvious implementation of routing: one token at a time, plain Python over lists.

Slow on purpose. :mod:`workbench.kernels.routing` must agree with it (tests compare them on random
logits for every rule and plan). Returns per token a list of ``(expert, weight, valid)`` in rank
order.
"""

from __future__ import annotations

import math

from workbench.kernels.routing import RoutingPlan
from workbench.kernels.rules import RoutingRule

Slot = tuple[int, float, bool]


def _softmax(xs: list[float]) -> list[float]:
    finite = [x for x in xs if x != -math.inf]
    if not finite:
        return [0.0] * len(xs)
    m = max(finite)
    ex = [math.exp(x - m) if x != -math.inf else 0.0 for x in xs]
    total = sum(ex)
    return [e / total for e in ex]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x != -math.inf else 0.0


def _ranked(choice: list[float]) -> list[int]:
    return sorted(range(len(choice)), key=lambda e: (-choice[e], e))


def _group_limit(choice: list[float], rule: RoutingRule, biased: bool = False) -> list[float]:
    size = len(choice) // rule.n_group
    groups = [choice[g * size:(g + 1) * size] for g in range(rule.n_group)]
    if rule.group_score == "max":
        gs = [max(g) for g in groups]
    else:
        gs = [sum(sorted(g, reverse=True)[:2]) for g in groups]
    best = set(_ranked(gs)[: rule.topk_group])
    fill = 0.0 if rule.scoring == "softmax" and not biased else -math.inf
    return [c if e // size in best else fill for e, c in enumerate(choice)], best


def token_scores(logits, rule: RoutingRule, bias=None, blocked=frozenset()):
    """Per-expert ``(choice, value)`` lists for one token (see ``routing.scores``)."""
    z = [float(x) if e not in blocked else -math.inf for e, x in enumerate(logits)]
    if rule.scoring == "softmax":
        value = _softmax(z)
    elif rule.scoring == "sigmoid":
        value = [_sigmoid(float(x)) for x in logits]
    elif rule.scoring == "sqrtsoftplus":
        value = [math.sqrt(x if x > 30 else math.log1p(math.exp(x))) for x in map(float, logits)]
    else:
        value = [float(x) for x in logits]
    b = [0.0] * len(z) if bias is None else [float(x) for x in bias]
    choice = [value[e] + b[e] if e not in blocked else -math.inf for e in range(len(z))]
    return choice, value


def _sparsemixer(logits, k, rule, blocked) -> list[Slot]:
    z = [float(x) for x in logits]
    masked = [x if e not in blocked else -math.inf for e, x in enumerate(z)]
    slots = []
    for _ in range(k):
        sel = _ranked(masked)[0]
        thr = masked[sel]
        if thr == -math.inf:
            slots.append((sel, 0.0, False))
            continue
        far = [((thr - x) / max(abs(x), thr)) > 2 * rule.jitter_eps for x in z]
        gates = _softmax([-math.inf if far[e] else masked[e] for e in range(len(z))])
        slots.append((sel, gates[sel], True))
        masked[sel] = -math.inf
    return slots


def route_token(logits, rule: RoutingRule, k: int, bias=None, blocked=frozenset()) -> list[Slot]:
    """The family rule's top-k for one token."""
    if rule.scoring == "sparsemixer":
        return _sparsemixer(logits, k, rule, blocked)
    choice, value = token_scores(logits, rule, bias, blocked)
    size = len(choice) // rule.n_group
    best = set(range(rule.n_group))
    if rule.n_group > 1:
        choice, best = _group_limit(choice, rule, bias is not None)
    chosen = _ranked(choice)[:k]
    valid = [choice[e] != -math.inf and e not in blocked and e // size in best for e in chosen]
    if rule.scoring == "topk_softmax":
        w = _softmax([value[e] if ok else -math.inf for e, ok in zip(chosen, valid)])
    elif rule.scoring == "topk_sigmoid":
        w = [_sigmoid(value[e]) for e in chosen]
    else:
        w = [value[e] for e in chosen]
    w = [x if ok else 0.0 for x, ok in zip(w, valid)]
    if rule.renormalize:
        denom = sum(abs(x) ** rule.renorm_p for x in w) ** (1.0 / rule.renorm_p) + rule.renorm_eps
        w = [x / denom for x in w] if denom > 0 else w
    w = [x * rule.scaling for x in w]
    return list(zip(chosen, w, valid))


def _rescale(slots: list[Slot], old_total: float) -> list[Slot]:
    total = sum(w for _, w, ok in slots if ok)
    factor = old_total / total if total > 0 else 0.0
    return [(e, w * factor if ok else 0.0, ok) for e, w, ok in slots]


def _mix31(x: int) -> int:
    mask = (1 << 31) - 1
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
    return x ^ (x >> 16)


def random_expert(seed: int, position: int, num_experts: int, blocked=frozenset()) -> int:
    """The expert ``routing.random_experts`` draws for one position (plain integer arithmetic)."""
    mask = (1 << 31) - 1
    candidates = [e for e in range(num_experts) if e not in blocked]
    return candidates[_mix31((_mix31(position & mask) + (seed & mask)) & mask) % len(candidates)]


def plan_token(logits, rule: RoutingRule, plan: RoutingPlan, bias=None, position: int | None = None) -> list[Slot]:
    """One token routed under ``plan``: the same semantics as ``routing.apply_plan``
    (``position`` is the token's position, needed by ``mode="random"`` only)."""
    blocked = frozenset(plan.blocked)
    if plan.mode == "random":
        if position is None:
            raise ValueError("a random-expert plan routes by token position: pass position=")
        slots = [(random_expert(int(plan.seed or 0), int(position), len(logits), blocked), plan.rank_weight, True)]
    elif plan.mode == "topk":
        slots = route_token(logits, rule, plan.k, bias, blocked)
    elif plan.mode == "top_p":
        z = [float(x) if e not in blocked else -math.inf for e, x in enumerate(logits)]
        if rule.scoring in ("sigmoid", "sqrtsoftplus", "probabilities"):
            s = [token_scores([x], rule)[1][0] if x != -math.inf else 0.0 for x in z]
            s = [max(x, 0.0) for x in s]
            probs = [x / max(sum(s), 1e-30) for x in s]
        else:
            probs = _softmax(z)
        slots, mass = [], 0.0
        for e in _ranked(probs):
            if mass >= plan.top_p or probs[e] <= 0:
                break
            slots.append((e, probs[e] * rule.scaling, True))
            mass += probs[e]
    else:
        if rule.scoring == "sparsemixer":
            choice = [float(x) if e not in blocked else -math.inf for e, x in enumerate(logits)]
        else:
            choice, _ = token_scores(logits, rule, bias, blocked)
        e = _ranked(choice)[plan.rank]
        ok = choice[e] != -math.inf
        slots = [(e, plan.rank_weight if ok else 0.0, ok)]
    for expert, weight in plan.forced:
        top1 = slots[0][1]
        where = [i for i, (e, _, ok) in enumerate(slots) if e == expert and ok]
        pinned = {i for i, (e, _, ok) in enumerate(slots) if ok and any(e == f for f, _ in plan.forced)}
        if where:
            i = where[0]
            new_w = slots[i][1] if weight is None else weight
        else:
            empty = [i for i, (_, _, ok) in enumerate(slots) if not ok and i not in pinned]
            free = [i for i in range(len(slots)) if i not in pinned]
            i = (empty or free)[-1]
            new_w = top1 if weight is None else weight
        slots[i] = (expert, float(new_w), True)
    if plan.forced:
        slots = sorted(slots, key=lambda s: -s[1] if s[2] else math.inf)
    if plan.emptied:
        old = sum(w for _, w, ok in slots if ok)
        slots = _rescale([(e, w, ok and e not in plan.emptied) for e, w, ok in slots], old)
    if plan.skip_beta is not None:
        old = sum(w for _, w, ok in slots if ok)
        w0 = slots[0][1]
        slots = _rescale([(e, w, ok and (i == 0 or w >= plan.skip_beta * w0))
                          for i, (e, w, ok) in enumerate(slots)], old)
    return slots
