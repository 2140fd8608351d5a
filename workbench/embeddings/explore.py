"""Views of text embeddings: 2D projections side by side, a similarity heatmap, nearest neighbours.

Pure functions from :class:`~workbench.embeddings.extract.EmbeddingParts` (computed once) to
DataFrames and plotly figures; :class:`workbench.widgets.embeddings.EmbeddingExplorer` wires them to
controls. Projections are PCA (numpy SVD) of the L2-normalised vectors, so distances in the plot
follow the cosine (or, for MoEE sum, the sum similarity).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> from workbench.embeddings.explore import projections, projection_figure
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("mixtral")))
    >>> texts = ["a cat", "a dog", "def f(x): pass", "12 + 34 = 46"]
    >>> parts = emb.parts(texts)
    >>> table = projections(emb, parts, texts, ["en", "en", "code", "math"])
    >>> sorted(table.kind.unique()), len(table)
    (['hs', 'rw', 'sum'], 12)
    >>> len(projection_figure(table).data)
    9
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.embeddings.similarity import l2_normalize
from workbench.views._style import PALETTE, escape_token, style

TITLES = {"hs": "HS (final hidden state)", "rw": "RW (routing weights)", "concat": "MoEE concat",
          "sum": "MoEE sum"}


def pca_2d(x) -> np.ndarray:
    """``[N, 2]`` coordinates of ``x [N, D]`` on its two principal axes (signs fixed: deterministic)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2 or not np.any(centred):
        return np.zeros((x.shape[0], 2))
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), range(2)])
    return coords * np.where(signs == 0, 1.0, signs)


def available_kinds(embedder) -> list[str]:
    """The kinds the embedder can produce now (``concat`` only once fitted)."""
    return [k for k in ("hs", "rw", "concat", "sum") if k != "concat" or embedder.fitted]


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def projections(embedder, parts, texts, labels=None, kinds=None, alpha: float | None = None) -> pd.DataFrame:
    """One row per (kind, text): ``kind, index, x, y, label, text`` (PCA of each kind's vectors)."""
    kinds = kinds or available_kinds(embedder)
    labels = ["" for _ in texts] if labels is None else [str(x) for x in labels]
    if not (len(texts) == len(labels) == len(parts)):
        raise ValueError(f"{len(texts)} texts, {len(labels)} labels and {len(parts)} embedded rows: "
                         "give one text and one label per embedded row")
    frames = []
    for kind in kinds:
        xy = pca_2d(l2_normalize(embedder.vectors(parts, kind, alpha)))
        frames.append(pd.DataFrame({"kind": kind, "index": np.arange(len(texts)), "x": xy[:, 0], "y": xy[:, 1],
                                    "label": labels, "text": list(texts)}))
    return pd.concat(frames, ignore_index=True)


def projection_figure(table: pd.DataFrame, title: str = "2D projections (PCA) by embedding kind") -> go.Figure:
    """Scatter plots side by side, one per kind, coloured by label (one trace per kind × label)."""
    kinds = list(dict.fromkeys(table.kind))
    labels = list(dict.fromkeys(table.label))
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[TITLES.get(k, k) for k in kinds],
                        horizontal_spacing=0.04)
    for col, kind in enumerate(kinds, 1):
        part = table[table.kind == kind]
        for n, label in enumerate(labels):
            rows = part[part.label == label]
            fig.add_trace(go.Scatter(
                x=rows.x.to_numpy(), y=rows.y.to_numpy(), mode="markers", name=escape_token(label or "texts"),
                legendgroup=str(label), showlegend=col == 1, marker=dict(color=PALETTE[n % len(PALETTE)], size=7),
                text=[escape_token(_short(t)) for t in rows.text],
                hovertemplate="%{text}<extra>%{fullData.name}</extra>",
            ), row=1, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return style(fig, title, height=380, width=max(420, 330 * len(kinds)))


def similarity(embedder, parts, kind: str = "sum", alpha: float | None = None) -> np.ndarray:
    """``[N, N]`` similarity matrix of ``kind`` (see :meth:`MoEEmbedder.similarity`)."""
    return embedder.similarity(parts, kind=kind, alpha=alpha)


def heatmap_figure(sim, texts, labels=None, title: str = "similarity") -> go.Figure:
    """Heatmap of a ``[N, N]`` similarity, texts ordered by label."""
    sim = np.asarray(sim)
    labels = ["" for _ in texts] if labels is None else [str(x) for x in labels]
    order = sorted(range(len(texts)), key=lambda i: (labels[i], i))
    names = [escape_token(f"{i}: {labels[i]} {_short(texts[i], 30)}".strip()) for i in order]
    fig = go.Figure(go.Heatmap(z=sim[np.ix_(order, order)], x=names, y=names, colorscale="Viridis",
                               hovertemplate="%{y}<br>%{x}<br>similarity %{z:.3f}<extra></extra>"))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    return style(fig, title, height=460, width=520)


def neighbours(embedder, parts, texts, query: str, labels=None, kind: str = "sum", alpha: float | None = None,
               k: int = 5) -> pd.DataFrame:
    """The ``k`` texts most similar to ``query``: ``rank, similarity, index, label, text``."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("type a query text to search for")
    q = embedder.parts([query])
    sims = embedder.similarity(q, parts, kind=kind, alpha=alpha)[0]
    top = np.argsort(-sims, kind="stable")[: max(1, int(k))]
    labels = ["" for _ in texts] if labels is None else [str(x) for x in labels]
    return pd.DataFrame({"rank": np.arange(1, len(top) + 1), "similarity": sims[top], "index": top,
                         "label": [labels[i] for i in top], "text": [texts[i] for i in top]})
