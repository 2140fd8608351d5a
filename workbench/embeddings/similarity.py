"""The arithmetic of MoEE: cosine similarities, the sum similarity, its exported vectors, and
standardisation with statistics fitted once on a reference set.

Everything here is numpy on ``[N, D]`` float arrays and holds no model state.

The sum similarity of two texts ``a`` and ``b`` is

    ``sim(a, b) = cos(HS_a, HS_b) + α · cos(RW_a, RW_b)``

and :func:`sum_vectors` turns each text into one vector ``[HS/|HS|, √α · RW/|RW|]`` whose dot
products are exactly that similarity, so it can go into any vector index.

Example:
    >>> import numpy as np
    >>> from workbench.embeddings.similarity import sum_similarity, sum_vectors
    >>> rng = np.random.default_rng(0)
    >>> hs, rw = rng.normal(size=(3, 5)), rng.normal(size=(3, 8))
    >>> v = sum_vectors(hs, rw, alpha=0.5)
    >>> bool(np.allclose(v @ v.T, sum_similarity(hs, rw, hs, rw, alpha=0.5), atol=1e-6))
    True
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def as_matrix(x, name: str = "array") -> np.ndarray:
    """``x`` as a 2-D float array ``[N, D]`` (a single vector becomes ``[1, D]``)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D] (or one [D] vector), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def l2_normalize(x) -> np.ndarray:
    """Rows of ``x [N, D]`` scaled to unit length (all-zero rows stay zero)."""
    x = as_matrix(x)
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.maximum(norms, EPS)).astype(x.dtype)


def cosine_matrix(a, b=None) -> np.ndarray:
    """Cosine similarities ``[Na, Nb]`` between the rows of ``a [Na, D]`` and ``b [Nb, D]`` (default ``a``)."""
    a = l2_normalize(as_matrix(a, "a").astype(np.float64))
    b = a if b is None else l2_normalize(as_matrix(b, "b").astype(np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} dimensions and b has {b.shape[1]}: embed both the same way")
    return a @ b.T


def check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    return alpha


def sum_similarity(hs_a, rw_a, hs_b=None, rw_b=None, alpha: float = 1.0) -> np.ndarray:
    """MoEE (sum): ``cos(HS_a, HS_b) + α · cos(RW_a, RW_b)``, a ``[Na, Nb]`` matrix.

    Args:
        hs_a: final hidden states ``[Na, H]``; rw_a: routing weights ``[Na, R]``.
        hs_b, rw_b: the other side (default: the ``a`` side).
        alpha: weight of the routing part (``α >= 0``; the paper's default is 1).
    """
    alpha = check_alpha(alpha)
    if (hs_b is None) != (rw_b is None):
        raise ValueError("give both hs_b and rw_b, or neither")
    return cosine_matrix(hs_a, hs_b) + alpha * cosine_matrix(rw_a, rw_b)


def sum_vectors(hs, rw, alpha: float = 1.0) -> np.ndarray:
    """One vector per text whose dot products equal the sum similarity.

    Args:
        hs: ``[N, H]`` final hidden states.
        rw: ``[N, R]`` routing weights.
        alpha: weight of the routing part.

    Returns:
        ``[N, H + R]`` float32: ``[HS/|HS|, √α · RW/|RW|]``; each row has norm ``√(1 + α)``.
    """
    hs, rw = as_matrix(hs, "hs"), as_matrix(rw, "rw")
    if hs.shape[0] != rw.shape[0]:
        raise ValueError(f"hs has {hs.shape[0]} rows and rw {rw.shape[0]}: they must describe the same texts")
    alpha = check_alpha(alpha)
    return np.concatenate([l2_normalize(hs.astype(np.float64)),
                           np.sqrt(alpha) * l2_normalize(rw.astype(np.float64))], axis=1).astype(np.float32)


class Standardizer:
    """Per-dimension ``z = (x - mean) / std`` with statistics fitted once on a reference set.

    The statistics are fixed after :meth:`fit`, so a text's standardised vector never depends on
    which other texts are embedded with it (unlike per-batch standardisation). Dimensions that are
    constant on the reference set (``std`` below ``min_std``) are centred but not scaled.

    Example:
        >>> import numpy as np
        >>> z = Standardizer().fit(np.array([[0.0, 1.0], [2.0, 1.0]]))
        >>> z.transform(np.array([[1.0, 1.0], [3.0, 2.0]])).tolist()
        [[0.0, 0.0], [2.0, 1.0]]
    """

    def __init__(self, mean=None, std=None, min_std: float = 1e-6):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.min_std = float(min_std)

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, x) -> "Standardizer":
        """Fit mean and std on the rows of ``x [N, D]`` (N >= 2)."""
        x = as_matrix(x).astype(np.float64)
        if x.shape[0] < 2:
            raise ValueError(f"standardisation needs at least 2 reference texts, got {x.shape[0]}")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std < self.min_std, 1.0, std)
        return self

    def transform(self, x) -> np.ndarray:
        """``(x - mean) / std`` for ``x [N, D]`` with the fitted statistics."""
        if not self.fitted:
            raise RuntimeError("this Standardizer is not fitted: call fit(reference) first")
        x = as_matrix(x)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"fitted on {self.mean.shape[0]} dimensions, got {x.shape[1]}")
        return ((x.astype(np.float64) - self.mean) / self.std).astype(np.float32)
