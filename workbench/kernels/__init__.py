"""Compute without model state: routing rules, routing under edit plans, replay operations.

``routing`` is the vectorised torch path; ``reference`` the obvious per-token loops it is tested
against. Triton paths, when present, are imported lazily and never at package import.
"""

from workbench.kernels.routing import (
    Decision,
    RoutingPlan,
    apply_plan,
    empty_slots,
    force,
    probabilities,
    route,
    route_rank,
    route_top_p,
    scores,
    skip,
)
from workbench.kernels.rules import SCORINGS, RoutingRule

__all__ = [
    "Decision", "RoutingPlan", "RoutingRule", "SCORINGS", "apply_plan", "empty_slots", "force",
    "probabilities", "route", "route_rank", "route_top_p", "scores", "skip",
]
