"""Expert load per layer: how many tokens, and how much routing weight, each expert receives.

Under perfectly even routing every expert receives the share ``k/E`` of a layer's tokens (each token
picks ``k`` of ``E`` experts) and ``1/E`` of its weight mass. ``load_ratio`` compares an expert's
token share with ``k/E``: 1 is even, 0 a dead expert, ``E/k`` an expert that sees every token.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis import expert_load
    >>> trace = wb.RoutingTrace(topk_idx=[[[0, 1], [0, 2]]], topk_w=[[[0.75, 0.25], [0.5, 0.5]]],
    ...                         token_ids=[5, 6], doc=[0, 0], pos=[0, 1], layers=[3],
    ...                         num_experts=4, fingerprint="x")
    >>> expert_load(trace)[["layer", "expert", "tokens", "token_share", "load_ratio"]]
       layer  expert  tokens  token_share  load_ratio
    0      3       0       2          1.0         2.0
    1      3       1       1          0.5         1.0
    2      3       2       1          0.5         1.0
    3      3       3       0          0.0         0.0
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.analysis.counts import TraceCounts


def as_counts(trace_or_counts) -> TraceCounts:
    """A :class:`TraceCounts` for a trace (computed), a stored trace (its cached
    :class:`~workbench.store.aggregates.StoreCounts`) or counts (returned as is)."""
    if isinstance(trace_or_counts, TraceCounts) or hasattr(trace_or_counts, "label_counts"):
        return trace_or_counts  # TraceCounts, or a stored trace's StoreCounts
    if hasattr(trace_or_counts, "iter_batches") and hasattr(trace_or_counts, "counts"):
        return trace_or_counts.counts()  # a StoredTrace: cached one-pass aggregates
    if not hasattr(trace_or_counts, "topk_idx"):
        raise TypeError(f"expected a RoutingTrace (from wb.record) or TraceCounts, "
                        f"got {type(trace_or_counts).__name__}")
    return TraceCounts(trace_or_counts)


def load_table(counts: np.ndarray, weight: np.ndarray, tokens: int, layers, k: int) -> pd.DataFrame:
    """Tidy load table from ``counts``/``weight [L, E]`` over ``tokens`` tokens (shared with widgets)."""
    num_layers, num_experts = counts.shape
    uniform = k / num_experts
    denom = max(tokens, 1)
    layer_weight = weight.sum(axis=1, keepdims=True)
    weight_share = np.divide(weight, layer_weight, out=np.zeros_like(weight, dtype=np.float64),
                             where=layer_weight > 0)
    token_share = counts / denom
    return pd.DataFrame({
        "layer": np.repeat(np.asarray(layers, dtype=np.int64), num_experts),
        "expert": np.tile(np.arange(num_experts, dtype=np.int64), num_layers),
        "tokens": counts.reshape(-1).astype(np.int64),
        "token_share": token_share.reshape(-1),
        "weight": weight.reshape(-1),
        "weight_share": weight_share.reshape(-1),
        "uniform": uniform,
        "load_ratio": (token_share / uniform).reshape(-1),
    })


def expert_load(trace, labels=None) -> pd.DataFrame:
    """Tokens and weight mass routed to each expert of each layer.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` (or its :class:`TraceCounts`).
        labels: restrict to tokens of these document labels (default: all tokens).

    Returns:
        One row per (layer, expert): ``layer`` (decoder-layer index), ``expert``, ``tokens`` (tokens
        with the expert in any slot), ``token_share`` (``tokens / T``), ``weight`` (summed routing
        weight), ``weight_share`` (of the layer's total weight), ``uniform`` (``k/E``),
        ``load_ratio`` (``token_share / uniform``).
    """
    c = as_counts(trace)
    counts, weight, tokens = c.select_counts(labels)
    return load_table(counts, weight, tokens, c.trace.layers, c.k)


def load_summary(trace) -> pd.DataFrame:
    """One row per layer: how uneven the load is.

    Columns: ``layer``, ``max_ratio`` and ``min_ratio`` (of :func:`expert_load`'s ``load_ratio``),
    ``dead`` (experts that got no token), ``cv`` (coefficient of variation of the token counts).
    """
    frame = expert_load(trace)
    grouped = frame.groupby("layer")
    out = pd.DataFrame({
        "max_ratio": grouped.load_ratio.max(), "min_ratio": grouped.load_ratio.min(),
        "dead": grouped.tokens.apply(lambda s: int((s == 0).sum())),
        "cv": grouped.tokens.apply(lambda s: float(s.std(ddof=0) / s.mean()) if s.mean() > 0 else 0.0),
    })
    return out.reset_index()
