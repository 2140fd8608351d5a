"""Routing-weight embeddings (MoEE, Li & Zhou, ICLR 2025): an MoE model's routing as a free text
embedding, alone (RW), with the final hidden state (HS), concatenated (standardised) or summed as
similarities.

Public surface:

* :class:`MoEEmbedder` — ``parts``, ``embed(texts, kind)``, ``similarity``, ``fit``, ``save``/``load``;
* :class:`MTEBEncoder`, :class:`SentenceEncoder` — the mteb and sentence-transformers ``encode``;
* :func:`sum_vectors`, :func:`sum_similarity`, :func:`cosine_matrix`, :class:`Standardizer`;
* :mod:`workbench.embeddings.evaluate` — classification, clustering and retrieval comparisons;
* :mod:`workbench.embeddings.explore` — projections, heatmaps and neighbours for the widget.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("qwen2_moe")), unit="logits")
    >>> parts = emb.parts(["a cat sat on the mat", "def f(x): return x"])
    >>> emb.similarity(parts, kind="sum", alpha=1.0).round(3).diagonal().tolist()
    [2.0, 2.0]
"""

from workbench.embeddings.embedder import KINDS, EmbedderConfig, MoEEmbedder
from workbench.embeddings.encoders import MTEBEncoder, SentenceEncoder
from workbench.embeddings.extract import UNITS, EmbeddingParts, extract
from workbench.embeddings.similarity import Standardizer, cosine_matrix, sum_similarity, sum_vectors
from workbench.embeddings.templates import TEMPLATES, apply_template

__all__ = [
    "KINDS", "TEMPLATES", "UNITS", "EmbedderConfig", "EmbeddingParts", "MTEBEncoder", "MoEEmbedder",
    "SentenceEncoder", "Standardizer", "apply_template", "cosine_matrix", "extract", "sum_similarity",
    "sum_vectors",
]
