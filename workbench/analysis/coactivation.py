"""Experts chosen together: co-activation within a layer and transitions between layers.

*Co-activation* counts, for every ordered pair of experts ``(a, b)`` with ``a != b``, the tokens
whose top-k holds both (every pair of slots, not only adjacent ranks). ``p_b_given_a`` is
``count / tokens(a)`` and ``lift`` is ``P(a, b) / (P(a) P(b))`` with probabilities over the layer's
tokens: 1 means "chosen together as often as chance would have it".

*Transitions* count, for consecutive recorded layers ``l → l'``, how often a token's expert at ``l``
is followed by each expert at ``l'`` (by default the rank-0 expert; ``rank=None`` counts all
``k × k`` slot pairs).

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis import coactivation
    >>> trace = wb.RoutingTrace(topk_idx=[[[0, 1], [0, 1], [0, 2], [1, 2]]], topk_w=np.ones((1, 4, 2)),
    ...                         token_ids=[1, 2, 3, 4], doc=[0] * 4, pos=[0, 1, 2, 3], layers=[0],
    ...                         num_experts=3, fingerprint="x")
    >>> co = coactivation(trace)
    >>> co[(co.a == 0) & (co.b == 1)][["count", "p_b_given_a", "lift"]].round(3).values.tolist()
    [[2.0, 0.667, 0.889]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.analysis.load import as_counts
from workbench.trace import is_stored


def pair_metrics(counts, pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, p_b_given_a, lift)``, each ``[E, E]`` (zero diagonal), at layer position ``pos``.

    Args:
        counts: a :class:`~workbench.analysis.counts.TraceCounts`.
        pos: index into the trace's ``L`` axis (not the decoder-layer index).
    """
    count = counts.coact[pos].astype(np.float64)
    n_a = np.broadcast_to(counts.counts[pos][:, None], count.shape).astype(np.float64)
    n_b = np.broadcast_to(counts.counts[pos][None, :], count.shape).astype(np.float64)
    cond = np.divide(count, n_a, out=np.zeros_like(count), where=n_a > 0)
    expected = n_a * n_b / max(counts.num_tokens, 1)
    lift = np.divide(count, expected, out=np.zeros_like(count), where=expected > 0)
    return count, cond, lift


def coactivation(trace) -> pd.DataFrame:
    """Co-activation of every ordered expert pair in every layer.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` (or its
            :class:`~workbench.analysis.counts.TraceCounts`).

    Returns:
        One row per (layer, a, b) with ``a != b`` (zeros included, so a layer has ``E (E - 1)``
        rows): ``count``, ``tokens_a`` (tokens routed to ``a``), ``p_b_given_a``, ``lift``.
    """
    c = as_counts(trace)
    num_experts = c.num_experts
    a, b = np.meshgrid(np.arange(num_experts), np.arange(num_experts), indexing="ij")
    off = a != b
    frames = []
    for pos, layer in enumerate(c.trace.layers):
        count, cond, lift = pair_metrics(c, pos)
        frames.append(pd.DataFrame({
            "layer": layer, "a": a[off].astype(np.int64), "b": b[off].astype(np.int64),
            "count": count[off].astype(np.int64), "tokens_a": c.counts[pos][a[off]].astype(np.int64),
            "p_b_given_a": cond[off], "lift": lift[off]}))
    return pd.concat(frames, ignore_index=True)


def coactivation_matrix(trace, layer: int, metric: str = "lift") -> np.ndarray:
    """``[E, E]`` matrix of one :func:`coactivation` metric at decoder layer ``layer`` (0 diagonal)."""
    names = ("count", "p_b_given_a", "lift")
    if metric not in names:
        raise ValueError(f"metric must be one of {names}, got {metric!r}")
    c = as_counts(trace)
    return pair_metrics(c, c.trace.layer_index(layer))[names.index(metric)]


def layer_transitions(trace, rank: int | None = 0) -> pd.DataFrame:
    """Expert at one recorded layer → expert at the next recorded layer.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` with at least two layers.
        rank: the slot followed at both layers (0 = heaviest); ``None`` counts all slot pairs.

    Returns:
        One row per (layer_from, expert_from, expert_to) with a non-zero count: ``layer_from``,
        ``layer_to``, ``expert_from``, ``expert_to``, ``count``, ``share`` (of ``expert_from``'s
        transitions; ``P(to | from)``), ``lift`` (``share`` over ``expert_to``'s overall share of
        transitions out of ``layer_from``).
    """
    trace = getattr(trace, "trace", trace)
    if len(trace.layers) < 2:
        raise ValueError(f"transitions need at least two recorded layers; this trace has {trace.layers}")
    if rank is not None and not 0 <= rank < trace.k:
        raise ValueError(f"rank must be in 0..{trace.k - 1} or None, got {rank}")
    if is_stored(trace):
        from workbench.store.analyses import transition_tables
        return transition_frame(transition_tables(trace, rank), trace.layers)
    tables = np.stack([transition_counts(trace.topk_idx[pos], trace.topk_idx[pos + 1], rank, trace.num_experts)
                       for pos in range(len(trace.layers) - 1)])
    return transition_frame(tables, trace.layers)


def transition_counts(src_idx: np.ndarray, dst_idx: np.ndarray, rank: int | None, num_experts: int) -> np.ndarray:
    """``[E, E]`` counts of expert ``a`` at one layer followed by ``b`` at the next (``[n, k]`` slots each)."""
    slots = slice(None) if rank is None else slice(rank, rank + 1)
    src = src_idx[:, slots].astype(np.int64)
    dst = dst_idx[:, slots].astype(np.int64)
    pair_src = np.repeat(src, dst.shape[1], axis=1)
    pair_dst = np.tile(dst, (1, src.shape[1]))
    ok = (pair_src >= 0) & (pair_dst >= 0)
    return np.bincount(pair_src[ok] * num_experts + pair_dst[ok],
                       minlength=num_experts * num_experts).reshape(num_experts, num_experts)


def transition_frame(tables: np.ndarray, layers) -> pd.DataFrame:
    """The tidy frame of :func:`layer_transitions` from ``[L-1, E, E]`` transition counts."""
    frames = []
    for pos, table in enumerate(tables):
        row = table.sum(axis=1, keepdims=True)
        share = np.divide(table, row, out=np.zeros(table.shape), where=row > 0)
        col_share = table.sum(axis=0) / max(table.sum(), 1)
        lift = np.divide(share, col_share[None, :], out=np.zeros(table.shape), where=col_share[None, :] > 0)
        e_from, e_to = np.nonzero(table)
        frames.append(pd.DataFrame({
            "layer_from": layers[pos], "layer_to": layers[pos + 1],
            "expert_from": e_from.astype(np.int64), "expert_to": e_to.astype(np.int64),
            "count": table[e_from, e_to].astype(np.int64), "share": share[e_from, e_to],
            "lift": lift[e_from, e_to]}))
    return pd.concat(frames, ignore_index=True)
