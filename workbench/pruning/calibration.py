"""Calibration data for pruning and skipping: texts, held-out splits, and calibration batches.

Lu et al. score a drop set by ``L(S) = sum over calibration batches of ||Z_b - Z_hat_b||_F``: the
Frobenius norm is taken per *batch*, then summed. A layer cache (:mod:`workbench.replay`) stores the
calibration tokens flat, in capture order; :func:`batch_ids` recovers which calibration batch each
token belongs to (``batch_size`` consecutive chunks of at most ``max_length`` tokens, the unit the
capture runs the model on), and :func:`batch_slices` cuts a cache into one cache per batch.

For the demo model, :func:`demo_split` divides the shipped held-out documents into a calibration
part and a disjoint evaluation part, stratified by domain, so that perplexity is never measured on
the text the pruning was fitted on.

Example:
    >>> import torch
    >>> from workbench.pruning.calibration import batch_ids
    >>> doc = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])      # 3 documents ...
    >>> pos = torch.tensor([0, 1, 2, 3, 4, 0, 1, 0])      # ... chunked at 3 tokens
    >>> batch_ids(doc, pos, max_length=3, batch_size=2).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1]
"""

from __future__ import annotations

import random

import torch

from workbench.replay.cache import LayerCache


def unit_ids(doc: torch.Tensor, pos: torch.Tensor, max_length: int) -> torch.Tensor:
    """``[T]`` index of the chunk (at most ``max_length`` tokens of one document) of every token.

    Args:
        doc: ``[T]`` document index of each token, in capture order.
        pos: ``[T]`` position of each token in its document.
        max_length: the chunk length the capture used (``cache.meta["max_length"]``).
    """
    if doc.shape != pos.shape or doc.ndim != 1:
        raise ValueError(f"doc and pos must be [T] tensors of one shape, got {tuple(doc.shape)} and {tuple(pos.shape)}")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    starts = (pos.long() % int(max_length) == 0)
    if doc.numel():
        changed = torch.ones_like(starts)
        changed[1:] = doc[1:] != doc[:-1]
        starts = starts | changed
    return torch.cumsum(starts.long(), 0) - 1


def batch_ids(doc: torch.Tensor, pos: torch.Tensor, max_length: int, batch_size: int) -> torch.Tensor:
    """``[T]`` calibration batch of every token: ``batch_size`` consecutive chunks per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (chunks per calibration batch), got {batch_size}")
    return unit_ids(doc, pos, max_length) // int(batch_size)


def cache_batches(cache: LayerCache, batch_size: int | None) -> list[torch.Tensor]:
    """Row indices of each calibration batch of ``cache`` (one batch of every row for None)."""
    if batch_size is None:
        return [torch.arange(cache.num_tokens)]
    max_length = int(cache.meta.get("max_length") or cache.num_tokens or 1)
    ids = batch_ids(cache.doc, cache.pos, max_length, batch_size)
    if ids.numel() == 0:
        raise ValueError("the layer cache holds no tokens; capture it on non-empty calibration texts")
    bounds = torch.nonzero(ids[1:] != ids[:-1]).squeeze(1) + 1
    edges = [0, *bounds.tolist(), int(ids.numel())]
    return [torch.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]


def subset_cache(cache: LayerCache, rows: torch.Tensor, y: torch.Tensor | None = None) -> LayerCache:
    """A :class:`~workbench.replay.cache.LayerCache` of some of ``cache``'s tokens (rows, in order).

    ``y`` replaces the cached block output (the progressive variant keeps the original model's
    outputs as targets while the inputs come from the partly pruned model).
    """
    rows = rows.long()

    def take(t):
        return None if t is None else t.index_select(0, rows.to(t.device))

    return LayerCache(cache.layer, take(cache.x), take(cache.logits), take(cache.y if y is None else y),
                      take(cache.shared), take(cache.topk_idx), take(cache.topk_w), take(cache.token_ids),
                      take(cache.doc), take(cache.pos), dict(cache.meta), expert_out=take(cache.expert_out),
                      candidates=take(cache.candidates), bias=cache.bias)


def batch_slices(cache: LayerCache, batch_size: int | None) -> list[LayerCache]:
    """One cache per calibration batch (contiguous rows; see :func:`batch_ids`)."""
    return [subset_cache(cache, rows) for rows in cache_batches(cache, batch_size)]


def demo_split(calibration_per_domain: int = 16, evaluation_per_domain: int | None = None, seed: int = 0,
               rows: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """Split labelled documents into calibration and evaluation rows, disjoint, per domain.

    Args:
        calibration_per_domain: documents of each domain used for calibration.
        evaluation_per_domain: documents of each domain kept for evaluation (default: all the rest).
        seed: seed of the shuffle (explicit, so the split is reproducible).
        rows: ``[{"text", "label"}]`` (default: the demo's shipped ``heldout.jsonl``).

    Returns:
        ``(calibration_rows, evaluation_rows)``, each in domain order.

    Example:
        >>> cal, ev = demo_split(4, 2)
        >>> len(cal) == 4 * len({r["label"] for r in cal}), {r["text"] for r in cal}.isdisjoint(r["text"] for r in ev)
        (True, True)
    """
    if rows is None:
        from workbench.demo.heldout import load_heldout

        rows = load_heldout()
    if calibration_per_domain < 0:
        raise ValueError(f"calibration_per_domain must be >= 0, got {calibration_per_domain}")
    by_label: dict = {}
    for row in rows:
        by_label.setdefault(row.get("label"), []).append(row)
    rng = random.Random(seed)
    cal, ev = [], []
    for label in by_label:
        docs = list(by_label[label])
        rng.shuffle(docs)
        cal.extend(docs[:calibration_per_domain])
        rest = docs[calibration_per_domain:]
        ev.extend(rest if evaluation_per_domain is None else rest[:evaluation_per_domain])
    return cal, ev


def texts_of(rows) -> list[str]:
    """The ``text`` of each row (strings pass through)."""
    return [r if isinstance(r, str) else r["text"] for r in rows]
