"""Writing an in-memory trace as a store, and converting traces saved by earlier versions.

Example:
    >>> import tempfile, numpy as np, workbench as wb
    >>> trace = wb.RoutingTrace(topk_idx=[[[0, 1], [1, 2], [0, 1]]], topk_w=np.full((1, 3, 2), 0.5),
    ...                         token_ids=[5, 6, 5], doc=[0, 0, 1], pos=[0, 1, 0], layers=[0],
    ...                         num_experts=4, fingerprint="x", doc_labels=["a", "b"], token_text={5: "x", 6: "y"})
    >>> stored = wb.convert_trace(trace, tempfile.mkdtemp())
    >>> stored.num_tokens, stored.doc_labels, stored.materialize().topk_idx.tolist() == trace.topk_idx.tolist()
    (3, ['a', 'b'], True)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from workbench.store.stored import open_trace
from workbench.store.writer import StoreWriter

#: Tokens per shard when an in-memory trace is written as a store.
SHARD_TOKENS = 16384


def _key(trace) -> str:
    h = hashlib.sha256(b"converted")
    for a in (trace.topk_idx, trace.topk_w, trace.token_ids, trace.doc, trace.pos):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def write_store(trace, out, shard_tokens: int = SHARD_TOKENS):
    """Write a :class:`~workbench.trace.RoutingTrace` as a store in ``out`` and open it.

    Tokens are written in (document, position) order, which is the order of every recorded trace.
    Weights and scores are stored as float16.
    """
    order = np.lexsort((trace.pos, trace.doc))
    num_docs = trace.num_docs
    labels = list(trace.doc_labels) if trace.doc_labels else [None] * num_docs
    header = {"fingerprint": trace.fingerprint, "layers": trace.layers, "num_experts": trace.num_experts,
              "k": trace.k, "scores": trace.scores is not None, "meta": trace.meta, "batch_size": None}
    writer = StoreWriter(out, key=_key(trace), header=header, labels=labels,
                         tokens_per_doc=np.bincount(trace.doc, minlength=num_docs))
    try:
        if not writer.complete:
            for start in range(writer.next_t, len(order), shard_tokens):
                rows = order[start:start + shard_tokens]
                writer.add_shard((start, start + len(rows)), trace.doc[rows], trace.pos[rows],
                                 trace.token_ids[rows], trace.topk_idx[:, rows], trace.topk_w[:, rows],
                                 None if trace.scores is None else trace.scores[:, rows])
            writer.finish(dict(trace.token_text))
    finally:
        writer.close()
    return open_trace(out)


def convert_trace(source, out):
    """Convert a trace to a store: an in-memory ``RoutingTrace``, or the folder of one saved with
    ``RoutingTrace.save`` (``trace.json`` + ``trace.safetensors``, the format before stores).

    Returns:
        The :class:`~workbench.store.stored.StoredTrace` in ``out``.
    """
    from workbench.trace import RoutingTrace
    if isinstance(source, (str, Path)):
        source = RoutingTrace.load(source)
    if not isinstance(source, RoutingTrace):
        raise TypeError(f"convert_trace takes a RoutingTrace or the folder of a saved one, got "
                        f"{type(source).__name__}")
    return write_store(source, out)
