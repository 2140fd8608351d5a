"""Lu et al.'s reconstruction loss of drop sets, scored through recombine.

For a drop set ``S`` of one layer, the layer is routed with the dropped experts' scores set to -inf
*before* normalisation (``wb.Mask(..., mode="next_best")``: the family's own top-k, groups, selection
bias and renormalisation run on the remaining experts), its output ``Z_hat_S`` is recombined from
the cached per-expert outputs, and

    ``L(S) = sum over calibration batches b of ||Z_b - Z_hat_{S,b}||_F``

(Frobenius norm, not squared, accumulated in float64). :func:`drop_losses` evaluates thousands of
drop sets per call: one :func:`~workbench.replay.recombine` per calibration batch, every drop set a
routing plan. :mod:`workbench.pruning.reference` computes the same numbers the obvious, slow way.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture
    >>> from workbench.pruning.loss import drop_losses
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> cache = capture(lm, ["the quick brown fox", "jumps over"], layers=[0], candidates="all",
    ...                 progress=False)[0]
    >>> losses = drop_losses(lm, cache, [(), (0,), (0, 1)], batch_size=1)
    >>> losses.dtype, float(losses[0]) < 1e-3 * float(losses[2])
    (torch.float64, True)
"""

from __future__ import annotations

import torch

from workbench.kernels.routing import RoutingPlan
from workbench.pruning.calibration import batch_slices
from workbench.replay.recombine import check_cache, recombine

#: drop sets scored per recombine call (bounds the memory of the batched routing)
CHUNK = 4096


def drop_plan(lm, layer: int, dropped) -> RoutingPlan:
    """The routing plan of one drop set: the experts blocked, next-best takes the slot."""
    from workbench.probes.edits import Mask

    dropped = tuple(int(e) for e in dropped)
    if not dropped:
        return lm.probes.plan_for([], layer)
    return lm.probes.plan_for([Mask({layer: list(dropped)})], layer)


def check_for_pruning(lm, cache) -> None:
    """Raise a clear error if ``cache`` cannot score drop sets (wrong model, no expert outputs, ...)."""
    check_cache(lm, cache)
    if cache.candidates is not None:
        raise ValueError(f"layer {cache.layer}'s cache holds only {cache.columns} of {cache.num_experts} experts' "
                         "outputs per token; pruning reroutes tokens to any remaining expert, so capture it "
                         "with candidates='all'")


class LossScorer:
    """Scores drop sets of one cached layer; keeps the per-batch caches between calls.

    Args:
        lm: the :class:`~workbench.loading.MoEModel` the cache was captured on.
        cache: a :class:`~workbench.replay.cache.LayerCache` with every expert's output.
        batch_size: chunks per calibration batch (None: one batch of every token).
        backend: recombine backend (None: the default).

    Attributes:
        evaluated: drop sets scored so far.
    """

    def __init__(self, lm, cache, batch_size: int | None = 8, backend: str | None = None):
        check_for_pruning(lm, cache)
        self.lm, self.cache, self.backend = lm, cache, backend
        self.layer = cache.layer
        self.batches = batch_slices(cache, batch_size)
        self.evaluated = 0
        #: ``sum_b ||Z_b||_F`` (float64): the loss of a layer whose output is all zeros
        self.norm = float(sum(float(b.y.double().pow(2).sum().sqrt()) for b in self.batches))

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    def __call__(self, drop_sets) -> torch.Tensor:
        """``[R]`` float64 losses of ``R`` drop sets (tuples of expert ids)."""
        drop_sets = [tuple(s) for s in drop_sets]
        if not drop_sets:
            return torch.zeros(0, dtype=torch.float64)
        out = torch.zeros(len(drop_sets), dtype=torch.float64)
        for start in range(0, len(drop_sets), CHUNK):
            part = drop_sets[start:start + CHUNK]
            plans = [drop_plan(self.lm, self.layer, s) for s in part]
            total = torch.zeros(len(part), dtype=torch.float64)
            for sub in self.batches:
                res = recombine(self.lm, sub, plans, backend=self.backend)
                total += res.loss.to("cpu", torch.float64)
            out[start:start + len(part)] = total
        self.evaluated += len(drop_sets)
        return out


def drop_losses(lm, cache, drop_sets, *, batch_size: int | None = 8, backend: str | None = None) -> torch.Tensor:
    """``[R]`` float64 losses ``L(S)`` of drop sets of one cached layer (see the module docstring).

    Args:
        lm: the :class:`~workbench.loading.MoEModel` the cache was captured on.
        cache: a :class:`~workbench.replay.cache.LayerCache` captured with ``candidates="all"``.
        drop_sets: ``R`` tuples of expert ids to drop (``()`` = the unpruned layer).
        batch_size: chunks per calibration batch; the norm is taken per batch and summed.
        backend: recombine backend (``"torch"`` or ``"reference"``).
    """
    return LossScorer(lm, cache, batch_size, backend)(drop_sets)
