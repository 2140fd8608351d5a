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

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from workbench.kernels.routing import RoutingPlan

MASK_MODES = ("next_best", "empty")


def as_int(value, what: str) -> int:
    """``value`` as an int, or a TypeError naming ``what`` (strings, floats and bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_number(value, what: str) -> float:
    """``value`` as a finite float, or an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def _layer_map(spec, value) -> dict[int, tuple]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{spec} expects a mapping {{layer: experts}}, got {type(value).__name__}")
    out = {}
    for layer, experts in value.items():
        layer = as_int(layer, f"{spec}: layer {layer!r}")
        if isinstance(experts, (str, bytes)) or not isinstance(experts, Iterable):
            experts = (experts,)
        out[layer] = tuple(as_int(e, f"{spec}: expert {e!r} of layer {layer}") for e in experts)
    return out


def _check_layers_match(spec, given, implied) -> None:
    if given is not None and set(given) != set(implied):
        raise ValueError(f"{spec}: layers={list(given)} does not match the layers it names {sorted(implied)}; "
                         "leave layers= out (it follows from the mapping) or make them the same")


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
        name = type(self).__name__
        if self.layers is not None:
            layers = (self.layers,) if not isinstance(self.layers, Iterable) or isinstance(self.layers, str) \
                else self.layers
            object.__setattr__(self, "layers", tuple(as_int(x, f"{name}: layer {x!r}") for x in layers))
        if self.rows is not None:
            rows = (self.rows,) if not isinstance(self.rows, Iterable) or isinstance(self.rows, str) else self.rows
            rows = tuple(as_int(x, f"{name}: row {x!r}") for x in rows)
            if any(r < 0 for r in rows):
                raise ValueError(f"{name}: rows must be batch-row indices >= 0, got {list(rows)}")
            object.__setattr__(self, "rows", rows)

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
        _check_layers_match("Mask", self.layers, self.experts)
        if self.layers is None:
            object.__setattr__(self, "layers", tuple(self.experts))

    def validate(self, lm) -> None:
        super().validate(lm)
        for layer, experts in self.experts.items():
            _check_experts("Mask", experts, lm)
            left = lm.num_experts - len(set(experts))
            if left == 0:  # a legitimate ablation (the layer's routed experts contribute nothing), never silent
                warnings.warn(f"Mask: all {lm.num_experts} experts of layer {layer} are masked: every slot is "
                              "empty and its routed experts contribute nothing", stacklevel=4)
            elif left < lm.top_k:
                warnings.warn(f"Mask: only {left} experts of layer {layer} are left for k={lm.top_k} slots; "
                              f"{lm.top_k - left} slot(s) of every token stay empty", stacklevel=4)

    def update(self, plan, layer, lm):
        experts = frozenset(int(e) for e in self.experts.get(layer, ()))
        if self.mode == "next_best":
            return replace(plan, blocked=plan.blocked | experts)
        return replace(plan, emptied=plan.emptied | experts)


@dataclass(frozen=True)
class Force(Spec):
    """Force experts into every token's selection, per layer: *force into a slot, no renormalisation*.

    The forced expert replaces the token's lowest-ranked slot with a fixed weight (``weight``, or the
    token's top-1 weight); the other weights are left as they are, so the token's weights no longer
    sum to what the family's rule gives (e.g. about 1.3 instead of 1 for a renormalising family).
    :class:`ForceSlot` is the same spec under the name that says so; :class:`Offset` is the default
    "on" mechanism of :mod:`workbench.steering` (SteerMoE's score offsets, weights from the family's
    own normalisation).

    Args:
        experts: ``{layer: [expert, ...]}`` or ``{layer: {expert: weight}}``.
        weight: weight for experts given without one; None = the token's top-1 weight.
    """

    experts: Mapping = field(default_factory=dict)
    weight: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.experts, Mapping):
            raise TypeError(f"Force expects a mapping {{layer: experts}}, got {type(self.experts).__name__}")
        norm = {}
        for layer, v in dict(self.experts).items():
            layer = as_int(layer, f"Force: layer {layer!r}")
            if isinstance(v, (str, bytes)) or not isinstance(v, (Iterable, Mapping)):
                v = (v,)
            pairs = v.items() if isinstance(v, Mapping) else ((e, self.weight) for e in v)
            norm[layer] = tuple((as_int(e, f"Force: expert {e!r} of layer {layer}"),
                                 None if w is None else _weight(w, f"Force: weight of expert {e} at layer {layer}"))
                                for e, w in pairs)
        object.__setattr__(self, "experts", norm)
        _check_layers_match("Force", self.layers, norm)
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
class ForceSlot(Force):
    """:class:`Force` under its descriptive name: force experts into a slot, no renormalisation.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
        >>> with wb.edit(lm, wb.ForceSlot({0: [5]}, weight=0.25)):
        ...     trace = wb.record(lm, ["hello there"], progress=False)
        >>> bool((trace.topk_idx[0] == 5).any(axis=-1).all())
        True
    """


def _offset_map(value, side: str) -> dict[int, tuple]:
    return _layer_map(f"Offset {side}=", value) if value else {}


@dataclass(frozen=True)
class Offset(Spec):
    """Switch experts on and off by score offsets (SteerMoE, Fayyaz et al. 2025), in one edit.

    For every token of a layer, the router's scores become log-probabilities; each expert in ``on``
    gets the token's largest + ``margin`` (it becomes the token's best expert), each expert in
    ``off`` the token's smallest - ``margin`` (chosen only when fewer than ``k`` others are left);
    then the family's own rule routes them, so the weights come out of its normalisation
    (softmax -> top-k -> renormalise for Qwen-MoE and Mixtral: they sum to 1). Sigmoid families are
    offset on their logits and keep their whole rule (selection bias, groups). See
    :mod:`workbench.kernels.offsets` for the maths and the reference code it follows.

    Args:
        on: ``{layer: [expert, ...]}`` to activate (at most ``k`` per layer).
        off: ``{layer: [expert, ...]}`` to deactivate.
        margin: how far beyond the token's extreme scores (SteerMoE: 0.01).

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
        >>> with wb.edit(lm, wb.Offset(on={0: [5]}, off={0: [1, 2]})):
        ...     trace = wb.record(lm, ["hello there"], progress=False)
        >>> bool((trace.topk_idx[0] == 5).any(axis=-1).all()), bool((trace.topk_idx[0] == 1).any())
        (True, False)
        >>> [round(float(x), 4) for x in trace.topk_w[0].sum(axis=-1)][:3]  # renormalised, unlike Force
        [1.0, 1.0, 1.0]
    """

    on: Mapping = field(default_factory=dict)
    off: Mapping = field(default_factory=dict)
    margin: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        on, off = _offset_map(self.on, "on"), _offset_map(self.off, "off")
        if not on and not off:
            raise ValueError("Offset needs experts to switch: on={layer: [expert]} and/or off={layer: [expert]}")
        for layer in sorted(set(on) & set(off)):
            both = sorted(set(on[layer]) & set(off[layer]))
            if both:
                raise ValueError(f"Offset: experts {both} of layer {layer} are in both on= and off=; "
                                 "give each expert one side")
        object.__setattr__(self, "on", on)
        object.__setattr__(self, "off", off)
        object.__setattr__(self, "margin", as_number(self.margin, "Offset: margin"))
        if self.margin < 0:
            raise ValueError(f"Offset: margin must be >= 0, got {self.margin}")
        implied = sorted(set(on) | set(off))
        _check_layers_match("Offset", self.layers, implied)
        if self.layers is None:
            object.__setattr__(self, "layers", tuple(implied))

    def validate(self, lm) -> None:
        super().validate(lm)
        for layer, experts in self.on.items():
            _check_experts("Offset", experts, lm)
            if len(set(experts)) > lm.top_k:
                raise ValueError(f"Offset: {len(set(experts))} experts to activate at layer {layer} do not fit "
                                 f"in k={lm.top_k} slots; keep the best-ranked "
                                 f"(workbench.steering.fit_to_k(experts, {lm.top_k}))")
        for layer, experts in self.off.items():
            _check_experts("Offset", experts, lm)
            left = lm.num_experts - len(set(experts))
            if left < lm.top_k:
                warnings.warn(f"Offset: only {left} experts of layer {layer} are not deactivated for k={lm.top_k} "
                              "slots; deactivated experts fill the rest", stacklevel=4)

    def update(self, plan, layer, lm):
        on = frozenset(int(e) for e in self.on.get(layer, ()))
        off = frozenset(int(e) for e in self.off.get(layer, ()))
        if not on and not off:
            return plan
        if plan.offsets and plan.offset_margin != self.margin:
            raise ValueError(f"conflicting Offset margins at layer {layer}: {plan.offset_margin} and {self.margin}")
        on, off = plan.activated | on, plan.deactivated | off
        if on & off:
            raise ValueError(f"conflicting Offset edits at layer {layer}: experts {sorted(on & off)} are "
                             "activated by one and deactivated by another")
        if len(on) > lm.top_k:
            raise ValueError(f"Offset edits activate {len(on)} experts at layer {layer}, more than k={lm.top_k}")
        return replace(plan, activated=on, deactivated=off, offset_margin=self.margin)


@dataclass(frozen=True)
class KeepRank(Spec):
    """Route each token to the single expert at 0-based ``rank`` of its router scores.

    ``KeepRank(2)`` is self-contrast decoding's weak routing for Mixtral: only the third-best expert,
    with weight 1.
    """

    rank: int = 0
    weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "rank", as_int(self.rank, "KeepRank: rank"))
        object.__setattr__(self, "weight", _weight(self.weight, "KeepRank: weight"))

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

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "k", as_int(self.k, "TopK: k"))
        if self.k < 1:
            raise ValueError(f"TopK: k must be a positive integer, got {self.k}")

    def validate(self, lm) -> None:
        super().validate(lm)
        if not 1 <= self.k <= lm.num_experts:
            raise ValueError(f"TopK: k={self.k} must be between 1 and {lm.num_experts}")
        rule = lm.rule
        if rule.n_group > 1:
            reachable = rule.topk_group * (lm.num_experts // rule.n_group)
            if self.k > reachable:
                raise ValueError(f"TopK: k={self.k} is more than the {reachable} experts a token can reach "
                                 f"(group-limited routing: {rule.topk_group} of {rule.n_group} groups of "
                                 f"{lm.num_experts // rule.n_group})")

    def update(self, plan, layer, lm):
        return replace(plan, k=int(self.k))


@dataclass(frozen=True)
class TopP(Spec):
    """Top-p routing: keep experts until their probability mass first exceeds ``p`` (no renorm)."""

    p: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "p", as_number(self.p, "TopP: p"))
        if not 0 < self.p <= 1:
            raise ValueError(f"TopP: p must be in (0, 1], got {self.p}")

    def validate(self, lm) -> None:
        super().validate(lm)

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
            object.__setattr__(self, "beta", {as_int(k, f"Skip: layer {k!r}"): as_number(v, f"Skip: beta of layer {k}")
                                              for k, v in self.beta.items()})
            _check_layers_match("Skip", self.layers, self.beta)
            if self.layers is None:
                object.__setattr__(self, "layers", tuple(self.beta))
        else:
            object.__setattr__(self, "beta", as_number(self.beta, "Skip: beta"))
        values = self.beta.values() if isinstance(self.beta, Mapping) else [self.beta]
        bad = [b for b in values if not 0 <= b <= 1]
        if bad:
            raise ValueError(f"Skip: beta must be between 0 and 1, got {bad[0]}")

    def validate(self, lm) -> None:
        super().validate(lm)

    def update(self, plan, layer, lm):
        beta = self.beta[layer] if isinstance(self.beta, Mapping) else self.beta
        return replace(plan, skip_beta=float(beta))


def _weight(value, what: str) -> float:
    value = as_number(value, what)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _single_mode(plan: RoutingPlan, mode: str) -> None:
    if plan.mode != "topk" and plan.mode != mode:
        raise ValueError(f"conflicting routing edits: {plan.mode!r} and {mode!r} both choose the experts")


class edit:
    """Apply routing edits to a model inside a ``with`` block.

    Hooks are installed on entry and removed on exit, also when the body raises; parameters are
    never modified, so the model afterwards is exactly the model before.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        *specs: :class:`Mask`, :class:`Offset`, :class:`Force` (:class:`ForceSlot`), :class:`KeepRank`,
            :class:`TopK`, :class:`TopP`, :class:`Skip` (any number; applied in order).
    """

    def __init__(self, lm, *specs: Spec):
        if not specs:
            raise ValueError("edit() needs at least one spec, e.g. wb.Mask({layer: [expert]})")
        for spec in specs:
            if not isinstance(spec, Spec):
                raise TypeError(f"{spec!r} is not an edit spec (Mask, Offset, Force, KeepRank, TopK, TopP, Skip)")
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
            specs = [s for s in self.specs if s.applies_to(layer)]
            plan = lm.probes.plan_for(specs, layer)
            left = lm.num_experts - len(plan.blocked | plan.emptied)
            if specs and plan.mode == "topk" and plan.k > left and not any(isinstance(s, Mask) for s in specs):
                warnings.warn(f"edit: k={plan.k} slots but only {left} experts of layer {layer} can be chosen; "
                              f"{plan.k - left} slot(s) of every token stay empty", stacklevel=2)

    def __enter__(self):
        self.lm.probes.push_edit(self)
        return self

    def __exit__(self, *exc) -> bool:
        self.lm.probes.pop_edit(self)
        return False

    def __repr__(self) -> str:
        return f"edit({', '.join(map(repr, self.specs))})"
