"""The analyses that need more than :class:`~workbench.store.aggregates.StoreCounts`, on a stored trace.

- transitions at any rank (rank 0 comes with the counts pass; others take one pass, cached);
- vocabulary specialisation and each expert's tokens: (layer, token, expert) counts in blocks of
  layers that fit a memory budget, cached as Parquet (sparse) beside the store;
- router entropy: one pass over the scores; per-token values go to a cached Parquet file and DuckDB
  gives the per-layer means and the exact median.

Each returns the same frame as the in-memory analysis of the same trace.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import analysis
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> stored = wb.record(lm, ["one text", "another one"], out=d, progress=False)
    >>> a = analysis.vocab_specialization(stored)
    >>> b = analysis.vocab_specialization(stored.materialize())
    >>> bool((a[["layer", "token_id", "top_expert", "top_count"]] == b[["layer", "token_id", "top_expert",
    ...       "top_count"]]).all().all())
    True
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.analysis.counts import distinct_slots
from workbench.store.aggregates import cache_key, cache_path, load_cached, save_cached
from workbench.store.files import atomic_path


def _sql_path(path) -> str:
    return str(path).replace("'", "''")


def transition_tables(trace, rank: int | None) -> np.ndarray:
    """``[L-1, E, E]`` transition counts at slot ``rank`` (None: all slot pairs) of a stored trace."""
    if rank == 0:
        return trace.counts().transitions
    what = f"transitions-{'all' if rank is None else rank}"
    cached = load_cached(trace, what)
    if cached is not None:
        return cached["tables"]
    from workbench.analysis.coactivation import transition_counts
    num_experts = trace.num_experts
    tables = np.zeros((len(trace.layers) - 1, num_experts, num_experts), dtype=np.int64)
    for rows in trace.iter_batches():
        for pos in range(len(trace.layers) - 1):
            tables[pos] += transition_counts(rows.idx[pos], rows.idx[pos + 1], rank, num_experts)
    save_cached(trace, what, {"tables": tables})
    return tables


#: Memory for the (layer, token, expert) count blocks of the vocabulary pass (int64).
VOCAB_BLOCK_BYTES = 192 << 20


def _vocab_pass(trace, top1: bool) -> dict:
    """Per layer, how often each token id went to each expert: the top expert of every token id (cached
    safetensors) and the sparse ``(layer, expert, token_id, n)`` table (cached Parquet).

    Layers are counted in blocks of dense ``[V, E]`` tables (``V``: distinct token ids) that fit
    :data:`VOCAB_BLOCK_BYTES`, reading only the block's layer columns, so memory stays bounded.
    """
    what = "vocab-top1" if top1 else "vocab"
    cached = load_cached(trace, what)
    table_path = cache_path(trace, what, ".parquet")
    if cached is not None and table_path.is_file():
        return dict(cached, table=table_path)
    uniq = np.unique(trace.token_ids)
    num_vocab, num_experts, layers = len(uniq), trace.num_experts, trace.layers
    per_layer = max(num_vocab * num_experts, 1)
    block = max(1, VOCAB_BLOCK_BYTES // (per_layer * 8))
    top_expert = np.zeros((len(layers), num_vocab), np.int64)
    top_count = np.zeros((len(layers), num_vocab), np.int64)
    with atomic_path(table_path) as tmp:
        writer = pq.ParquetWriter(str(tmp), pa.schema([("layer", pa.int64()), ("expert", pa.int64()),
                                                       ("token_id", pa.int64()), ("n", pa.int64())]))
        try:
            for b0 in range(0, len(layers), block):
                chosen = layers[b0:b0 + block]
                acc = np.zeros((len(chosen), per_layer), np.int64)
                for rows in trace.iter_batches(layers=chosen):
                    v = np.searchsorted(uniq, rows.token_ids).astype(np.int64)
                    slots = rows.idx[:, :, :1] if top1 else distinct_slots(rows.idx)
                    for i in range(len(chosen)):
                        e = slots[i].astype(np.int64)
                        keys = np.where(e >= 0, v[:, None] * num_experts + e, per_layer)
                        acc[i] += np.bincount(keys.reshape(-1), minlength=per_layer + 1)[:per_layer]
                for i, layer in enumerate(chosen):
                    table = acc[i].reshape(num_vocab, num_experts)
                    top_expert[b0 + i] = table.argmax(axis=1)  # the lowest id on ties
                    top_count[b0 + i] = table.max(axis=1)
                    vv, ee = np.nonzero(table)
                    n = table[vv, ee]
                    order = np.lexsort((uniq[vv], -n, ee))
                    writer.write_table(pa.table({"layer": np.full(len(order), layer, np.int64),
                                                 "expert": ee[order].astype(np.int64),
                                                 "token_id": uniq[vv[order]].astype(np.int64), "n": n[order]}))
        finally:
            writer.close()
    arrays = {"token_ids": uniq.astype(np.int64), "top_expert": top_expert, "top_count": top_count}
    save_cached(trace, what, arrays)
    return dict(arrays, table=table_path)


def expert_token_counts(trace, top1: bool = False):
    """Path of the cached Parquet table ``(layer, expert, token_id, n)``: how often each token id was
    routed to each expert (any slot; rank 0 only with ``top1``), sorted by layer, expert, most first."""
    return _vocab_pass(trace, top1)["table"]


def stored_vocab_specialization(trace, min_count: int, top1: bool) -> pd.DataFrame:
    """:func:`workbench.analysis.vocab_specialization` of a stored trace (same frame)."""
    vocab = _vocab_pass(trace, top1)
    uniq, occ = np.unique(trace.token_ids, return_counts=True)
    keep = occ >= min_count
    order = np.lexsort((uniq[keep], -occ[keep]))  # most frequent first, then token id
    ids, counts = uniq[keep][order], occ[keep][order]
    at = np.flatnonzero(keep)[order]
    tokens = [trace.token_string(int(t)) for t in ids]
    frames = []
    for pos, layer in sorted(enumerate(trace.layers), key=lambda x: x[1]):
        top_count = vocab["top_count"][pos, at]
        frames.append(pd.DataFrame({
            "layer": layer, "token_id": ids.astype(np.int64), "token": tokens, "count": counts.astype(np.int64),
            "top_expert": vocab["top_expert"][pos, at].astype(np.int64), "top_count": top_count.astype(np.int64),
            "top_share": top_count / counts, "uniform": (1 if top1 else trace.top_k) / trace.num_experts}))
    return pd.concat(frames, ignore_index=True)


def expert_tokens(trace, layer: int, expert: int, top: int = 15) -> pd.DataFrame:
    """An expert's most frequent tokens in a stored trace: ``token_id``, ``token``, ``routed``,
    ``occurrences``, ``share_of_token``, ``share_of_expert`` (as the expert card shows them)."""
    memo = trace._base.cache.setdefault(cache_key(trace, "expert-tokens"), {})
    if layer not in memo:
        table = pq.read_table(str(expert_token_counts(trace)), filters=[("layer", "=", int(layer))])
        memo[layer] = {c: table.column(c).to_numpy() for c in ("expert", "token_id", "n")}
    rows = memo[layer]
    lo, hi = np.searchsorted(rows["expert"], [expert, expert + 1])
    token_ids, routed = rows["token_id"][lo:hi], rows["n"][lo:hi]
    occ = trace._base.cache.get(cache_key(trace, "occurrences"))
    if occ is None:
        uniq, counts = np.unique(trace.token_ids, return_counts=True)
        occ = trace._base.cache[cache_key(trace, "occurrences")] = (uniq, counts)
    occurrences = occ[1][np.searchsorted(occ[0], token_ids[:top])]
    total = max(int(routed.sum()), 1)
    return pd.DataFrame({
        "token_id": token_ids[:top].astype(np.int64),
        "token": [trace.token_string(int(t)) for t in token_ids[:top]],
        "routed": routed[:top].astype(np.int64), "occurrences": occurrences.astype(np.int64),
        "share_of_token": routed[:top] / occurrences, "share_of_expert": routed[:top] / total})


def _entropy_file(trace, rule):
    """Cached Parquet of per-token ``(layer, t, entropy, entropy_norm, margin)`` (one pass over scores)."""
    from workbench.analysis.router import entropy_margin
    path = cache_path(trace, f"entropy-{rule!r}", ".parquet")
    if path.is_file():
        return path
    log_e = math.log(trace.num_experts) if trace.num_experts > 1 else 1.0
    with atomic_path(path) as tmp:
        writer = None
        try:
            for rows in trace.iter_batches(scores=True, routing=True):
                for pos, layer in enumerate(trace.layers):
                    ent, margin = entropy_margin(rows.scores[pos], rule)
                    table = pa.table({"layer": np.full(len(ent), layer, np.int64), "t": rows.t,
                                      "entropy": ent, "entropy_norm": ent / log_e, "margin": margin})
                    writer = writer or pq.ParquetWriter(str(tmp), table.schema)
                    writer.write_table(table)
            if writer is None:
                pq.write_table(pa.table({"layer": pa.array([], pa.int64()), "t": pa.array([], pa.int64()),
                                         "entropy": pa.array([], pa.float64()),
                                         "entropy_norm": pa.array([], pa.float64()),
                                         "margin": pa.array([], pa.float64())}), str(tmp))
        finally:
            if writer is not None:
                writer.close()
    return path


def stored_token_entropy(trace, rule) -> pd.DataFrame:
    """:func:`workbench.analysis.token_entropy` of a stored trace (one row per layer and token)."""
    frame = pq.read_table(str(_entropy_file(trace, rule))).to_pandas()
    order = {layer: i for i, layer in enumerate(trace.layers)}
    frame["_o"] = frame.layer.map(order)
    return frame.sort_values(["_o", "t"], kind="stable").drop(columns="_o").reset_index(drop=True)


def stored_router_entropy(trace, rule) -> pd.DataFrame:
    """:func:`workbench.analysis.router_entropy` of a stored trace (DuckDB over the cached per-token values)."""
    import duckdb
    path = _sql_path(_entropy_file(trace, rule))
    frame = duckdb.sql(f"""
        SELECT layer, count(*)::BIGINT AS tokens, avg(entropy) AS entropy, avg(entropy_norm) AS entropy_norm,
               stddev_pop(entropy_norm) AS entropy_norm_std, avg(margin) AS margin,
               median(margin) AS margin_median
        FROM read_parquet('{path}') GROUP BY layer""").df()
    order = {layer: i for i, layer in enumerate(trace.layers)}
    frame = frame.sort_values("layer", key=lambda s: s.map(order)).reset_index(drop=True)
    frame["max_entropy"] = math.log(trace.num_experts)
    return frame
