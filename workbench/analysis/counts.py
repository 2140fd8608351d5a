"""Per-trace routing counts, computed once: the arrays every analysis, view and widget reads.

A :class:`TraceCounts` turns a :class:`~workbench.trace.RoutingTrace` into a few dense arrays with
one ``np.bincount`` each — per layer, per label and per expert counts and weight mass, and the
within-token co-activation matrix — plus an index of each document's tokens. Analyses build their
tidy DataFrames from these arrays; widgets keep one instance so that a control change is a slice.

Shapes: ``L`` recorded layers, ``T`` tokens, ``k`` slots, ``E`` experts, ``G`` label groups.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis.counts import TraceCounts
    >>> trace = wb.RoutingTrace(topk_idx=[[[0, 1], [1, 2], [0, 1]]], topk_w=np.full((1, 3, 2), 0.5),
    ...                         token_ids=[5, 6, 5], doc=[0, 0, 1], pos=[0, 1, 0], layers=[0],
    ...                         num_experts=4, fingerprint="x", doc_labels=["a", "b"])
    >>> c = TraceCounts(trace)
    >>> c.counts.tolist(), c.label_names, c.label_tokens.tolist()
    ([[2, 3, 1, 0]], ['a', 'b'], [2, 1])
    >>> int(c.coact[0, 0, 1]), int(c.coact[0, 1, 2])
    (2, 1)
"""

from __future__ import annotations

import numpy as np

UNLABELLED = "(unlabelled)"


class TraceCounts:
    """Dense routing counts of one trace.

    Attributes:
        trace: the :class:`~workbench.trace.RoutingTrace`.
        k: the model's experts per token (``trace.top_k``), used for the uniform share ``k/E``.
        label_names: the ``G`` label groups in sorted order (unlabelled tokens form
            :data:`UNLABELLED`).
        label_code: ``[T]`` int, each token's group.
        label_tokens: ``[G]`` tokens per group.
        label_counts: ``[L, G, E]`` int64, tokens of a group routed to an expert (any slot).
        label_weight: ``[L, G, E]`` float64, their routing weight mass.
        counts: ``[L, E]`` ``label_counts`` summed over groups.
        weight: ``[L, E]`` ``label_weight`` summed over groups.
        coact: ``[L, E, E]`` int64, tokens whose slots hold both ``a`` and ``b`` (``a != b``;
            symmetric, zero diagonal).
        doc_order: ``[T]`` token indices sorted by (document, position).
        doc_start: ``[D + 1]`` offsets into ``doc_order``: document ``d`` is
            ``doc_order[doc_start[d]:doc_start[d + 1]]``.
    """

    def __init__(self, trace):
        self.trace = trace
        num_layers, num_tokens, _ = trace.topk_idx.shape
        num_experts = trace.num_experts
        self.k = trace.top_k
        labels = trace.labels()
        names = np.array([UNLABELLED if x is None else str(x) for x in labels], dtype=object)
        self.label_names = sorted(set(names.tolist()), key=lambda s: (s == UNLABELLED, s))
        lookup = {name: i for i, name in enumerate(self.label_names)}
        self.label_code = np.array([lookup[x] for x in names], dtype=np.int64)
        groups = len(self.label_names)
        self.label_tokens = np.bincount(self.label_code, minlength=groups).astype(np.int64)

        idx = trace.topk_idx.astype(np.int64)
        valid = idx >= 0
        layer_off = np.arange(num_layers, dtype=np.int64)[:, None, None] * (groups * num_experts)
        flat = layer_off + self.label_code[None, :, None] * num_experts + idx
        size = num_layers * groups * num_experts
        self.label_counts = np.bincount(flat[valid], minlength=size).reshape(num_layers, groups, num_experts)
        self.label_weight = np.bincount(flat[valid], weights=trace.topk_w[valid].astype(np.float64),
                                        minlength=size).reshape(num_layers, groups, num_experts)
        self.counts = self.label_counts.sum(axis=1)
        self.weight = self.label_weight.sum(axis=1)
        self.coact = _coactivation(idx, num_experts)

        order = np.lexsort((trace.pos, trace.doc))
        self.doc_order = order
        num_docs = max(trace.num_docs, int(trace.doc.max()) + 1 if num_tokens else 0)
        self.doc_start = np.concatenate([[0], np.cumsum(np.bincount(trace.doc, minlength=num_docs))])

    # -- sizes and slices ----------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return int(self.trace.num_experts)

    @property
    def num_tokens(self) -> int:
        return int(self.trace.num_tokens)

    @property
    def uniform(self) -> float:
        """``k/E``: the share of tokens each expert would get under perfectly even routing."""
        return self.k / self.num_experts

    def doc_tokens(self, doc: int) -> np.ndarray:
        """Token indices of document ``doc`` in position order."""
        if not 0 <= doc < len(self.doc_start) - 1:
            raise ValueError(f"document {doc} is out of range 0..{len(self.doc_start) - 2}")
        return self.doc_order[self.doc_start[doc]:self.doc_start[doc + 1]]

    def label_index(self, label) -> int:
        """The group index of ``label`` (None means :data:`UNLABELLED`)."""
        name = UNLABELLED if label is None else str(label)
        if name not in self.label_names:
            raise ValueError(f"label {label!r} is not in the trace; labels: {self.label_names}")
        return self.label_names.index(name)

    def select_counts(self, labels=None) -> tuple[np.ndarray, np.ndarray, int]:
        """``(counts [L, E], weight [L, E], tokens)`` restricted to some labels (default: all)."""
        if labels is None:
            return self.counts, self.weight, self.num_tokens
        groups = [self.label_index(x) for x in np.atleast_1d(np.asarray(labels, dtype=object))]
        return (self.label_counts[:, groups].sum(axis=1), self.label_weight[:, groups].sum(axis=1),
                int(self.label_tokens[groups].sum()))

    def routed_sample(self, layer_pos: int, expert: int, labels=None, limit: int = 40):
        """``(tokens, weights, total)``: the first ``limit`` tokens routed to ``expert`` (any slot) at
        layer position ``layer_pos``, the weight each gave it, and how many tokens were routed there."""
        hits = self.routed_to(layer_pos, expert, labels)
        idx = self.trace.topk_idx[layer_pos, hits[:limit]]
        w = self.trace.topk_w[layer_pos, hits[:limit]]
        return hits[:limit], (w * (idx == expert)).max(axis=1, initial=0.0), len(hits)

    def routed_to(self, layer_pos: int, expert: int, labels=None) -> np.ndarray:
        """Token indices routed to ``expert`` (any slot) at layer position ``layer_pos``."""
        hit = (self.trace.topk_idx[layer_pos] == expert).any(axis=1)
        if labels is not None:
            groups = [self.label_index(x) for x in np.atleast_1d(np.asarray(labels, dtype=object))]
            hit &= np.isin(self.label_code, groups)
        return np.flatnonzero(hit)


def distinct_slots(idx: np.ndarray) -> np.ndarray:
    """``idx`` with repeats of an expert within a token's slots set to -1 (``[..., k]``; ``idx`` itself when
    there are none)."""
    ordered = np.sort(idx, axis=-1)
    if not ((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)).any():
        return idx  # the usual case (routing picks distinct experts): nothing to clear, no copy
    out = idx.copy()
    for s in range(1, idx.shape[-1]):
        dup = (idx[..., :s] == idx[..., s:s + 1]).any(axis=-1)
        out[..., s][dup] = -1
    return out


def _coactivation(idx: np.ndarray, num_experts: int, chunk: int = 16384) -> np.ndarray:
    """``[L, E, E]`` counts of tokens whose slots hold both experts (all slot pairs, not adjacent).

    Per layer, a multi-hot ``[T, E]`` matrix ``M`` gives the counts as ``M^T M`` (diagonal zeroed),
    accumulated over chunks of tokens so memory stays at ``chunk × E``.
    """
    num_layers, num_tokens, _ = idx.shape
    out = np.zeros((num_layers, num_experts, num_experts), dtype=np.int64)
    for layer in range(num_layers):
        acc = np.zeros((num_experts, num_experts), dtype=np.float64)
        for start in range(0, num_tokens, chunk):
            block = idx[layer, start:start + chunk]
            hot = np.zeros((block.shape[0], num_experts + 1), dtype=np.float32)
            np.put_along_axis(hot, np.where(block >= 0, block, num_experts), 1.0, axis=1)
            hot = hot[:, :num_experts]
            acc += hot.T @ hot
        np.fill_diagonal(acc, 0)
        out[layer] = np.rint(acc).astype(np.int64)
    return out
