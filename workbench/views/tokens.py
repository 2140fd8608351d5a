"""Token × layer heatmap: which expert each token of a document went to, layer by layer.

Cell colour is the expert id at one slot rank (0 = the heaviest weight); hovering shows the token
text (HTML-escaped), its position, and every expert of that token with its routing weight.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.views import token_heatmap
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> trace = wb.record(lm, ["The quick brown fox"], progress=False)
    >>> fig = token_heatmap(trace, doc=0)
    >>> fig.data[0].z.shape == (2, trace.num_tokens)
    True
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.views._style import SEQUENTIAL, category_axis, escape_token, style

#: Cell text (expert ids) is drawn when the window has at most this many tokens.
CELL_TEXT_MAX = 48
#: At most this many token labels on the x axis.
TICKS_MAX = 48


def doc_token_index(trace, doc: int) -> np.ndarray:
    """Token indices of document ``doc`` in position order."""
    counts = getattr(trace, "doc_tokens", None)
    if counts is not None:
        return counts(doc)
    if not 0 <= doc < max(trace.num_docs, 1):
        raise ValueError(f"document {doc} is out of range 0..{trace.num_docs - 1}")
    index = np.flatnonzero(trace.doc == doc)
    return index[np.argsort(trace.pos[index], kind="stable")]


def token_width(num_tokens: int) -> int:
    """Figure width in pixels that leaves each token column readable (600 to 1200)."""
    return int(min(1200, max(600, 180 + 15 * num_tokens)))


def token_ticks(positions, text, most: int = TICKS_MAX) -> dict:
    """X-axis settings that label at most ``most`` tokens (every n-th when the window is longer)."""
    step = max(1, -(-len(positions) // most))
    return dict(tickmode="array", tickvals=list(positions)[::step], ticktext=list(text)[::step], tickangle=-60)


def token_heatmap_data(trace, doc: int = 0, *, layers=None, start: int = 0, max_tokens: int = 128,
                       rank: int = 0, counts=None) -> dict:
    """Arrays of :func:`token_heatmap` (widgets update a figure with them).

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace`.
        doc: document index.
        layers: decoder-layer indices to show (default: all recorded).
        start: first token (position in the document) of the window.
        max_tokens: window length.
        rank: slot rank whose expert colours the cell (0 = heaviest).
        counts: the trace's :class:`~workbench.analysis.counts.TraceCounts`, if at hand (faster).

    Returns:
        ``z [L', n]`` (expert id, NaN for an empty slot), ``hovertext [L', n]``, ``x`` (positions),
        ``ticktext`` (escaped token text), ``y`` (layers), ``tokens`` (token indices in the trace).
    """
    if not 0 <= rank < trace.k:
        raise ValueError(f"rank must be in 0..{trace.k - 1}, got {rank}")
    layers = list(trace.layers) if layers is None else [int(x) for x in np.atleast_1d(layers)]
    if not layers:
        raise ValueError("choose at least one layer")
    layer_pos = [trace.layer_index(x) for x in layers]
    index = (counts if counts is not None else trace)
    index = doc_token_index(index, doc)[max(start, 0):max(start, 0) + max_tokens]
    idx, w = trace.slots(layer_pos, index)  # [L', n, k] each; a stored trace reads only these rows
    z = idx[:, :, rank].astype(np.float64)
    z[z < 0] = np.nan
    text = [escape_token(trace.token_text.get(int(t), f"<{int(t)}>")) for t in trace.token_ids[index]]
    pos = trace.pos[index]
    hover = []
    for li, layer in enumerate(layers):
        row = []
        for j in range(len(index)):
            experts = ", ".join(f"{int(e)} ({float(v):.2f})" for e, v in zip(idx[li, j], w[li, j]) if e >= 0)
            row.append(f"<b>{text[j]}</b><br>doc {doc}, position {int(pos[j])}<br>layer {layer}"
                       f"<br>experts (weight): {experts or 'none'}")
        hover.append(row)
    return {"z": z, "hovertext": hover, "x": pos.astype(np.int64).tolist(), "ticktext": text,
            "y": layers, "tokens": index}


def token_heatmap(trace, doc: int = 0, *, layers=None, start: int = 0, max_tokens: int = 128,
                  rank: int = 0, counts=None, title: str | None = None) -> go.Figure:
    """Token × layer heatmap of the experts chosen for one document.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace`.
        doc: document index.
        layers: decoder layers to show (default: all recorded).
        start: first position of the window; ``max_tokens``: its length.
        rank: slot rank whose expert colours the cell.
        counts: optional :class:`~workbench.analysis.counts.TraceCounts` of the trace.
        title: figure title (default says what is plotted).

    Returns:
        A ``go.Figure`` with one ``Heatmap`` trace (x: token position, y: decoder layer).
    """
    data = token_heatmap_data(trace, doc, layers=layers, start=start, max_tokens=max_tokens, rank=rank,
                              counts=counts)
    label = trace.doc_labels[doc] if trace.doc_labels and doc < len(trace.doc_labels) else None
    fig = go.Figure(go.Heatmap(
        z=data["z"], x=data["x"], y=data["y"], hovertext=data["hovertext"], hoverinfo="text",
        colorscale=SEQUENTIAL, zmin=0, zmax=max(trace.num_experts - 1, 1), xgap=1, ygap=1,
        texttemplate="%{z}" if len(data["x"]) <= CELL_TEXT_MAX else None,
        colorbar=dict(title=dict(text="expert id" if rank == 0 else f"expert (rank {rank})"))))
    default = (f"Experts chosen per token (rank-{rank} slot), document {doc}"
               + (f" [{label}]" if label is not None else ""))
    style(fig, title or default, x="token (position in document)", y="decoder layer",
          height=max(260, 60 + 28 * len(data["y"])), width=token_width(len(data["x"])))
    fig.update_xaxes(showgrid=False, **token_ticks(data["x"], data["ticktext"]))
    fig.update_yaxes(autorange="reversed", **category_axis(data["y"]))
    return fig
