"""The on-disk layout of a trace store: manifest, shard schema, and how a batch becomes a shard.

A store is a folder::

    manifest.json         the single source of truth: schema version, model fingerprint, layers, E,
                          k, units of weights and scores, and the list of finished shards
    docs.parquet          one row per document: doc, label (text), label_json (exact value), tokens
    vocab.parquet         token_id -> text, once per id (written when the recording finishes)
    shards/part-*.parquet one file per recorded batch, one row per token (see below)
    aggregates/           cached analysis arrays (safe to delete)

A shard has one row per token, in document then position order: ``t`` (token index in the store),
``doc``, ``pos``, ``token_id``, and for every recorded decoder layer ``l`` the columns ``e_<l>``
(``k`` int16 expert ids, rank order, ``-1`` = empty slot), ``w_<l>`` (``k`` float16 routing weights,
the weights the experts received) and, when scores were kept, ``s_<l>`` (``E`` float16 router
scores). That is 4 bytes a slot before compression (about 3 with zstd). Reading only some layers
reads only their columns; documents and token ranges prune whole files (the manifest holds each
shard's token and document range) and row groups.

Example:
    >>> import numpy as np
    >>> from workbench.store.layout import shard_table, decode_routing
    >>> idx = np.array([[[0, 1], [2, -1]]], dtype=np.int16)             # [L=1, n=2, k=2]
    >>> w = np.array([[[0.75, 0.25], [1.0, 0.0]]], dtype=np.float32)
    >>> table = shard_table(0, [0, 0], [0, 1], [5, 6], [3], idx, w)
    >>> table.column_names
    ['t', 'doc', 'pos', 'token_id', 'e_3', 'w_3']
    >>> got_idx, got_w = decode_routing(table, [3], k=2)
    >>> got_idx.tolist(), got_w.tolist()
    ([[[0, 1], [2, -1]]], [[[0.75, 0.25], [1.0, 0.0]]])
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "moe-workbench-trace-store"
STORE_VERSION = 2
MANIFEST = "manifest.json"
DOCS_FILE = "docs.parquet"
VOCAB_FILE = "vocab.parquet"
SHARDS_DIR = "shards"
AGGREGATES_DIR = "aggregates"
#: Rows (tokens) per Parquet row group: a document lookup reads about this many tokens.
ROW_GROUP = 2048
TOKEN_COLUMNS = ["t", "doc", "pos", "token_id"]


class StoreError(ValueError):
    """A store folder is missing, foreign, damaged or inconsistent (the message names the file)."""


def expert_col(layer: int) -> str:
    return f"e_{layer}"


def weight_col(layer: int) -> str:
    return f"w_{layer}"


def score_col(layer: int) -> str:
    return f"s_{layer}"


def _fixed_list(values: np.ndarray, width: int, dtype) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, width)


def shard_table(t0: int, doc, pos, token_ids, layers, idx: np.ndarray, w: np.ndarray,
                scores: np.ndarray | None = None) -> pa.Table:
    """One shard as an Arrow table.

    Args:
        t0: store token index of the first row.
        doc, pos, token_ids: ``[n]`` per-token columns.
        layers: the ``L`` decoder-layer indices.
        idx: ``[L, n, k]`` expert ids (``-1`` empty); ``w``: ``[L, n, k]`` weights.
        scores: optional ``[L, n, E]`` router scores.
    """
    n = len(token_ids)
    cols = {"t": pa.array(np.arange(t0, t0 + n, dtype=np.int64)),
            "doc": pa.array(np.asarray(doc, dtype=np.int32)), "pos": pa.array(np.asarray(pos, dtype=np.int32)),
            "token_id": pa.array(np.asarray(token_ids, dtype=np.int32))}
    k = idx.shape[2]
    for i, layer in enumerate(layers):
        cols[expert_col(layer)] = _fixed_list(idx[i].astype(np.int16), k, pa.int16())
        cols[weight_col(layer)] = _fixed_list(w[i].astype(np.float16), k, pa.float16())
        if scores is not None:
            cols[score_col(layer)] = _fixed_list(scores[i].astype(np.float16), scores.shape[2], pa.float16())
    return pa.table(cols)


def write_shard(table: pa.Table, path: Path, metadata: dict) -> None:
    """Write ``table`` as Parquet (zstd, row groups of :data:`ROW_GROUP`) with ``metadata`` in the footer."""
    schema = table.schema.with_metadata({b"workbench": json.dumps(metadata).encode()})
    pq.write_table(table.cast(schema), str(path), compression="zstd", row_group_size=ROW_GROUP,
                   use_dictionary=["doc", "pos", "token_id"], column_encoding={"t": "DELTA_BINARY_PACKED"},
                   write_statistics=["t", "doc", "pos"])


def shard_metadata(path: Path) -> dict:
    """The ``workbench`` footer metadata of a shard file (``{}`` when it has none)."""
    meta = pq.read_schema(str(path)).metadata or {}
    raw = meta.get(b"workbench")
    return json.loads(raw) if raw else {}


def _as_matrix(column: pa.ChunkedArray, width: int, dtype, fill) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    own = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else width
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, own)
    if own == width:
        return values
    out = np.full((n, width), fill, dtype=dtype)
    out[:, :own] = values
    return out


def decode_routing(table: pa.Table, layers, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx [L, n, k] int16, w [L, n, k] float32)`` of ``layers`` from a shard table (padded to ``k``)."""
    n = table.num_rows
    idx = np.empty((len(layers), n, k), dtype=np.int16)
    w = np.empty((len(layers), n, k), dtype=np.float32)
    for i, layer in enumerate(layers):
        idx[i] = _as_matrix(table.column(expert_col(layer)), k, np.int16, -1)
        w[i] = _as_matrix(table.column(weight_col(layer)), k, np.float32, 0.0)
    return idx, w


def decode_scores(table: pa.Table, layers, num_experts: int) -> np.ndarray:
    """``[L, n, E]`` float16 router scores of ``layers`` from a shard table."""
    return np.stack([_as_matrix(table.column(score_col(layer)), num_experts, np.float16, 0.0)
                     for layer in layers]) if layers else np.empty((0, table.num_rows, num_experts), np.float16)


def read_manifest(folder: Path) -> dict:
    """The manifest of store ``folder``, checked for format and version (clear errors otherwise)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise StoreError(f"{folder} does not exist or is not a folder; give the folder wb.record(..., out=...) "
                         "wrote")
    if not path.is_file():
        if (folder / "trace.json").is_file():
            raise StoreError(
                f"{folder} holds an in-memory trace saved by an earlier version (trace.json + "
                "trace.safetensors), not a store; load it with wb.RoutingTrace.load(path), or convert it "
                "once with wb.convert_trace(path, out=NEW_FOLDER)")
        raise StoreError(f"{folder} holds no trace store ({MANIFEST} missing); give the folder that "
                         "wb.record(..., out=...) wrote")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise StoreError(f"{path} is not valid JSON ({err}); the store is damaged") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a moe-workbench trace store manifest")
    version = manifest.get("store_version")
    if version != STORE_VERSION:
        raise StoreError(f"{path}: store version {version} is not supported (this workbench reads version "
                         f"{STORE_VERSION}); record the texts again")
    return manifest


def label_json(label) -> str:
    """The exact JSON text of a label (keeps ``1`` and ``"1"`` apart; numpy scalars become numbers)."""
    if hasattr(label, "item") and callable(label.item):
        label = label.item()
    return json.dumps(label, ensure_ascii=False, sort_keys=True, default=str)


def docs_table(labels, tokens_per_doc) -> pa.Table:
    """``docs.parquet``: ``doc``, ``label`` (text or null), ``label_json``, ``tokens``."""
    return pa.table({
        "doc": pa.array(np.arange(len(labels), dtype=np.int64)),
        "label": pa.array([None if x is None else str(x) for x in labels], type=pa.string()),
        "label_json": pa.array([label_json(x) for x in labels], type=pa.string()),
        "tokens": pa.array(np.asarray(tokens_per_doc, dtype=np.int64))})


def vocab_table(token_text: dict) -> pa.Table:
    ids = sorted(token_text)
    return pa.table({"token_id": pa.array(np.asarray(ids, dtype=np.int64)),
                     "text": pa.array([token_text[i] for i in ids], type=pa.string())})


def write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, str(path), compression="zstd")
