"""A trace on disk, opened lazily: the corpus-scale form of :class:`~workbench.trace.RoutingTrace`.

:func:`open_trace` reads manifests and document tables only. Routing is read when something asks
for it: a streaming pass (:meth:`StoredTrace.iter_batches`, memory of one shard), some tokens
(:meth:`StoredTrace.slots`), a SQL query (:meth:`StoredTrace.sql`, DuckDB over the Parquet files) or
:meth:`StoredTrace.materialize` (the in-memory form). :meth:`StoredTrace.select` narrows to documents,
labels, layers or a token range without reading anything; the filters prune files, row groups and
columns when data is read. Every analysis, view and widget accepts a ``StoredTrace``; their
aggregates are computed in one pass and cached in ``aggregates/`` beside the store.

Token-level columns (``token_ids``, ``doc``, ``pos``: 16 bytes a token) are loaded on first use;
the routing (``L × k`` slots a token) never is, unless materialised.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> trace = wb.record(lm, ["one text", "and another", "a third"], labels=["a", "b", "a"], out=d,
    ...                   progress=False)
    >>> trace = wb.open_trace(d)
    >>> trace.num_docs, trace.select(labels="a").num_docs
    (3, 2)
    >>> trace.sql("SELECT count(*) FROM routing WHERE layer = 1").fetchall()[0][0] == trace.num_tokens * 2
    True
    >>> trace.select(docs=[1]).materialize().doc_labels
    ['b']
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.store.layout import StoreError
from workbench.store.parts import open_parts
from workbench.store.reader import read_rows
from workbench.trace import RoutingTrace, TraceMethods

#: ``materialize`` / ``to_dataframe`` refuse more slots than this unless told otherwise (about 1 GB).
MAX_SLOTS = 100_000_000


class _Base:
    """What all selections of one opened store share: the parts and the token columns, once read."""

    def __init__(self, parts):
        self.parts = parts
        first = parts[0].manifest
        self.layers = [int(x) for x in first["layers"]]
        self.num_experts = int(first["num_experts"])
        self.k = max(int(p.manifest["k"]) for p in parts)
        self.meta = dict(first.get("meta", {}))
        self.fingerprint = first["fingerprint"]
        self.has_scores = bool(first.get("scores"))
        self.labels = [x for p in parts for x in p.labels]
        self.token_text = {}
        for p in parts:
            self.token_text.update(p.token_text)
        self.num_tokens = sum(p.num_tokens for p in parts)
        self.shard_starts = np.array([p.t_offset + s["t0"] for p in parts for s in p.shards] + [self.num_tokens],
                                     dtype=np.int64)
        self.shards = [(p, s) for p in parts for s in p.shards]
        self._columns = None
        self.cache: dict = {}

    def columns(self) -> dict:
        """``doc``, ``pos``, ``token_id`` of every token (store-wide numbering), read once."""
        if self._columns is None:
            doc, pos, tok = [], [], []
            for part, shard in self.shards:
                rows = read_rows(part, shard, None, layers=[], routing=False)
                doc.append(rows.doc.astype(np.int64) + part.doc_offset)
                pos.append(rows.pos)
                tok.append(rows.token_ids.astype(np.int64))
            cat = (lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dt))
            self._columns = {"doc": cat(doc, np.int64), "pos": cat(pos, np.int32), "token_id": cat(tok, np.int64)}
        return self._columns


class StoredTrace(TraceMethods):
    """A lazily opened trace store (see the module docstring). Use :func:`open_trace` to make one.

    Attributes mirror :class:`~workbench.trace.RoutingTrace`: ``layers``, ``num_experts``, ``k``,
    ``top_k``, ``fingerprint``, ``meta``, ``doc_labels``, ``token_text``, ``num_tokens``, ``num_docs``,
    ``token_ids``/``doc``/``pos`` (``[T]``, loaded on first use) and ``has_scores``.
    """

    is_stored = True

    def __init__(self, base: _Base, keep: np.ndarray | None = None, layers=None):
        self._base = base
        self._keep = keep  # sorted store-wide token indices in this selection; None = all
        self.layers = list(base.layers) if layers is None else [int(x) for x in layers]
        self._docs = None
        self._selected: dict = {}  # this selection's token columns, made once

    # -- sizes and metadata --------------------------------------------------------------
    num_experts = property(lambda self: self._base.num_experts)
    k = property(lambda self: self._base.k)
    fingerprint = property(lambda self: self._base.fingerprint)
    meta = property(lambda self: self._base.meta)
    token_text = property(lambda self: self._base.token_text)
    has_scores = property(lambda self: self._base.has_scores)
    folders = property(lambda self: [p.folder for p in self._base.parts])

    @property
    def top_k(self) -> int:
        return int(self.meta.get("top_k", self.k))

    @property
    def num_tokens(self) -> int:
        return self._base.num_tokens if self._keep is None else len(self._keep)

    def _kept_docs(self) -> np.ndarray:
        """Store-wide ids of the documents in this selection, sorted (their new ids are 0..D-1)."""
        if self._docs is None:
            self._docs = np.arange(len(self._base.labels)) if self._keep is None else \
                np.unique(self._base.columns()["doc"][self._keep])
        return self._docs

    @property
    def num_docs(self) -> int:
        return len(self._kept_docs())

    @property
    def doc_labels(self) -> list:
        labels = self._base.labels
        return labels if self._keep is None else [labels[d] for d in self._kept_docs()]

    def _column(self, name: str) -> np.ndarray:
        col = self._base.columns()[name]
        if self._keep is None:
            return col
        if name not in self._selected:
            self._selected[name] = col[self._keep]
        return self._selected[name]

    @property
    def token_ids(self) -> np.ndarray:
        return self._column("token_id")

    @property
    def pos(self) -> np.ndarray:
        return self._column("pos")

    @property
    def doc(self) -> np.ndarray:
        if self._keep is None:
            return self._column("doc")
        if "renumbered_doc" not in self._selected:
            self._selected["renumbered_doc"] = np.searchsorted(self._kept_docs(), self._column("doc"))
        return self._selected["renumbered_doc"]

    # -- selection (nothing is read) -----------------------------------------------------
    def select(self, docs=None, layers=None, labels=None, tokens=None) -> "StoredTrace":
        """A narrower trace; documents and tokens are renumbered as :meth:`RoutingTrace.select` does.

        Args:
            docs: document ids (of this trace) to keep.
            layers: decoder layers to keep.
            labels: document labels to keep (compared as text).
            tokens: ``(start, stop)`` token range of this trace to keep.
        """
        keep = np.arange(self._base.num_tokens) if self._keep is None else self._keep
        mask = None
        if tokens is not None:
            start, stop = tokens
            mask = np.zeros(len(keep), dtype=bool)
            mask[max(int(start), 0):max(int(stop), 0)] = True
        if docs is not None or labels is not None:
            doc_ok = np.ones(self.num_docs, dtype=bool)
            if docs is not None:
                doc_ok &= np.isin(np.arange(self.num_docs), np.atleast_1d(docs))
            if labels is not None:
                wanted = set(np.atleast_1d(np.asarray(labels, dtype=object)).astype(str).tolist())
                doc_ok &= np.array([str(x) in wanted for x in self.doc_labels], dtype=bool)
            by_doc = doc_ok[self.doc]
            mask = by_doc if mask is None else mask & by_doc
        if layers is not None:
            layers = [self.layers[self.layer_index(int(x))] for x in np.atleast_1d(layers)]
        return StoredTrace(self._base, keep if mask is None else keep[mask], layers)

    # -- reading -------------------------------------------------------------------------
    def _shard_rows(self):
        """``(part, shard, rows or None, first_t)`` for every shard holding tokens of this selection."""
        b = self._base
        for i, (part, shard) in enumerate(b.shards):
            lo_t, hi_t = b.shard_starts[i], b.shard_starts[i + 1]
            if self._keep is None:
                yield part, shard, None, int(lo_t)
                continue
            lo, hi = np.searchsorted(self._keep, [lo_t, hi_t])
            if hi > lo:
                yield part, shard, self._keep[lo:hi] - lo_t, int(lo)

    def iter_batches(self, layers=None, scores: bool = False, routing: bool = True):
        """Stream the selection shard by shard (memory: one shard).

        Args:
            layers: decoder layers to read (default: this trace's layers).
            scores: also read router scores (``[L', n, E]``).
            routing: False reads only the token columns.

        Yields:
            :class:`~workbench.store.reader.Rows` with ``t`` and ``doc`` in this trace's numbering.
        """
        if scores and not self.has_scores:
            from workbench.analysis.router import require_scores
            require_scores(self)
        layers = self.layers if layers is None else [self.layers[self.layer_index(int(x))] for x in layers]
        for part, shard, rows, first in self._shard_rows():
            out = read_rows(part, shard, rows, layers=layers, scores=scores, routing=routing)
            out.t = np.arange(first, first + len(out.t), dtype=np.int64)
            out.doc = out.doc.astype(np.int64) + part.doc_offset
            if self._keep is not None:
                out.doc = np.searchsorted(self._kept_docs(), out.doc)
            yield out

    def slots(self, layer_pos, tokens) -> tuple[np.ndarray, np.ndarray]:
        """``(idx [L', n, k], w [L', n, k])`` of some tokens (indices of this trace) at some layer positions."""
        tokens = np.asarray(tokens, dtype=np.int64)
        layers = [self.layers[p] for p in layer_pos]
        idx = np.full((len(layers), len(tokens), self.k), -1, dtype=np.int16)
        w = np.zeros((len(layers), len(tokens), self.k), dtype=np.float32)
        if not len(tokens):
            return idx, w
        if tokens.min() < 0 or tokens.max() >= self.num_tokens:
            raise IndexError(f"token indices must be in 0..{self.num_tokens - 1}")
        glob = tokens if self._keep is None else self._keep[tokens]
        b = self._base
        which = np.searchsorted(b.shard_starts, glob, side="right") - 1
        for s in np.unique(which):
            part, shard = b.shards[s]
            sel = np.flatnonzero(which == s)
            rel = glob[sel] - b.shard_starts[s]
            order = np.argsort(rel, kind="stable")
            uniq, inverse = np.unique(rel[order], return_inverse=True)
            rows = read_rows(part, shard, uniq, layers=layers)
            idx[:, sel[order]] = rows.idx[:, inverse]
            w[:, sel[order]] = rows.w[:, inverse]
        return idx, w

    def materialize(self, max_slots: int | None = MAX_SLOTS) -> RoutingTrace:
        """This selection as an in-memory :class:`~workbench.trace.RoutingTrace` (weights as stored,
        float16 values). Refuses more than ``max_slots`` slots (``None``: no limit)."""
        slots = self.num_tokens * len(self.layers) * self.k
        if max_slots is not None and slots > max_slots:
            raise MemoryError(
                f"this selection has {slots:,} slots ({slots * 6 / 1e9:.1f} GB in memory); select fewer "
                "documents, labels, layers or tokens first (trace.select(...)), query it with trace.sql(...), "
                "or pass max_slots=None")
        idx, w, sc = [], [], []
        for rows in self.iter_batches(scores=self.has_scores):
            idx.append(rows.idx)
            w.append(rows.w)
            if self.has_scores:
                sc.append(rows.scores)
        empty = (len(self.layers), 0, self.k)
        return RoutingTrace(
            np.concatenate(idx, axis=1) if idx else np.empty(empty, np.int16),
            np.concatenate(w, axis=1) if w else np.empty(empty, np.float32),
            self.token_ids, self.doc, self.pos, self.layers, self.num_experts, self.fingerprint,
            token_text={int(t): self.token_text.get(int(t), f"<{int(t)}>") for t in np.unique(self.token_ids)},
            doc_labels=list(self.doc_labels),
            scores=np.concatenate(sc, axis=1) if sc else None, meta=dict(self.meta))

    def to_dataframe(self, include_empty: bool = False, max_slots: int | None = 20_000_000) -> pd.DataFrame:
        """The tidy pandas table of :meth:`RoutingTrace.to_dataframe` for this (small) selection."""
        return self.materialize(max_slots=max_slots).to_dataframe(include_empty=include_empty)

    # -- engine --------------------------------------------------------------------------
    def relation(self, view: str = "routing"):
        """A DuckDB relation over the store: ``routing`` (one row per slot), ``tokens``, ``docs``, ``vocab``."""
        from workbench.store.query import connection
        return connection(self).table(view)

    def sql(self, query: str):
        """Run SQL (DuckDB) over this trace's views; returns a DuckDB relation (``.df()`` for pandas).

        Views: ``routing(t, doc, pos, token_id, label, layer, rank, expert, weight)``,
        ``tokens(t, doc, pos, token_id, label)``, ``docs(doc, label, tokens)``, ``vocab(token_id, text)``.
        """
        from workbench.store.query import connection
        return connection(self).sql(query)

    def counts(self):
        """The trace's :class:`~workbench.store.aggregates.StoreCounts` (one pass, cached beside the store)."""
        from workbench.store.aggregates import store_counts
        return store_counts(self)

    # -- checks and display --------------------------------------------------------------
    def validate(self) -> int:
        """Read every shard of the selection and check it (ids, weights, documents, files); returns the
        number of tokens checked. Raises :class:`~workbench.store.layout.StoreError` naming the file."""
        from workbench.store.writer import file_digest
        for part, shard, _, _ in self._shard_rows():
            path = part.shard_path(shard)
            if shard.get("sha256") and file_digest(path) != shard["sha256"]:
                raise StoreError(f"{path}: its checksum differs from the manifest's; the file was changed")
        return sum(len(r.t) for r in self.iter_batches())

    def summary(self) -> dict:
        counts = pd.Series(self.doc_labels, dtype=object).astype(str).value_counts().to_dict() \
            if self.doc_labels else {}
        return {"model": self.meta.get("model", "?"), "fingerprint": self.fingerprint,
                "tokens": self.num_tokens, "documents": self.num_docs, "layers": self.layers,
                "experts": self.num_experts, "k": self.k, "labels": counts, "scores": self.has_scores,
                "folders": [str(f) for f in self.folders]}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"StoredTrace({s['tokens']} tokens, {s['documents']} docs, layers={s['layers']}, "
                f"E={s['experts']}, k={s['k']}, model={s['model']}, folders={len(s['folders'])})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<div><b>StoredTrace</b> (on disk, opened lazily)<table>{rows}</table></div>"


def open_trace(path, partial: bool = False):
    """Open a trace store (or several folders of the same model, as one trace) without reading routing.

    Args:
        path: a store folder written by ``wb.record(..., out=...)``, or a list of them (documents and
            tokens are numbered after the folders before; nothing is copied).
        partial: open a recording that is still running or was interrupted (its finished shards).

    Returns:
        A :class:`StoredTrace`.

    Raises:
        StoreError: a folder is not a store, is unfinished, or is damaged (the message names the file).
        TraceMismatchError: folders of different models or layers.
    """
    if isinstance(path, (str, Path)) and (Path(path) / "trace.json").is_file() and \
            not (Path(path) / "manifest.json").exists():
        open_parts([path])  # raises the message that says how to load or convert the old format
    return StoredTrace(_Base(open_parts(path, partial=partial)))
