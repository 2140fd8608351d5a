"""Choosing the experts to drop in one layer: enumeration, beam/greedy search, baselines.

* :func:`enumerate_search` — the argmin of the loss over every allowed drop set (Lu et al.), scored
  in chunks; ties go to the first set in lexicographic order.
* :func:`beam_search` — for layers where ``C(E, r)`` is too large: start from no expert dropped and
  drop one more expert per step, keeping the ``width`` best partial drop sets by the same loss
  (``width=1`` is greedy elimination). Costs about ``width * E * (E - r)`` loss evaluations.
* :func:`frequency_drop` — drop the experts the model routes calibration tokens to least often.
* :func:`random_drop` — drop random experts (seeded).

Every function respects :class:`~workbench.pruning.subsets.Groups` (balanced expert groups).

Example:
    >>> import torch
    >>> from workbench.pruning.search import enumerate_search, beam_search
    >>> from workbench.pruning.subsets import Groups
    >>> cost = torch.tensor([5.0, 1.0, 3.0, 2.0])                  # a separable toy loss
    >>> score = lambda sets: torch.tensor([float(sum(cost[list(s)])) for s in sets], dtype=torch.float64)
    >>> g = Groups(num_experts=4, top_k=1)
    >>> enumerate_search(score, g, keep=2)[:2], beam_search(score, g, keep=2)[:2]
    (((1, 3), 3.0), ((1, 3), 3.0))
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

#: drop sets scored per call of the loss during enumeration
ENUM_CHUNK = 4096


@dataclass
class LayerChoice:
    """What one layer's search chose.

    Attributes:
        layer: decoder-layer index.
        dropped: sorted expert ids removed.
        kept: sorted expert ids kept.
        loss: ``L(dropped)`` (float64 sum over calibration batches of Frobenius norms), NaN if unscored.
        norm: ``sum_b ||Z_b||_F``, to read the loss relative to the layer's output.
        search: ``"enumerate"``, ``"beam"``, ``"frequency"`` or ``"random"``.
        evaluated: drop sets scored.
        candidates: allowed drop sets in all.
        seconds: wall time of the search.
        note: why this search was used.
    """

    layer: int
    dropped: tuple
    kept: tuple
    loss: float = float("nan")
    norm: float = float("nan")
    search: str = ""
    evaluated: int = 0
    candidates: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def relative_loss(self) -> float:
        return self.loss / self.norm if self.norm and self.norm == self.norm else float("nan")


def _first_min(losses: torch.Tensor) -> int:
    best = losses.min()
    return int(torch.nonzero(losses == best)[0, 0])


def enumerate_search(score, groups, keep: int, chunk: int = ENUM_CHUNK) -> tuple[tuple, float, int]:
    """``(drop set, loss, evaluated)``: the least-loss drop set among all allowed ones.

    Args:
        score: ``list of drop sets -> [R] float64 losses`` (e.g. a :class:`~workbench.pruning.loss.LossScorer`).
        groups: the layer's :class:`~workbench.pruning.subsets.Groups`.
        keep: experts to keep, ``r``.
        chunk: drop sets scored per call.
    """
    best_set, best_loss, seen = None, float("inf"), 0
    batch = []

    def flush():
        nonlocal best_set, best_loss, seen
        losses = score(batch)
        i = _first_min(losses)
        if float(losses[i]) < best_loss:
            best_set, best_loss = batch[i], float(losses[i])
        seen += len(batch)
        batch.clear()

    for subset in groups.iter_drop_sets(keep):
        batch.append(subset)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return tuple(best_set), best_loss, seen


def beam_search(score, groups, keep: int, width: int = 1) -> tuple[tuple, float, int]:
    """``(drop set, loss, evaluated)`` by beam search over growing drop sets (``width=1``: greedy).

    Each step extends every kept partial set by one allowed expert, scores the distinct results with
    the same loss, and keeps the ``width`` best (ties: lexicographic order).
    """
    if width < 1:
        raise ValueError(f"beam width must be at least 1, got {width}")
    groups.check(keep)
    beams: list[tuple] = [()]
    losses = torch.zeros(1, dtype=torch.float64)
    seen = 0
    for _ in range(groups.num_experts - keep):
        cands = sorted({tuple(sorted(b + (e,))) for b in beams for e in range(groups.num_experts)
                        if groups.can_extend(b, e, keep)})
        losses = score(cands)
        seen += len(cands)
        order = sorted(range(len(cands)), key=lambda i: (float(losses[i]), cands[i]))[:width]
        beams = [cands[i] for i in order]
        losses = losses[order]
    return beams[0], float(losses[0]), seen


def routed_counts(topk_idx: torch.Tensor, num_experts: int) -> np.ndarray:
    """``[E]`` how often each expert is among a token's chosen experts (``-1`` = empty slot)."""
    idx = topk_idx.reshape(-1).long()
    idx = idx[idx >= 0]
    return torch.bincount(idx, minlength=num_experts).numpy()


def frequency_drop(counts, groups, keep: int) -> tuple:
    """Drop the least frequently routed experts (ties: the lower expert id is dropped first)."""
    counts = np.asarray(counts)
    order = sorted(range(len(counts)), key=lambda e: (counts[e], e))
    return groups.pick(order, keep)


def random_drop(groups, keep: int, rng: random.Random) -> tuple:
    """Drop random experts (``rng`` is a seeded :class:`random.Random`)."""
    order = list(range(groups.num_experts))
    rng.shuffle(order)
    return groups.pick(order, keep)
