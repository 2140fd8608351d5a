"""Reading rows of shards: only the row groups and layer columns asked for, validated as they are read.

Every batch read is checked: the footer names this store and shard (a foreign or swapped file is
refused), ``t`` is the expected run of token indices, documents lie in the shard's range, expert ids
are in ``-1..E-1`` and weights are finite. A failure raises :class:`~workbench.store.layout.StoreError`
naming the file.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.store.parts import open_parts
    >>> from workbench.store.reader import read_rows
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> _ = wb.record(lm, ["one text", "another"], out=d, progress=False)
    >>> part = open_parts([d])[0]
    >>> rows = read_rows(part, part.shards[0], None, layers=[1])
    >>> rows.idx.shape[0], rows.idx.shape[1] == part.shards[0]["tokens"]
    (1, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from workbench.store.layout import (
    TOKEN_COLUMNS,
    StoreError,
    decode_routing,
    decode_scores,
    expert_col,
    score_col,
    shard_metadata,
    weight_col,
)


@dataclass
class Rows:
    """Rows of one shard. ``idx``/``w`` ``[L', n, k]``, ``scores`` ``[L', n, E]`` or None; the token
    columns are ``[n]`` (``t``: index in the part; ``doc``: document in the part)."""

    t: np.ndarray
    doc: np.ndarray
    pos: np.ndarray
    token_ids: np.ndarray
    idx: np.ndarray | None
    w: np.ndarray | None
    scores: np.ndarray | None


def _groups_for(meta, rows: np.ndarray) -> tuple[list[int], int]:
    """Row groups holding ``rows`` (sorted, shard-relative) and the first row of the first group."""
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    first = np.searchsorted(starts, rows, side="right") - 1
    groups = np.unique(first).tolist()
    return groups, int(starts[groups[0]])


def read_rows(part, shard: dict, rows: np.ndarray | None, *, layers, scores: bool = False,
              routing: bool = True) -> Rows:
    """Read ``rows`` (shard-relative, sorted; None = all) of ``shard`` for ``layers``.

    Args:
        part: the :class:`~workbench.store.parts.Part` holding the shard.
        shard: its manifest entry.
        rows: which rows; None reads the whole shard.
        layers: decoder layers whose routing columns to read.
        scores: also read the router scores of ``layers``.
        routing: read the routing columns at all (False: token columns only).
    """
    path = part.shard_path(shard)
    layers = list(layers) if routing else []
    columns = list(TOKEN_COLUMNS)
    for layer in layers:
        columns += [expert_col(layer), weight_col(layer)] + ([score_col(layer)] if scores else [])
    try:
        pf = pq.ParquetFile(str(path))
        footer = shard_metadata(path)
        if footer.get("store_id") != part.manifest["store_id"] or footer.get("shard") != shard["shard"]:
            raise StoreError(f"{path} does not belong to this store (its footer says store "
                             f"{footer.get('store_id')}, shard {footer.get('shard')}); it was copied from "
                             "elsewhere; record again or restore the right file")
        if rows is None:
            table = pf.read(columns=columns)
            offset = 0
        else:
            groups, offset = _groups_for(pf.metadata, rows)
            table = pf.read_row_groups(groups, columns=columns)
    except StoreError:
        raise
    except KeyError as err:
        raise StoreError(f"{path} lacks column {err}; it is not a shard of this store") from None
    except Exception as err:  # damaged Parquet: several pyarrow error types
        raise StoreError(f"{path} cannot be read ({type(err).__name__}: {err}); the shard is damaged") from None
    if rows is not None:
        table = table.take(rows - offset)
    k = int(shard.get("k", part.manifest["k"]))
    out = Rows(*(table.column(c).to_numpy() for c in TOKEN_COLUMNS), None, None, None)
    if layers:
        out.idx, out.w = decode_routing(table, layers, max(k, int(part.manifest["k"])))
        if scores:
            out.scores = decode_scores(table, layers, int(part.manifest["num_experts"]))
    _validate(path, part, shard, rows, out)
    return out


def _validate(path, part, shard, rows, out: Rows) -> None:
    expected = shard["t0"] + (np.arange(shard["tokens"]) if rows is None else rows)
    if out.t.shape != expected.shape or not np.array_equal(out.t, expected):
        raise StoreError(f"{path}: token indices do not match the manifest (expected {shard['tokens']} rows "
                         f"from t = {shard['t0']}); the shard is damaged or foreign")
    lo, hi = shard["docs"]
    if len(out.doc) and (int(out.doc.min()) < lo or int(out.doc.max()) > hi):
        raise StoreError(f"{path}: documents {int(out.doc.min())}..{int(out.doc.max())} outside the shard's "
                         f"range {lo}..{hi} in the manifest")
    if len(out.doc) and int(out.doc.max()) >= len(part.tokens_per_doc) and part.manifest.get("complete"):
        raise StoreError(f"{path}: document {int(out.doc.max())} but the store has {len(part.tokens_per_doc)}")
    if out.idx is not None and out.idx.size:
        num_experts = int(part.manifest["num_experts"])
        if int(out.idx.min()) < -1 or int(out.idx.max()) >= num_experts:
            raise StoreError(f"{path}: expert ids {int(out.idx.min())}..{int(out.idx.max())} outside "
                             f"-1..{num_experts - 1}; the shard is damaged or from another model")
        if not np.isfinite(out.w).all():
            bad = np.argwhere(~np.isfinite(out.w))[0]
            raise StoreError(f"{path}: weight at layer position {bad[0]}, row {bad[1]} is not finite")
