"""Embedding a text file into an ``[N, D]`` float32 ``.npy`` matrix (the ``embed`` command's work).

Example:
    >>> import tempfile, numpy as np, workbench as wb
    >>> from pathlib import Path
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> from workbench.embeddings.export import embed_to_file
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("mixtral")))
    >>> out = Path(tempfile.mkdtemp()) / "x.npy"
    >>> embed_to_file(emb, ["a cat", "a dog", "a cow"], "concat", out).shape
    (3, 48)
    >>> np.load(out).dtype
    dtype('float32')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def embed_to_file(embedder, texts, kind: str, out, *, alpha: float | None = None, reference=None,
                  progress: bool = False) -> np.ndarray:
    """Embed ``texts`` and write the ``[N, D]`` float32 matrix (input order) to ``out`` (``.npy``).

    For ``kind="concat"`` an unfitted embedder is first fitted on ``reference`` texts, or, when
    none are given, on ``texts`` themselves.
    """
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must be a .npy file, got {out}")
    parts = embedder.parts(texts, progress=progress)
    if kind == "concat" and not embedder.fitted:
        embedder.fit(parts if reference is None else reference, progress=progress)
    matrix = np.ascontiguousarray(embedder.vectors(parts, kind, alpha), dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, matrix, allow_pickle=False)
    return matrix
