"""Weak routings for self-contrast decoding, and moving any routing spec onto one batch row.

A weak routing is any :class:`~workbench.probes.edits.Spec`. Named choices:

* ``"rank2"`` (default; ``"rankN"`` for any N): only the expert at 0-based rank N of each token's
  router scores, weight 1 (:class:`~workbench.KeepRank`). The paper's Mixtral setting is rank 2.
* ``"top1"``: the model's own best expert alone (:class:`~workbench.TopK` ``(1)``, renormalised by
  the family rule).
* ``"random"`` (``"random:SEED"``): :class:`RandomExpert`, a seeded random expert for every token
  at every layer (drawn from the seed, the layer and the token's position).

Example:
    >>> from workbench.testing import tiny_model
    >>> import workbench as wb
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> weak_spec("rank2", lm)
    KeepRank(layers=None, rows=None, rank=2, weight=1.0)
    >>> on_row(weak_spec("top1", lm), 1).rows
    (1,)
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from workbench.kernels.routing import random_experts
from workbench.probes.edits import KeepRank, Spec, TopK, _single_mode

WEAK_CHOICES = ("rank2", "rank1", "top1", "random")
"""Named weak routings offered by the widget and the command line (any ``rankN`` also works)."""


@dataclass(frozen=True)
class RandomExpert(Spec):
    """Every token goes to one random expert at every layer, with weight ``weight`` (a control).

    The expert of a token is drawn from ``seed``, the layer and the token's position in its
    sequence (the ``position_ids`` the model runs with), by a hash: the same seed gives the same
    experts in every run, and a token gets the same expert whether its sequence is read in one
    forward pass or one token at a time, so the batched and the two-pass decoder agree. Tokens at
    the same position of different batch rows get the same expert.

    Args:
        seed: seed of the draw.
        weight: the expert's routing weight (1 as in the paper's single-expert weak routings).
    """

    needs_positions: ClassVar[bool] = True
    seed: int = 0
    weight: float = 1.0

    def layer_seed(self, layer: int) -> int:
        """The seed of layer ``layer``'s draws (from ``seed`` and the layer index)."""
        return random.Random(f"{self.seed}:{layer}").getrandbits(31)

    def experts_for(self, layer: int, positions, num_experts: int) -> torch.Tensor:
        """The experts this spec routes the tokens at ``positions`` of layer ``layer`` to."""
        return random_experts(self.layer_seed(layer), torch.as_tensor(positions), num_experts)

    def update(self, plan, layer, lm):
        _single_mode(plan, "random")
        return replace(plan, k=1, mode="random", seed=self.layer_seed(layer), rank_weight=float(self.weight))


def weak_spec(choice, lm) -> Spec:
    """The weak routing for ``choice`` (a name of :data:`WEAK_CHOICES`, ``"rankN"``, or a Spec).

    Raises:
        ValueError: for an unknown name or a rank outside ``0..E-1`` (the message lists the choices).
    """
    if isinstance(choice, Spec):
        spec = choice
    elif not isinstance(choice, str):
        raise TypeError(f"weak routing must be a name ({', '.join(WEAK_CHOICES)}) or a routing spec "
                        f"such as wb.KeepRank(2); got {type(choice).__name__}")
    else:
        name = choice.strip().lower()
        if name.startswith("rank") and name[4:].isdigit():
            spec = KeepRank(int(name[4:]))
        elif name == "top1":
            spec = TopK(1)
        elif name == "random" or (name.startswith("random:") and name[7:].lstrip("-").isdigit()):
            spec = RandomExpert(seed=int(name[7:]) if ":" in name else 0)
        else:
            raise ValueError(f"unknown weak routing {choice!r}; use one of {', '.join(WEAK_CHOICES)}, "
                             "'rankN' (N = 0-based rank), 'random:SEED', or a spec such as wb.KeepRank(2)")
    if spec.rows is not None:
        raise ValueError("the weak routing spec must not set rows=; the decoder puts it on the weak row")
    spec.validate(lm)
    return spec


def on_row(spec: Spec, row: int) -> Spec:
    """A copy of ``spec`` that applies to batch row ``row`` only."""
    return dataclasses.replace(spec, rows=(int(row),))


def describe(spec: Spec) -> str:
    """A short label of a weak routing, e.g. ``'rank2'``, ``'top1'``, ``'random:0'``."""
    if isinstance(spec, KeepRank) and spec.weight == 1.0 and spec.layers is None:
        return f"rank{spec.rank}"
    if isinstance(spec, TopK) and spec.layers is None:
        return f"top{spec.k}"
    if isinstance(spec, RandomExpert) and spec.layers is None:
        return f"random:{spec.seed}"
    return repr(spec)
