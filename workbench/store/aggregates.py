"""Streaming aggregates of a stored trace: one pass over the shards, cached beside the store.

:class:`StoreCounts` has the attributes and methods of :class:`~workbench.analysis.counts.TraceCounts`
(label and expert counts, weight mass, co-activation of all pairs), so every analysis, view and widget
takes it unchanged. The pass also keeps rank-0 layer-to-layer transitions and, for every (layer,
label, expert), the first :data:`SAMPLES` tokens routed there (the explorer lists them without a
scan). Memory is independent of the number of tokens: ``L × G × E`` and ``L × E × E`` arrays plus
one shard. The arrays are written to ``aggregates/`` in the first store folder (safetensors), keyed by
the shards, layers and selection, so opening the same trace again answers at once.

Example:
    >>> import tempfile, numpy as np, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.analysis import TraceCounts
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> stored = wb.record(lm, ["one text", "another one"], labels=["a", "b"], out=d, progress=False)
    >>> streamed, in_memory = stored.counts(), TraceCounts(stored.materialize())
    >>> bool((streamed.label_counts == in_memory.label_counts).all() and (streamed.coact == in_memory.coact).all())
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings

import numpy as np
from safetensors.numpy import load_file, save_file

from workbench.analysis.counts import UNLABELLED, distinct_slots
from workbench.store.files import atomic_path
from workbench.store.layout import AGGREGATES_DIR

AGG_VERSION = 2
#: Tokens kept per (layer, label, expert) for listing in context without a scan.
SAMPLES = 64


def cache_key(trace, what: str) -> str:
    """A key naming the shards, layers and selection an aggregate was computed from."""
    h = hashlib.sha256(json.dumps([AGG_VERSION, what, trace.layers,
                                   [(p.manifest["store_id"], [s.get("sha256") for s in p.shards])
                                    for p in trace._base.parts]]).encode())
    if trace._keep is not None:
        h.update(np.ascontiguousarray(trace._keep).tobytes())
    return f"{what}-{h.hexdigest()[:20]}"


def cache_path(trace, what: str, suffix: str = ".safetensors"):
    return trace._base.parts[0].folder / AGGREGATES_DIR / (cache_key(trace, what) + suffix)


def load_cached(trace, what: str):
    path = cache_path(trace, what)
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache is recomputed
            return None
    return None


def save_cached(trace, what: str, arrays: dict) -> None:
    path = cache_path(trace, what)
    try:
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    except OSError as err:
        warnings.warn(f"could not cache aggregates in {path.parent} ({err}); they will be recomputed",
                      stacklevel=3)


def label_groups(labels) -> tuple[list[str], np.ndarray]:
    """``(names, doc_code)``: label groups as :class:`TraceCounts` sorts them, and each document's group."""
    names = np.array([UNLABELLED if x is None else str(x) for x in labels], dtype=object)
    groups = sorted(set(names.tolist()), key=lambda s: (s == UNLABELLED, s))
    lookup = {g: i for i, g in enumerate(groups)}
    return groups, np.array([lookup[x] for x in names], dtype=np.int64)


class _Accumulator:
    def __init__(self, num_layers, groups, num_experts):
        self.L, self.G, self.E = num_layers, groups, num_experts
        self.label_counts = np.zeros(num_layers * groups * num_experts, np.int64)
        self.label_weight = np.zeros(num_layers * groups * num_experts, np.float64)
        self.label_hits = np.zeros(num_layers * groups * num_experts, np.int64)
        self.label_tokens = np.zeros(groups, np.int64)
        self.coact = np.zeros(num_layers * num_experts * num_experts, np.int64)
        self.trans = np.zeros(max(num_layers - 1, 0) * num_experts * num_experts, np.int64)
        self.sample_t = np.full((num_layers * groups * num_experts, SAMPLES), -1, np.int64)
        self.sample_w = np.zeros((num_layers * groups * num_experts, SAMPLES), np.float32)
        self.filled = np.zeros(num_layers * groups * num_experts, np.int64)
        self.open = len(self.filled)

    def add(self, t, code, idx, w, chunk: int = 4096) -> None:
        """Add ``[L, n, k]`` routing of tokens ``t`` (``[n]``) with label groups ``code`` (``[n]``)."""
        for start in range(0, len(t), chunk):
            sl = slice(start, start + chunk)
            self._add(t[sl], code[sl], idx[:, sl], w[:, sl])

    def _add(self, t, code, idx, w) -> None:
        # empty slots (and, for co-activation, repeats) go to a sentinel bin instead of being masked out
        L, G, E = self.L, self.G, self.E
        idx = idx.astype(np.int64)
        valid = idx >= 0
        self.label_tokens += np.bincount(code, minlength=G)
        size = L * G * E
        key = (np.arange(L)[:, None, None] * G + code[None, :, None]) * E + idx
        key = np.where(valid, key, size)
        self.label_counts += np.bincount(key.reshape(-1), minlength=size + 1)[:size]
        self.label_weight += np.bincount(key.reshape(-1), weights=w.reshape(-1).astype(np.float64),
                                         minlength=size + 1)[:size]
        e1 = E + 1
        distinct = distinct_slots(idx)
        hit_key = np.where(distinct >= 0, key, size)  # each token once per expert
        self.label_hits += np.bincount(hit_key.reshape(-1), minlength=size + 1)[:size]
        distinct = np.where(distinct >= 0, distinct, E)
        i, j = np.triu_indices(idx.shape[2], 1)
        pairs = (np.arange(L)[:, None, None] * (e1 * e1) + distinct[:, :, i] * e1 + distinct[:, :, j]).reshape(-1)
        table = np.bincount(pairs, minlength=L * e1 * e1).reshape(L, e1, e1)[:, :E, :E]
        self.coact += table.reshape(-1)
        if L > 1:
            src = np.where(idx[:-1, :, 0] >= 0, idx[:-1, :, 0], E)
            dst = np.where(idx[1:, :, 0] >= 0, idx[1:, :, 0], E)
            keys = (np.arange(L - 1)[:, None] * (e1 * e1) + src * e1 + dst).reshape(-1)
            self.trans += np.bincount(keys, minlength=(L - 1) * e1 * e1).reshape(L - 1, e1, e1)[:, :E, :E].reshape(-1)
        self._sample(t, hit_key, w)

    def _sample(self, t, key, w) -> None:
        if self.open == 0:
            return
        filled = np.append(self.filled, SAMPLES)  # the sentinel bin of empty slots is always full
        take = filled[key] < SAMPLES
        if not take.any():
            return
        tt = np.broadcast_to(t[None, :, None], key.shape)[take]
        kk, ww = key[take], w[take]
        order = np.lexsort((tt, kk))
        kk, tt, ww = kk[order], tt[order], ww[order]
        first = np.r_[0, np.flatnonzero(np.diff(kk)) + 1]
        rank = np.arange(len(kk)) - np.repeat(first, np.diff(np.r_[first, len(kk)]))
        slot = self.filled[kk] + rank
        ok = slot < SAMPLES
        self.sample_t[kk[ok], slot[ok]] = tt[ok]
        self.sample_w[kk[ok], slot[ok]] = ww[ok]
        np.add.at(self.filled, kk[ok], 1)
        self.open = int((self.filled < SAMPLES).sum())

    def arrays(self) -> dict:
        L, G, E = self.L, self.G, self.E
        coact = self.coact.reshape(L, E, E)
        return {"label_counts": self.label_counts.reshape(L, G, E), "label_weight": self.label_weight.reshape(L, G, E),
                "label_hits": self.label_hits.reshape(L, G, E),
                "label_tokens": self.label_tokens, "coact": coact + coact.transpose(0, 2, 1),
                "transitions": self.trans.reshape(max(L - 1, 0), E, E),
                "sample_t": self.sample_t.reshape(L, G, E, SAMPLES),
                "sample_w": self.sample_w.reshape(L, G, E, SAMPLES)}


def compute_counts(trace, progress: bool = False) -> dict:
    """One pass over ``trace``'s shards: the arrays of :class:`StoreCounts`."""
    from tqdm.auto import tqdm

    groups, doc_code = label_groups(trace.doc_labels)
    acc = _Accumulator(len(trace.layers), len(groups), trace.num_experts)
    quiet = not progress or trace.num_tokens < 100_000
    with tqdm(total=trace.num_tokens, desc="aggregating", unit="tok", disable=quiet) as bar:
        for rows in trace.iter_batches():
            acc.add(rows.t, doc_code[rows.doc], rows.idx, rows.w)
            bar.update(len(rows.t))
    return acc.arrays()


class StoreCounts:
    """The :class:`~workbench.analysis.counts.TraceCounts` of a stored trace, from cached aggregates.

    Extra attributes: ``label_hits`` (``[L, G, E]`` tokens with the expert in any slot: differs from
    ``label_counts`` only where an edit put one expert in two slots), ``transitions`` (``[L-1, E, E]`` rank-0 transitions), ``sample_t`` /
    ``sample_w`` (``[L, G, E, S]`` first tokens routed to each expert per label, ``-1`` padded).
    """

    def __init__(self, trace, arrays: dict):
        self.trace = trace
        self.k = trace.top_k
        self.label_names, self._doc_code = label_groups(trace.doc_labels)
        for name, value in arrays.items():
            setattr(self, name, value)
        self.counts = self.label_counts.sum(axis=1)
        self.weight = self.label_weight.sum(axis=1)
        per_doc = np.bincount(trace.doc, minlength=trace.num_docs) if trace.num_tokens else \
            np.zeros(trace.num_docs, np.int64)
        self.doc_start = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)

    num_experts = property(lambda self: int(self.trace.num_experts))
    num_tokens = property(lambda self: int(self.trace.num_tokens))
    uniform = property(lambda self: self.k / self.num_experts)

    @functools.cached_property
    def doc_order(self) -> np.ndarray:
        """Stores keep tokens in document then position order (made once: widgets slice it per click)."""
        return np.arange(self.num_tokens)

    @property
    def label_code(self) -> np.ndarray:
        return self._doc_code[self.trace.doc]

    def doc_tokens(self, doc: int) -> np.ndarray:
        if not 0 <= doc < len(self.doc_start) - 1:
            raise ValueError(f"document {doc} is out of range 0..{len(self.doc_start) - 2}")
        return np.arange(self.doc_start[doc], self.doc_start[doc + 1])

    def label_index(self, label) -> int:
        name = UNLABELLED if label is None else str(label)
        if name not in self.label_names:
            raise ValueError(f"label {label!r} is not in the trace; labels: {self.label_names}")
        return self.label_names.index(name)

    def _groups(self, labels) -> list[int]:
        if labels is None:
            return list(range(len(self.label_names)))
        return [self.label_index(x) for x in np.atleast_1d(np.asarray(labels, dtype=object))]

    def select_counts(self, labels=None):
        if labels is None:
            return self.counts, self.weight, self.num_tokens
        g = self._groups(labels)
        return self.label_counts[:, g].sum(axis=1), self.label_weight[:, g].sum(axis=1), int(self.label_tokens[g].sum())

    def routed_sample(self, layer_pos: int, expert: int, labels=None, limit: int = 40):
        """``(tokens, weights, total)``: the first ``limit`` tokens routed to ``expert`` (any slot) at
        layer position ``layer_pos``, their weights there, and how many tokens were routed there."""
        g = self._groups(labels)
        total = int(self.label_hits[layer_pos, g, expert].sum())
        if limit > SAMPLES:
            hits = self.routed_to(layer_pos, expert, labels)[:limit]
            idx, w = self.trace.slots([layer_pos], hits)
            return hits, (w[0] * (idx[0] == expert)).max(axis=1, initial=0.0), total
        t = self.sample_t[layer_pos, g, expert].reshape(-1)
        w = self.sample_w[layer_pos, g, expert].reshape(-1)
        order = np.argsort(np.where(t >= 0, t, np.iinfo(np.int64).max), kind="stable")
        t, w = t[order], w[order]
        keep = t >= 0
        return t[keep][:limit], w[keep][:limit], total

    def routed_to(self, layer_pos: int, expert: int, labels=None) -> np.ndarray:
        """Every token routed to ``expert`` at layer position ``layer_pos`` (a pass over one layer)."""
        groups = None if labels is None else set(self._groups(labels))
        layer = self.trace.layers[layer_pos]
        hits = []
        for rows in self.trace.iter_batches(layers=[layer]):
            hit = (rows.idx[0] == expert).any(axis=1)
            if groups is not None:
                hit &= np.isin(self._doc_code[rows.doc], list(groups))
            hits.append(rows.t[hit])
        return np.concatenate(hits) if hits else np.zeros(0, np.int64)


def store_counts(trace, progress: bool = True) -> StoreCounts:
    """The (cached) :class:`StoreCounts` of a :class:`~workbench.store.stored.StoredTrace`."""
    memo = trace._base.cache.get(cache_key(trace, "counts"))
    if memo is not None:
        return memo
    arrays = load_cached(trace, "counts")
    if arrays is None:
        arrays = compute_counts(trace, progress=progress)
        save_cached(trace, "counts", arrays)
    counts = StoreCounts(trace, arrays)
    trace._base.cache[cache_key(trace, "counts")] = counts
    return counts
