"""Obvious, slow reference implementations of the pruning and skipping computations.

Used by the tests to check the fast paths; nothing here is vectorised across drop sets.

* :func:`reference_losses` — for every drop set and every calibration batch, run the layer's real MoE
  block on the cached inputs under ``wb.edit(lm, wb.Mask(...))`` and add the float64 Frobenius norm
  of the difference to the cached output.
* :func:`reference_argmin` — the drop set of least reference loss over all ``C(E, E - r)`` sets (ties:
  the first in lexicographic order).
* :func:`reference_beta` — per token, the family rule's weights in rank order, ``w_i / w_1`` for each
  lower rank, pooled and passed to ``numpy.median``.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture
    >>> from workbench.pruning.reference import reference_losses
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> cache = capture(lm, ["the quick brown fox"], layers=[1], candidates="all", progress=False)[1]
    >>> [round(v, 3) for v in reference_losses(lm, cache, [()], batch_size=1)]
    [0.0]
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from workbench.pruning.calibration import cache_batches


@torch.no_grad()
def reference_losses(lm, cache, drop_sets, batch_size: int | None = 8) -> list[float]:
    """Loss of each drop set by re-running the MoE block under a mask edit (slow, obvious)."""
    import workbench as wb

    block = lm.block(cache.layer)
    dtype = next(block.parameters()).dtype
    out = []
    for dropped in drop_sets:
        total = 0.0
        for rows in cache_batches(cache, batch_size):
            x = cache.x[rows].to(lm.device, dtype)[None]
            if dropped:
                with wb.edit(lm, wb.Mask({cache.layer: list(dropped)})):
                    y_hat = block(x)
            else:
                y_hat = block(x)
            y_hat = y_hat[0] if isinstance(y_hat, tuple) else y_hat
            diff = y_hat.reshape(len(rows), -1).double().cpu() - cache.y[rows].double()
            total += float(torch.sqrt((diff * diff).sum()))
        out.append(total)
    return out


def reference_argmin(lm, cache, keep: int, batch_size: int | None = 8, drop_sets=None):
    """``(drop set, loss)`` of least reference loss among all drop sets keeping ``keep`` experts."""
    if drop_sets is None:
        drop_sets = list(itertools.combinations(range(lm.num_experts), lm.num_experts - keep))
    losses = reference_losses(lm, cache, drop_sets, batch_size)
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    return tuple(drop_sets[best]), losses[best]


def reference_ratios(logits: torch.Tensor, rule, k: int, bias=None) -> np.ndarray:
    """``[T * (k - 1)]`` ratios ``w_i / w_1`` of each token's lower-ranked weights, token by token."""
    from workbench.kernels.reference import route_token

    ratios = []
    for row in logits.tolist():
        slots = route_token(row, rule, k, None if bias is None else bias.tolist())
        w0 = slots[0][1]
        for _, w, _valid in slots[1:]:
            ratios.append(w / w0 if w0 > 0 else 0.0)
    return np.asarray(ratios, dtype=np.float64)


def reference_beta(logits: torch.Tensor, rule, k: int, bias=None) -> float:
    """``numpy.median`` of :func:`reference_ratios`."""
    return float(np.median(reference_ratios(logits, rule, k, bias)))
