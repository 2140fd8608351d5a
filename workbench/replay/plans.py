"""Routing specs -> :class:`~workbench.kernels.RoutingPlan` for one cached layer.

A *routing* is one of: a spec (``wb.Mask({3: [5]})``), a list or tuple of specs applied together in
order (like ``wb.edit(lm, *specs)``), a ready :class:`~workbench.kernels.RoutingPlan`, or None / ``()``
for the model's own routing. Plans are built by the core's ``lm.probes.plan_for(specs, layer)``, so
replay routes exactly as an edit would. Specs that do not apply to the layer leave it unchanged.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay.plans import plans_for
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> [p.blocked for p in plans_for(lm, 0, [None, wb.Mask({0: [3]}), wb.Mask({1: [3]})])]
    [frozenset(), frozenset({3}), frozenset()]
"""

from __future__ import annotations

from workbench.kernels.routing import RoutingPlan
from workbench.probes.edits import Spec


def _items(routing) -> list[Spec]:
    if routing is None:
        return []
    if isinstance(routing, Spec):
        return [routing]
    if isinstance(routing, (list, tuple)) and all(isinstance(s, Spec) for s in routing):
        return list(routing)
    raise TypeError(f"a routing is a spec (e.g. wb.Mask({{layer: [expert]}})), a list of specs, a RoutingPlan "
                    f"or None; got {routing!r}")


def plan_for(lm, layer: int, routing) -> RoutingPlan:
    """The :class:`~workbench.kernels.RoutingPlan` of one routing at ``layer``."""
    if isinstance(routing, RoutingPlan):
        return routing
    specs = _items(routing)
    for spec in specs:
        spec.validate(lm)
        if spec.rows is not None:
            raise ValueError(f"{spec!r} selects batch rows; a layer cache has no batch rows (tokens are flattened). "
                             "Drop rows= for replay and recombine.")
    return lm.probes.plan_for([s for s in specs if s.applies_to(layer)], layer)


def plans_for(lm, layer: int, routings) -> list[RoutingPlan]:
    """One plan per routing (see the module docstring for what a routing may be)."""
    if isinstance(routings, (Spec, RoutingPlan)) or routings is None:
        raise TypeError("pass a list of routings, e.g. [wb.Mask({3: [0]}), wb.Mask({3: [1]})]")
    plans = [plan_for(lm, layer, r) for r in routings]
    if not plans:
        raise ValueError("no routings given")
    return plans


def describe(routing) -> str:
    """A short text for a routing (used as the row label of results)."""
    if routing is None or routing == () or routing == []:
        return "model routing"
    if isinstance(routing, (list, tuple)):
        return " + ".join(describe(r) for r in routing)
    return repr(routing)
