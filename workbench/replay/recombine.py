"""Recombine many routings of one cached layer at once, from its cached expert outputs.

Every routing (a spec such as ``wb.Mask({layer: [e]})``, a list of specs, or a plan) is routed with
the family rule on the cached router logits (all ``R`` at once, :func:`~workbench.kernels.plans.route_plans`);
its layer output is then a weighted sum of cached expert outputs plus the cached shared part, and its
reconstruction loss the Frobenius norm ``||out - y||`` against the cached block output, accumulated
in float64. Exact for that layer; a routing that needs an expert outside the cache is refused.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture, recombine
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> cache = capture(lm, ["the quick brown fox jumps"], layers=[0], progress=False)[0]
    >>> res = recombine(lm, cache, [None] + [wb.Mask({0: [e]}) for e in range(8)])
    >>> float(res.loss[0]) < 1e-4 * float(res.norm), len(res)
    (True, 9)
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench.kernels.dispatch import resolve
from workbench.kernels.plans import PlanDecisions, route_plans
from workbench.kernels.routing import RoutingPlan, apply_plan
from workbench.replay.plans import describe, plans_for

MAX_OUTPUT_BYTES = 4 * 2 ** 30


@dataclass
class RecombineResult:
    """Losses (and optionally outputs) of ``R`` routings of one layer.

    Attributes:
        routings: the routings as given.
        plans: their :class:`~workbench.kernels.RoutingPlan`.
        loss: ``[R]`` float64 ``||out_r - y||_F`` (None if not asked).
        outputs: ``[R, T, H]`` float32 layer outputs (None if not asked).
        decisions: the ``[R, T, k]`` routings (:class:`~workbench.kernels.plans.PlanDecisions`).
        norm: ``||y||_F`` of the cached output (float64), for relative losses.
        layer: the decoder layer.
    """

    routings: list
    plans: list
    loss: torch.Tensor | None
    outputs: torch.Tensor | None
    decisions: PlanDecisions
    norm: torch.Tensor
    layer: int

    def __len__(self) -> int:
        return len(self.plans)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per routing: ``routing``, ``loss``, ``relative_loss``, ``experts_used``."""
        used = (self.decisions.valid.sum(dim=2).float().mean(dim=1)).tolist()
        frame = pd.DataFrame({"routing": [describe(r) for r in self.routings], "experts_per_token": used})
        if self.loss is not None:
            frame["loss"] = self.loss.tolist()
            frame["relative_loss"] = (self.loss / self.norm.clamp_min(1e-300)).tolist()
        frame.insert(0, "layer", self.layer)
        return frame

    def best(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` routings with the smallest loss."""
        if self.loss is None:
            raise ValueError("no losses were computed; call recombine(..., loss=True)")
        return self.to_dataframe().nsmallest(n, "loss")


def check_cache(lm, cache) -> None:
    cache.check_model(lm)
    if cache.expert_out is None:
        raise ValueError(f"layer {cache.layer}'s cache holds no expert outputs; capture it with "
                         "candidates='all' (or an int C) to recombine, or use replay()")
    if cache.scale_input:
        raise ValueError(f"{cache.meta.get('family')} scales expert inputs by routing weights, so outputs do not "
                         "recombine linearly; use replay(), which reruns the experts")


def recombine(lm, cache, routings, *, outputs: bool = False, loss: bool = True, method: str = "auto",
              backend: str | None = None, route_backend: str | None = None) -> RecombineResult:
    """Layer outputs and/or reconstruction losses of many routings of one cached layer.

    Args:
        lm: the :class:`~workbench.loading.MoEModel` the cache was captured on.
        cache: a :class:`~workbench.replay.cache.LayerCache` with expert outputs.
        routings: list of routings: specs, lists of specs, plans, or None (the model's own routing).
        outputs: also return ``[R, T, H]`` outputs (``R * T * H * 4`` bytes).
        loss: return the ``[R]`` losses.
        method: ``"gram"``, ``"direct"`` or ``"auto"`` (see :mod:`workbench.kernels.recombine`).
        backend: recombine backend (``"torch"`` or ``"reference"``).
        route_backend: routing backend (``"torch"``, ``"triton"``, ``"reference"``).

    Raises:
        ~workbench.kernels.recombine.OutsideCacheError: a routing needs an expert outside the cached candidates.
    """
    check_cache(lm, cache)
    plans = plans_for(lm, cache.layer, routings)
    dev = cache.expert_out.device
    if outputs and len(plans) * cache.num_tokens * cache.hidden * 4 > MAX_OUTPUT_BYTES:
        raise ValueError(f"outputs for {len(plans)} routings x {cache.num_tokens} tokens would exceed 4 GiB; "
                         "ask for losses only (outputs=False) or pass fewer routings")
    bias = cache.bias.to(dev) if cache.bias is not None else None
    logits = cache.logits.to(dev)
    decisions = route_plans(logits, cache.rule, plans, bias, backend=route_backend)
    base = apply_plan(logits, cache.rule, RoutingPlan(k=cache.top_k), bias)  # the unedited routing
    _, fn = resolve("recombine", backend, dev)
    out, losses = fn(cache.expert_out, cache.candidates, decisions, cache.shared, cache.y, outputs, loss, method,
                     base)
    norm = cache.y.double().pow(2).sum().sqrt()
    return RecombineResult(list(routings), plans, losses, out, decisions, norm, cache.layer)
