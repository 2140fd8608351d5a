"""Encoders that other libraries can call: the MTEB encoder protocol and a sentence-transformers-
style ``encode``.

* :class:`MTEBEncoder` follows ``mteb``'s encoder protocol: ``encode(inputs, *, task_metadata=...,
  hf_split=..., hf_subset=..., prompt_type=None, **kwargs)`` where ``inputs`` is a DataLoader of
  batches ``{"text": [...]}`` (mteb 2), or ``encode(sentences, *, task_name=..., prompt_type=None,
  **kwargs)`` with a list of strings (mteb 1). Both return a float32 ``np.ndarray [N, D]``. It also
  has ``similarity`` and ``similarity_pairwise`` (checked against ``EncoderProtocol`` of mteb 2.26).
  ``prompt_type`` (query or document) is accepted and ignored: MoEE embeds both sides the same way.
  ``mteb`` itself is not needed; ``mteb_model_meta`` is an ``mteb.ModelMeta`` when mteb is
  installed and None otherwise (mteb 2 then keeps the encoder and describes it with an empty meta).
* :class:`SentenceEncoder` mimics ``SentenceTransformer.encode(sentences, batch_size=32,
  normalize_embeddings=False, convert_to_numpy=True)``.

With ``kind="sum"`` the vectors' dot product is the MoEE sum similarity, so ``similarity`` is the
dot product; for the other kinds it is the cosine.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder, MTEBEncoder, SentenceEncoder
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("mixtral")))
    >>> MTEBEncoder(emb).encode(["a cat", "a dog"], task_name="Demo").shape
    (2, 48)
    >>> SentenceEncoder(emb, kind="hs").encode("one text").shape
    (32,)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from workbench.embeddings.embedder import check_kind
from workbench.embeddings.similarity import check_alpha, l2_normalize


def flatten_inputs(inputs) -> list[str]:
    """Texts from a string list, or from an iterable of batches ``{"text": [...]}`` (an mteb DataLoader)."""
    if isinstance(inputs, str):
        raise TypeError("give a list of strings (or an mteb DataLoader), not one string")
    texts: list[str] = []
    for item in inputs:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping) and "text" in item:
            batch = item["text"]
            texts.extend([batch] if isinstance(batch, str) else list(batch))
        else:
            raise TypeError(f"cannot read texts from a {type(item).__name__}: expected strings or "
                            "batches {'text': [...]} as an mteb DataLoader yields")
    return texts


class _Base:
    def __init__(self, embedder, kind: str = "sum", alpha: float | None = None):
        self.embedder = embedder
        self.kind = check_kind(kind)
        self.alpha = embedder.config.alpha if alpha is None else check_alpha(alpha)
        if kind == "concat" and not embedder.fitted:
            raise RuntimeError("kind='concat' needs a fitted embedder: call embedder.fit(reference_texts) first")

    def _encode(self, texts, batch_size=None, progress=False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embedder.dims(self.kind)), dtype=np.float32)
        return self.embedder.embed(texts, kind=self.kind, alpha=self.alpha, progress=bool(progress),
                                   batch_size=batch_size)

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """``[N1, N2]`` similarities of two embedding matrices (dot product for sum, else cosine)."""
        a, b = np.atleast_2d(_numpy(embeddings1)), np.atleast_2d(_numpy(embeddings2))
        if self.kind != "sum":
            a, b = l2_normalize(a), l2_normalize(b)
        return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.float32)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """``[N]`` similarities of corresponding rows."""
        a, b = np.atleast_2d(_numpy(embeddings1)), np.atleast_2d(_numpy(embeddings2))
        if a.shape != b.shape:
            raise ValueError(f"pairwise similarity needs equal shapes, got {a.shape} and {b.shape}")
        if self.kind != "sum":
            a, b = l2_normalize(a), l2_normalize(b)
        return (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1).astype(np.float32)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class MTEBEncoder(_Base):
    """An MoEE embedder behind the ``mteb`` encoder protocol.

    Args:
        embedder: a :class:`~workbench.embeddings.MoEEmbedder` (fitted, for ``kind="concat"``).
        kind: ``"sum"`` (default), ``"hs"``, ``"rw"`` or ``"concat"``.
        alpha: RW weight for ``"sum"`` (default: the embedder's).
    """

    @property
    def mteb_model_meta(self):
        """An ``mteb.ModelMeta`` naming the model, kind and similarity, or None without mteb."""
        try:
            from mteb.models.model_meta import ModelMeta
        except ImportError:
            return None
        lm = self.embedder.lm
        fields = {"name": f"moe-workbench/{lm.adapter.name}-moee-{self.kind}", "revision": lm.fingerprint,
                  "embed_dim": self.embedder.dims(self.kind),
                  "similarity_fn_name": "dot" if self.kind == "sum" else "cosine"}
        try:
            return ModelMeta.create_empty(fields)
        except Exception:  # a future mteb may validate these fields differently
            return ModelMeta.create_empty()

    def encode(self, inputs, *, task_name: str | None = None, task_metadata=None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type=None, batch_size: int | None = None,
               show_progress_bar: bool = False, **kwargs) -> np.ndarray:
        """``[N, D]`` float32 embeddings of the texts in ``inputs`` (strings or mteb batches)."""
        return self._encode(flatten_inputs(inputs), batch_size=batch_size, progress=show_progress_bar)


class SentenceEncoder(_Base):
    """An MoEE embedder with a sentence-transformers-style ``encode``.

    Args:
        embedder: a :class:`~workbench.embeddings.MoEEmbedder`.
        kind: ``"sum"`` (default), ``"hs"``, ``"rw"`` or ``"concat"``.
        alpha: RW weight for ``"sum"`` (default: the embedder's).
    """

    def encode(self, sentences, batch_size: int = 32, show_progress_bar: bool | None = None,
               normalize_embeddings: bool = False, convert_to_numpy: bool = True,
               convert_to_tensor: bool = False, **kwargs):
        """Embeddings like ``SentenceTransformer.encode``.

        Returns:
            ``np.ndarray [N, D]`` (or ``[D]`` for one string); a ``torch.Tensor`` with
            ``convert_to_tensor=True``; a list of ``[D]`` tensors with ``convert_to_numpy=False``.
        """
        single = isinstance(sentences, str)
        out = self._encode([sentences] if single else list(sentences), batch_size=batch_size,
                           progress=bool(show_progress_bar))
        if normalize_embeddings:
            out = l2_normalize(out)
        if convert_to_tensor:
            tensor = torch.from_numpy(out)
            return tensor[0] if single else tensor
        if not convert_to_numpy:
            rows = [torch.from_numpy(row) for row in out]
            return rows[0] if single else rows
        return out[0] if single else out

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedder.dims(self.kind)
