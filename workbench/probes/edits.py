"""Routing edits: composable specs applied as a context manager around forward or generate.

Every edit recomputes the routing with the family's own rule (softmax or sigmoid, selection bias,
groups, renormalisation, scaling) from the router's logits. A dropped expert is never expressed
with an out-of-range id: its slot keeps a real id with weight 0.

Specs apply to all MoE layers unless given ``layers``; to every batch row unless given ``rows``
(self-contrast decoding runs row 0 with the default routing and row 1 edited). Several specs, and
nested ``edit`` blocks, compose in order (outer first).

Example:
    >>> import torch, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> ids = lm.tokenizer(["the quick brown fox"], return_tensors="pt").input_ids
    >>> with wb.edit(lm, wb.Mask({0: [0, 1, 2]})):
    ...     trace = wb.record(lm, ["the quick brown fox"], progress=False)
    >>> bool((trace.to_dataframe().query("layer == 0").expert >= 3).all())
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from workbench.kernels.routing import RoutingPlan

MASK_MODES = ("next_best", "empty")


def _layer_map(spec, value) -> dict[int, tuple]:
    if isinstance(value, Mapping):
        return {int(layer): tuple(v) if isinstance(v, Iterable) else (v,) for layer, v in value.items()}
    raise TypeError(f"{spec} expects a mapping {{layer: experts}}, got {type(value).__name__}")


@dataclass(frozen=True)
class Spec:
    """Base of all edit specs. ``layers`` None = every MoE layer; ``rows`` None = every batch row.

    A spec whose plan routes by token position (``mode="random"``) sets the class attribute
    ``needs_positions``; the hook manager then also reads each decoder layer's ``position_ids``.
    """

    needs_positions: ClassVar[bool] = False
    layers: tuple | None = field(default=None, kw_only=True)
    rows: tuple | None = field(default=None, kw_only=True)

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.rows is not None:
            object.__setattr__(self, "rows", tuple(int(x) for x in self.rows))

    def applies_to(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def update(self, plan: RoutingPlan, layer: int, lm) -> RoutingPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, lm) -> None:
        for layer in self.layers or ():
            if layer not in lm.moe_layers:
                raise ValueError(f"{type(self).__name__}: layer {layer} is not an MoE layer; "
                                 f"MoE layers of this model: {lm.moe_layers}")


def _check_experts(name: str, experts, lm) -> None:
    for e in experts:
        if not 0 <= int(e) < lm.num_experts:
            raise ValueError(f"{name}: expert {e} is out of range; this model has experts 0..{lm.num_experts - 1}")


@dataclass(frozen=True)
class Mask(Spec):
    """Switch experts off, per layer.

    Args:
        experts: ``{layer: [expert, ...]}`` (decoder-layer indices).
        mode: ``"next_best"`` (default): the expert's score is -inf before top-k, so the next-best
            expert takes the slot (Lu et al., SteerMoE). ``"empty"``: the slot stays empty and the
            remaining weights are rescaled to the token's original total.
    """

    experts: Mapping = field(default_factory=dict)
    mode: str = "next_best"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "experts", _layer_map("Mask", self.experts))
        if self.mode not in MASK_MODES:
            raise ValueError(f"Mask mode must be one of {MASK_MODES}, got {self.mode!r}")
        if self.layers is None:
            object.__setattr__(self, "layers", tuple(self.experts))

    def validate(self, lm) -> None:
        super().validate(lm)
        for experts in self.experts.values():
            _check_experts("Mask", experts, lm)

    def update(self, plan, layer, lm):
        experts = frozenset(int(e) for e in self.experts.get(layer, ()))
        if self.mode == "next_best":
            return replace(plan, blocked=plan.blocked | experts)
        return replace(plan, emptied=plan.emptied | experts)


@dataclass(frozen=True)
class Force(Spec):
    """Force experts into every token's selection, per layer.

    Args:
        experts: ``{layer: [expert, ...]}`` or ``{layer: {expert: weight}}``.
        weight: weight for experts given without one; None = the token's top-1 weight.
    """

    experts: Mapping = field(default_factory=dict)
    weight: float | None = None

    def __post_init__(self):
        super().__post_init__()
        norm = {}
        for layer, v in dict(self.experts).items():
            pairs = v.items() if isinstance(v, Mapping) else ((e, self.weight) for e in v)
            norm[int(layer)] = tuple((int(e), None if w is None else float(w)) for e, w in pairs)
        object.__setattr__(self, "experts", norm)
        if self.layers is None:
            object.__setattr__(self, "layers", tuple(norm))

    def validate(self, lm) -> None:
        super().validate(lm)
        for pairs in self.experts.values():
            _check_experts("Force", [e for e, _ in pairs], lm)
            if len(pairs) > lm.top_k:
                raise ValueError(f"Force: {len(pairs)} experts do not fit in k={lm.top_k} slots; "
                                 "raise k with TopK first")

    def update(self, plan, layer, lm):
        return replace(plan, forced=plan.forced + self.experts.get(layer, ()))


@dataclass(frozen=True)
class KeepRank(Spec):
    """Route each token to the single expert at 0-based ``rank`` of its router scores.

    ``KeepRank(2)`` is self-contrast decoding's weak routing for Mixtral: only the third-best expert,
    with weight 1.
    """

    rank: int = 0
    weight: float = 1.0

    def validate(self, lm) -> None:
        super().validate(lm)
        if not 0 <= self.rank < lm.num_experts:
            raise ValueError(f"KeepRank: rank {self.rank} out of range 0..{lm.num_experts - 1}")

    def update(self, plan, layer, lm):
        _single_mode(plan, "rank")
        return replace(plan, mode="rank", rank=int(self.rank), rank_weight=float(self.weight))


@dataclass(frozen=True)
class TopK(Spec):
    """Use ``k`` experts per token instead of the model's own k (the family rule renormalises)."""

    k: int = 1

    def validate(self, lm) -> None:
        super().validate(lm)
        if not 1 <= self.k <= lm.num_experts:
            raise ValueError(f"TopK: k={self.k} must be between 1 and {lm.num_experts}")

    def update(self, plan, layer, lm):
        return replace(plan, k=int(self.k))


@dataclass(frozen=True)
class TopP(Spec):
    """Top-p routing: keep experts until their probability mass first exceeds ``p`` (no renorm)."""

    p: float = 0.5

    def validate(self, lm) -> None:
        super().validate(lm)
        if not 0 < self.p <= 1:
            raise ValueError(f"TopP: p must be in (0, 1], got {self.p}")

    def update(self, plan, layer, lm):
        _single_mode(plan, "top_p")
        return replace(plan, mode="top_p", top_p=float(self.p))


@dataclass(frozen=True)
class Skip(Spec):
    """Lu et al.'s dynamic skipping: drop expert ``i >= 1`` when ``w_i < beta * w_1``; rescale.

    Args:
        beta: one threshold for every layer, or ``{layer: beta}``.
    """

    beta: float | Mapping = 0.5

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.beta, Mapping):
            object.__setattr__(self, "beta", {int(k): float(v) for k, v in self.beta.items()})
            if self.layers is None:
                object.__setattr__(self, "layers", tuple(self.beta))

    def validate(self, lm) -> None:
        super().validate(lm)
        values = self.beta.values() if isinstance(self.beta, Mapping) else [self.beta]
        if any(not 0 <= b <= 1 for b in values):
            raise ValueError("Skip: beta must be between 0 and 1")

    def update(self, plan, layer, lm):
        beta = self.beta[layer] if isinstance(self.beta, Mapping) else self.beta
        return replace(plan, skip_beta=float(beta))


def _single_mode(plan: RoutingPlan, mode: str) -> None:
    if plan.mode != "topk" and plan.mode != mode:
        raise ValueError(f"conflicting routing edits: {plan.mode!r} and {mode!r} both choose the experts")


class edit:
    """Apply routing edits to a model inside a ``with`` block.

    Hooks are installed on entry and removed on exit, also when the body raises; parameters are
    never modified, so the model afterwards is exactly the model before.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        *specs: :class:`Mask`, :class:`Force`, :class:`KeepRank`, :class:`TopK`, :class:`TopP`,
            :class:`Skip` (any number; applied in order).
    """

    def __init__(self, lm, *specs: Spec):
        if not specs:
            raise ValueError("edit() needs at least one spec, e.g. wb.Mask({layer: [expert]})")
        for spec in specs:
            if not isinstance(spec, Spec):
                raise TypeError(f"{spec!r} is not an edit spec (Mask, Force, KeepRank, TopK, TopP, Skip)")
            spec.validate(lm)
            named = [layer for layer in spec.layers or () if layer in lm.hash_layers]
            if named:
                raise ValueError(
                    f"{type(spec).__name__}: layer(s) {named} route by token id (hash routing: the expert is a "
                    "fixed function of the token, not of router scores), so there is no routing rule to edit. "
                    f"Name other layers; specs without layers= apply to the learned layers only: "
                    f"{[x for x in lm.moe_layers if x not in lm.hash_layers]}")
        self.lm = lm
        self.specs = tuple(specs)
        for layer in lm.moe_layers:  # surface conflicting specs now, not in the middle of a forward
            lm.probes.plan_for([s for s in self.specs if s.applies_to(layer)], layer)

    def __enter__(self):
        self.lm.probes.push_edit(self)
        return self

    def __exit__(self, *exc) -> bool:
        self.lm.probes.pop_edit(self)
        return False

    def __repr__(self) -> str:
        return f"edit({', '.join(map(repr, self.specs))})"
