"""The recorded-routing object: compact arrays, token text, metadata; tidy DataFrame; save/load.

Shapes: ``T`` recorded tokens, ``L`` recorded MoE layers, ``k`` slots (the largest number of experts
any token used), ``E`` routed experts. Empty slots hold expert ``-1`` and weight 0. Slots are in
rank order: heaviest routing weight first.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> trace = wb.record(lm, ["hello world", "def add(a, b):"], labels=["en", "code"], progress=False)
    >>> trace.topk_idx.shape[0], trace.num_docs
    (2, 2)
    >>> list(trace.to_dataframe().columns)[:7]
    ['doc', 'pos', 'token', 'layer', 'rank', 'expert', 'weight']
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file

from workbench.token_bytes import partial_token_bytes  # noqa: F401 (part of this module's API)
from workbench.token_bytes import _bytes_string, _raw_bytes, char_spans, token_labels

SCHEMA_VERSION = 1
TRACE_FILE = "trace.safetensors"
META_FILE = "trace.json"


class TraceMismatchError(ValueError):
    """A trace does not belong to the model (or other trace) it is used with."""


class TraceMethods:
    """What the in-memory and the stored trace share (needs ``layers``, ``token_ids``, ``doc``,
    ``token_text``, ``doc_labels``, ``fingerprint``, ``meta``)."""

    def layer_index(self, layer: int) -> int:
        """Position of decoder layer ``layer`` in the ``L`` axis."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        return self.layers.index(layer)

    def tokens(self) -> list[str]:
        """The text of every recorded token, in order."""
        return [self.token_text.get(int(t), f"<{int(t)}>") for t in self.token_ids]

    # -- token text on character boundaries ----------------------------------------------
    def _pieces(self, tokens) -> list[bytes]:
        """The bytes of the tokens at trace indices ``tokens`` (raw bytes where a token is part of a
        character, see :func:`partial_token_bytes`; else its text in UTF-8)."""
        raw = _raw_bytes(self.meta)
        text = self.token_text
        ids = self.token_ids[np.asarray(tokens, dtype=np.int64)] if len(np.atleast_1d(tokens)) else []
        return [raw[t] if t in raw else text.get(t, f"<{t}>").encode("utf-8")
                for t in (int(x) for x in np.atleast_1d(ids))]

    def char_spans(self, tokens) -> list[tuple[str, int, int]]:
        """``(character, first, last)`` for the text of the tokens at trace indices ``tokens``:
        ``first``/``last`` index ``tokens`` (a character split across tokens spans several)."""
        return char_spans(self._pieces(tokens))

    def text_of(self, tokens) -> str:
        """The text of the tokens at trace indices ``tokens``, decoded as one byte string, so that a
        character split across tokens (byte-level BPE) comes out whole."""
        return "".join(c for c, _, _ in self.char_spans(tokens))

    def token_labels(self, tokens) -> list[str]:
        """One display string per token of ``tokens`` (trace indices, in text order), on character
        boundaries: a character whose bytes several tokens share is shown on each of them, with
        ``…`` on the side where it continues (``"¿…"``, ``"…¿"``)."""
        return token_labels(self._pieces(tokens))

    def token_string(self, token_id: int) -> str:
        """The text of one token id alone: its decoded text, or, for a token that is only part of a
        character, the whole characters it holds and ``‹hex›`` for the partial bytes (``"‹c2›"``)."""
        raw = _raw_bytes(self.meta).get(int(token_id))
        if raw is None:
            return self.token_text.get(int(token_id), f"<{int(token_id)}>")
        return _bytes_string(raw)

    def labels(self) -> np.ndarray:
        """``[T]`` the document label of every token (object array, None when unlabelled)."""
        doc_labels = np.array(list(self.doc_labels) + [None], dtype=object)
        return doc_labels[np.minimum(self.doc, len(self.doc_labels))] if self.doc_labels else \
            np.full(self.num_tokens, None, dtype=object)

    def check_model(self, lm) -> None:
        """Raise :class:`TraceMismatchError` unless the trace was recorded on ``lm``."""
        if lm.fingerprint != self.fingerprint:
            raise TraceMismatchError(
                f"this trace was recorded on another model ({self.meta.get('model', '?')}, fingerprint "
                f"{self.fingerprint}); the model given is {lm.name} (fingerprint {lm.fingerprint}). "
                "Record the texts again on this model.")


@dataclass
class RoutingTrace(TraceMethods):
    """Routing of ``T`` tokens through ``L`` MoE layers.

    Attributes:
        topk_idx: ``[L, T, k]`` int16 expert ids (``-1`` = empty slot).
        topk_w: ``[L, T, k]`` float32 routing weights.
        token_ids: ``[T]`` int64.
        doc: ``[T]`` int32 document index.
        pos: ``[T]`` int32 position of the token in its document.
        layers: the ``L`` decoder-layer indices recorded.
        num_experts: ``E``.
        fingerprint: the recording model's fingerprint.
        token_text: ``{token_id: text}`` for every id in the trace.
        doc_labels: one label (or None) per document.
        scores: optional ``[L, T, E]`` float16 router logits.
        meta: model name, adapter, ``top_k``, anything else worth keeping.
    """

    topk_idx: np.ndarray
    topk_w: np.ndarray
    token_ids: np.ndarray
    doc: np.ndarray
    pos: np.ndarray
    layers: list[int]
    num_experts: int
    fingerprint: str
    token_text: dict[int, str] = field(default_factory=dict)
    doc_labels: list = field(default_factory=list)
    scores: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.topk_idx = np.asarray(self.topk_idx, dtype=np.int16)
        self.topk_w = np.asarray(self.topk_w, dtype=np.float32)
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        self.doc = np.asarray(self.doc, dtype=np.int32)
        self.pos = np.asarray(self.pos, dtype=np.int32)
        self.layers = [int(x) for x in self.layers]
        num_layers, num_tokens = len(self.layers), len(self.token_ids)
        if self.topk_idx.ndim != 3 or self.topk_idx.shape[:2] != (num_layers, num_tokens):
            raise ValueError(f"topk_idx must be [L={num_layers}, T={num_tokens}, k], got {self.topk_idx.shape}")
        if self.topk_w.shape != self.topk_idx.shape:
            raise ValueError(f"topk_w {self.topk_w.shape} must match topk_idx {self.topk_idx.shape}")
        if self.doc.shape != (num_tokens,) or self.pos.shape != (num_tokens,):
            raise ValueError("doc and pos must have one entry per token")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float16)
            if self.scores.shape != (num_layers, num_tokens, self.num_experts):
                raise ValueError(f"scores must be [L, T, E]={num_layers, num_tokens, self.num_experts}, "
                                 f"got {self.scores.shape}")
        if self.topk_idx.size and int(self.topk_idx.max()) >= self.num_experts:
            raise ValueError(f"expert id {int(self.topk_idx.max())} >= num_experts={self.num_experts}")
        self.token_text = {int(k): v for k, v in self.token_text.items()}

    # -- sizes ---------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_docs(self) -> int:
        return len(self.doc_labels) if self.doc_labels else (int(self.doc.max()) + 1 if self.num_tokens else 0)

    @property
    def k(self) -> int:
        return int(self.topk_idx.shape[2])

    @property
    def top_k(self) -> int:
        """The model's own k (may differ from :attr:`k` for edited recordings)."""
        return int(self.meta.get("top_k", self.k))

    @property
    def has_scores(self) -> bool:
        return self.scores is not None

    def slots(self, layer_pos, tokens) -> tuple[np.ndarray, np.ndarray]:
        """``(idx [L', n, k], w [L', n, k])`` of some tokens at some layer positions."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return self.topk_idx[list(layer_pos)][:, tokens], self.topk_w[list(layer_pos)][:, tokens]

    def materialize(self, max_slots=None) -> "RoutingTrace":
        """The trace itself (it is in memory already); stored traces return theirs."""
        return self

    def to_store(self, out):
        """Write this trace as a store (:mod:`workbench.store`) in ``out`` and open it lazily."""
        from workbench.store import write_store
        return write_store(self, out)

    # -- views of the data ---------------------------------------------------------------
    def to_dataframe(self, include_empty: bool = False) -> pd.DataFrame:
        """Tidy table: one row per (token, layer, rank).

        Columns: ``doc``, ``pos``, ``token``, ``layer`` (decoder-layer index), ``rank``, ``expert``,
        ``weight``, ``token_id``, ``label``, ``t`` (token index in the trace). Empty slots are left
        out unless ``include_empty``.
        """
        num_layers, num_tokens, k = self.topk_idx.shape
        t = np.broadcast_to(np.arange(num_tokens)[None, :, None], (num_layers, num_tokens, k)).reshape(-1)
        layer = np.broadcast_to(np.array(self.layers)[:, None, None], (num_layers, num_tokens, k)).reshape(-1)
        rank = np.broadcast_to(np.arange(k)[None, None, :], (num_layers, num_tokens, k)).reshape(-1)
        expert = self.topk_idx.reshape(-1).astype(np.int64)
        weight = self.topk_w.reshape(-1)
        keep = slice(None) if include_empty else expert >= 0
        t, layer, rank, expert, weight = t[keep], layer[keep], rank[keep], expert[keep], weight[keep]
        tokens = np.array(self.tokens(), dtype=object)
        return pd.DataFrame({
            "doc": self.doc[t], "pos": self.pos[t], "token": tokens[t] if len(tokens) else tokens,
            "layer": layer, "rank": rank, "expert": expert, "weight": weight,
            "token_id": self.token_ids[t], "label": self.labels()[t] if num_tokens else [], "t": t,
        })

    def select(self, docs=None, layers=None, labels=None) -> "RoutingTrace":
        """A trace restricted to some documents, layers and/or labels (documents are renumbered)."""
        keep = np.ones(self.num_tokens, dtype=bool)
        if docs is not None:
            keep &= np.isin(self.doc, np.atleast_1d(docs))
        if labels is not None:
            keep &= np.isin(self.labels().astype(str), np.atleast_1d(labels).astype(str))
        layer_pos = list(range(len(self.layers))) if layers is None else \
            [self.layer_index(x) for x in np.atleast_1d(layers)]
        old_docs = np.unique(self.doc[keep])
        remap = np.full(int(self.doc.max()) + 1 if self.num_tokens else 1, -1, dtype=np.int32)
        remap[old_docs] = np.arange(len(old_docs), dtype=np.int32)
        return RoutingTrace(
            topk_idx=self.topk_idx[layer_pos][:, keep], topk_w=self.topk_w[layer_pos][:, keep],
            token_ids=self.token_ids[keep], doc=remap[self.doc[keep]], pos=self.pos[keep],
            layers=[self.layers[i] for i in layer_pos], num_experts=self.num_experts,
            fingerprint=self.fingerprint, token_text=self.token_text,
            doc_labels=[self.doc_labels[d] for d in old_docs] if self.doc_labels else [],
            scores=None if self.scores is None else self.scores[layer_pos][:, keep], meta=dict(self.meta))

    # -- model checks and combining ------------------------------------------------------
    @staticmethod
    def concat(traces: list["RoutingTrace"]) -> "RoutingTrace":
        """Join traces of the same model and layers; documents are renumbered in order."""
        if not traces:
            raise ValueError("concat needs at least one trace")
        first = traces[0]
        for other in traces[1:]:
            if other.fingerprint != first.fingerprint:
                raise TraceMismatchError(
                    f"cannot combine traces of different models (fingerprints {first.fingerprint} "
                    f"and {other.fingerprint})")
            if other.layers != first.layers:
                raise TraceMismatchError(f"cannot combine traces of layers {first.layers} and {other.layers}")
            if (other.scores is None) != (first.scores is None):
                raise ValueError("cannot combine traces with and without router scores")
        k = max(t.k for t in traces)
        offsets = np.cumsum([0] + [t.num_docs for t in traces[:-1]])
        text, labels, raw = {}, [], {}
        for t in traces:
            text.update(t.token_text)
            raw.update(t.meta.get("token_bytes") or {})
            labels.extend(t.doc_labels if t.doc_labels else [None] * t.num_docs)
        return RoutingTrace(
            topk_idx=np.concatenate([_pad_k(t.topk_idx, k, -1) for t in traces], axis=1),
            topk_w=np.concatenate([_pad_k(t.topk_w, k, 0.0) for t in traces], axis=1),
            token_ids=np.concatenate([t.token_ids for t in traces]),
            doc=np.concatenate([t.doc + o for t, o in zip(traces, offsets)]),
            pos=np.concatenate([t.pos for t in traces]), layers=first.layers,
            num_experts=first.num_experts, fingerprint=first.fingerprint, token_text=text,
            doc_labels=labels,
            scores=None if first.scores is None else np.concatenate([t.scores for t in traces], axis=1),
            meta=dict(first.meta, **({"token_bytes": raw} if raw else {})))

    # -- persistence (no pickle) ---------------------------------------------------------
    def save(self, path, overwrite: bool = False) -> Path:
        """Write ``trace.safetensors`` and ``trace.json`` into directory ``path`` (each atomically).

        A folder that already holds a trace is refused unless ``overwrite``; for large traces use a
        store (``wb.record(..., out=...)`` or :meth:`to_store`).
        """
        from workbench.store.files import atomic_path

        path = Path(path)
        if ((path / META_FILE).exists() or (path / TRACE_FILE).exists()) and not overwrite:
            raise FileExistsError(f"{path} already holds {META_FILE}/{TRACE_FILE}; choose another folder or pass "
                                  "overwrite=True")
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"topk_idx": self.topk_idx, "topk_w": self.topk_w, "token_ids": self.token_ids,
                  "doc": self.doc, "pos": self.pos}
        if self.scores is not None:
            arrays["scores"] = self.scores
        with atomic_path(path / TRACE_FILE) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        meta = {"schema_version": SCHEMA_VERSION, "layers": self.layers, "num_experts": self.num_experts,
                "fingerprint": self.fingerprint, "doc_labels": list(self.doc_labels),
                "token_text": {str(k): v for k, v in sorted(self.token_text.items())}, "meta": self.meta}
        with atomic_path(path / META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path) -> "RoutingTrace":
        """Read a trace written by :meth:`save`, or a store (``wb.record(..., out=...)``) into memory.

        Large stores should be opened lazily with :func:`workbench.open_trace` instead.
        """
        path = Path(path)
        if (path / "manifest.json").is_file() and not (path / META_FILE).is_file():
            from workbench.store import open_trace
            return open_trace(path).materialize()  # a store: read it into memory
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no routing trace ({META_FILE} missing)")
        meta = json.loads((path / META_FILE).read_text())
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"trace schema version {version} is not supported (this workbench reads "
                             f"version {SCHEMA_VERSION}); re-record it")
        arrays = load_file(str(path / TRACE_FILE))
        return cls(topk_idx=arrays["topk_idx"], topk_w=arrays["topk_w"], token_ids=arrays["token_ids"],
                   doc=arrays["doc"], pos=arrays["pos"], layers=meta["layers"],
                   num_experts=meta["num_experts"], fingerprint=meta["fingerprint"],
                   token_text={int(k): v for k, v in meta["token_text"].items()},
                   doc_labels=meta["doc_labels"], scores=arrays.get("scores"), meta=meta.get("meta", {}))

    # -- display -------------------------------------------------------------------------
    def summary(self) -> dict:
        counts = pd.Series(self.doc_labels, dtype=object).value_counts().to_dict() if self.doc_labels else {}
        return {"model": self.meta.get("model", "?"), "fingerprint": self.fingerprint,
                "tokens": self.num_tokens, "documents": self.num_docs, "layers": self.layers,
                "experts": self.num_experts, "k": self.k, "labels": counts,
                "scores": self.scores is not None}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"RoutingTrace({s['tokens']} tokens, {s['documents']} docs, layers={s['layers']}, "
                f"E={s['experts']}, k={s['k']}, model={s['model']})")

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in s.items())
        preview = ""
        if self.num_tokens:
            first = self.topk_idx[0, :40, 0]
            tokens = self.tokens()[:40]
            spans = "".join(f"<span title='layer {self.layers[0]}: expert {int(e)}' "
                            f"style='border-bottom:2px solid #888;margin-right:1px'>{html.escape(t)}</span>"
                            for t, e in zip(tokens, first))
            preview = f"<div style='font-family:monospace;white-space:pre-wrap'>{spans}</div>"
        return f"<div><b>RoutingTrace</b><table>{rows}</table>{preview}</div>"


def _pad_k(a: np.ndarray, k: int, fill) -> np.ndarray:
    if a.shape[2] == k:
        return a
    pad = np.full(a.shape[:2] + (k - a.shape[2],), fill, dtype=a.dtype)
    return np.concatenate([a, pad], axis=2)


def is_stored(trace) -> bool:
    """Whether ``trace`` is a :class:`~workbench.store.StoredTrace` (on disk) rather than in memory."""
    return bool(getattr(trace, "is_stored", False))


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()
