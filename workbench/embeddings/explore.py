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
from workbench.views._style import MAX_WIDTH, SEQUENTIAL, escape_token, palette, style

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
    """Scatter plots, one per kind, coloured by label (one trace per kind × label).

    One colour per label from :func:`~workbench.views._style.palette` (colour-blind safe, as many
    colours as labels up to 23; beyond, colours repeat and the hover names the label). Up to three
    kinds sit side by side, four in a 2 × 2 grid; the legend is under the panels, so the figure
    stays within :data:`~workbench.views._style.MAX_WIDTH` pixels.
    """
    kinds = list(dict.fromkeys(table.kind))
    labels = list(dict.fromkeys(table.label))
    colours = palette(len(labels))
    cols = len(kinds) if len(kinds) <= 3 else 2
    rows = -(-len(kinds) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[TITLES.get(k, k) for k in kinds],
                        horizontal_spacing=0.04, vertical_spacing=0.1 if rows > 1 else 0.0)
    for i, kind in enumerate(kinds):
        row, col = i // cols + 1, i % cols + 1
        part = table[table.kind == kind]
        for n, label in enumerate(labels):
            rows_ = part[part.label == label]
            fig.add_trace(go.Scatter(
                x=rows_.x.to_numpy(), y=rows_.y.to_numpy(), mode="markers", name=escape_token(label or "texts"),
                legendgroup=str(label), showlegend=i == 0, marker=dict(color=colours[n], size=7),
                text=[escape_token(_short(t)) for t in rows_.text],
                hovertemplate="%{text}<extra>%{fullData.name}</extra>",
            ), row=row, col=col)
    fig.update_xaxes(showticklabels=False, title=dict(text="PC 1", standoff=4, font=dict(size=11)))
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(title=dict(text="PC 2", standoff=4, font=dict(size=11)), col=1)
    panel = min(300, (MAX_WIDTH - 60) // cols)
    style(fig, title, height=110 + rows * (panel + 20) + 24 * (1 + len(labels) // 6), width=60 + cols * panel)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.04, xanchor="left", x=0),
                      margin=dict(l=30, r=30, t=70, b=20))
    return fig


def similarity(embedder, parts, kind: str = "sum", alpha: float | None = None) -> np.ndarray:
    """``[N, N]`` similarity matrix of ``kind`` (see :meth:`MoEEmbedder.similarity`)."""
    return embedder.similarity(parts, kind=kind, alpha=alpha)


def heatmap_figure(sim, texts, labels=None, title: str = "similarity") -> go.Figure:
    """Heatmap of a ``[N, N]`` similarity, texts ordered by label."""
    sim = np.asarray(sim)
    labels = ["" for _ in texts] if labels is None else [str(x) for x in labels]
    order = sorted(range(len(texts)), key=lambda i: (labels[i], i))
    names = [escape_token(f"{i}: {labels[i]} {_short(texts[i], 30)}".strip()) for i in order]
    fig = go.Figure(go.Heatmap(z=sim[np.ix_(order, order)], x=names, y=names, colorscale=SEQUENTIAL,
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
