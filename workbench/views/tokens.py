"""Token × layer heatmap: which expert each token of a document went to, layer by layer.

Cell colour and number are the expert id at one slot rank (0 = the heaviest weight): a categorical
palette (one colour per expert, :func:`~workbench.views._style.palette`), not a continuous scale.
Every token keeps its label: a window longer than :data:`PAGE_TOKENS` scrolls (drag the range
slider under the map) instead of dropping labels. Token text is decoded on character boundaries
(:meth:`~workbench.trace.TraceMethods.token_labels`) and HTML-escaped; hovering shows it, its
position, and every expert of that token with its routing weight.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.views import token_heatmap
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> trace = wb.record(lm, ["The quick brown fox"], progress=False)
    >>> fig = token_heatmap(trace, doc=0)
    >>> fig.data[0].z.shape == (2, trace.num_tokens), fig.data[0].texttemplate
    (True, '%{z}')
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.views._style import MAX_CATEGORIES, MAX_WIDTH, category_axis, discrete_colorscale, escape_token, style

#: Token columns visible at once; a longer window scrolls with the range slider under the map.
PAGE_TOKENS = 48
#: Width of one token column in pixels (room for a vertical token label and a two-digit id).
COLUMN_PX = 16
#: Margins, colour bar and axis title around the columns, in pixels.
FRAME_PX = 190
#: Kept for callers of the old API: cell numbers are now drawn at every window length.
CELL_TEXT_MAX = None


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
    """Figure width in pixels: one :data:`COLUMN_PX` column per visible token, at most
    :data:`~workbench.views._style.MAX_WIDTH` (fits JupyterLab's output area and the report)."""
    return int(min(MAX_WIDTH, max(420, FRAME_PX + COLUMN_PX * min(num_tokens, PAGE_TOKENS))))


def token_ticks(positions, text, page: int = PAGE_TOKENS) -> dict:
    """X-axis settings that label every token (vertical labels); with more than ``page`` tokens the
    axis shows the first ``page`` and a range slider scrolls through the rest."""
    positions = list(positions)
    axis = dict(tickmode="array", tickvals=positions, ticktext=list(text), tickangle=-90,
                tickfont=dict(size=10), rangeslider=dict(visible=False), autorange=True, range=None)
    if len(positions) > page:
        first = positions[0]
        axis.update(autorange=False, range=[first - 0.5, first + page - 0.5],
                    rangeslider=dict(visible=True, thickness=0.06))
    return axis


def colour_settings(num_experts: int, rank: int = 0, num_layers: int = 8) -> dict:
    """Heatmap settings that draw expert ids ``0..E-1`` as categories (one flat colour each); the
    colour bar labels every id that has room (about 14 px each), the cells carry every number."""
    name = "expert id" if rank == 0 else f"expert (rank {rank})"
    settings = dict(colorscale=discrete_colorscale(num_experts), zmin=-0.5, zmax=num_experts - 0.5)
    if num_experts <= MAX_CATEGORIES:
        room = max(1, (28 * num_layers + 40) // 14)
        step = -(-num_experts // room)
        settings.update(showscale=True, colorbar=dict(title=dict(text=name), tickmode="array",
                                                      tickvals=list(range(0, num_experts, step)), len=1.0))
    else:  # colours repeat: a colour bar would mislead; the number in each cell is the id
        settings.update(showscale=False)
    return settings


def token_title(trace, doc: int, rank: int, data: dict) -> str:
    """The default title: slot rank, document, its label, and the token window when partial."""
    labels = trace.doc_labels
    label = labels[doc] if labels and doc < len(labels) and labels[doc] is not None else None
    title = f"Experts chosen per token (rank-{rank} slot), document {doc}" + (f" [{label}]" if label is not None else "")
    x, total = data["x"], data.get("total", len(data["x"]))
    if not x:
        return title + " (no tokens in this window)"
    if len(x) < total:
        title += f", tokens {x[0]}–{x[-1]} of {total}"
    return title


def token_heatmap_data(trace, doc: int = 0, *, layers=None, start: int = 0, max_tokens: int = 128,
                       rank: int = 0, counts=None) -> dict:
    """Arrays of :func:`token_heatmap` (widgets update a figure with them).

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace`.
        doc: document index.
        layers: decoder-layer indices to show (default: all recorded).
        start: first token (position in the document) of the window; must lie in the document.
        max_tokens: window length.
        rank: slot rank whose expert colours the cell (0 = heaviest).
        counts: the trace's :class:`~workbench.analysis.counts.TraceCounts`, if at hand (faster).

    Returns:
        ``z [L', n]`` (expert id, NaN for an empty slot), ``hovertext [L', n]``, ``x`` (positions),
        ``ticktext`` (escaped token text, whole characters), ``y`` (layers), ``tokens`` (token
        indices in the trace), ``total`` (tokens in the document).

    Raises:
        ValueError: ``start`` is past the document's last token, or ``rank``/``layers`` are invalid.
    """
    if not 0 <= rank < trace.k:
        raise ValueError(f"rank must be in 0..{trace.k - 1}, got {rank}")
    layers = list(trace.layers) if layers is None else [int(x) for x in np.atleast_1d(layers)]
    if not layers:
        raise ValueError("choose at least one layer")
    layer_pos = [trace.layer_index(x) for x in layers]
    full = doc_token_index(counts if counts is not None else trace, doc)
    start = max(int(start), 0)
    if full.size and start >= full.size:
        raise ValueError(f"document {doc} has {full.size} tokens (positions 0..{full.size - 1}); "
                         f"start={start} is past its end")
    index = full[start:start + max(int(max_tokens), 1)]
    idx, w = trace.slots(layer_pos, index)  # [L', n, k] each; a stored trace reads only these rows
    z = idx[:, :, rank].astype(np.float64)
    z[z < 0] = np.nan
    if hasattr(trace, "token_labels"):
        raw = trace.token_labels(index)
    else:
        raw = [trace.token_text.get(int(t), f"<{int(t)}>") for t in trace.token_ids[index]]
    text = [escape_token(t) for t in raw]
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
            "y": layers, "tokens": index, "total": int(full.size)}


def token_height(num_layers: int, num_tokens: int) -> int:
    """Figure height: one row per layer, room for vertical token labels and the range slider."""
    return int(max(300, 150 + 28 * num_layers + (60 if num_tokens > PAGE_TOKENS else 0)))


def token_heatmap(trace, doc: int = 0, *, layers=None, start: int = 0, max_tokens: int = 128,
                  rank: int = 0, counts=None, title: str | None = None) -> go.Figure:
    """Token × layer heatmap of the experts chosen for one document.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace`.
        doc: document index.
        layers: decoder layers to show (default: all recorded).
        start: first position of the window; ``max_tokens``: its length (more than
            :data:`PAGE_TOKENS` tokens scroll with a range slider).
        rank: slot rank whose expert colours the cell.
        counts: optional :class:`~workbench.analysis.counts.TraceCounts` of the trace.
        title: figure title (default says what is plotted, the document's label and the window).

    Returns:
        A ``go.Figure`` with one ``Heatmap`` trace (x: token position, y: decoder layer), the expert
        id written in every cell, at most :data:`~workbench.views._style.MAX_WIDTH` pixels wide.
    """
    data = token_heatmap_data(trace, doc, layers=layers, start=start, max_tokens=max_tokens, rank=rank,
                              counts=counts)
    fig = go.Figure(go.Heatmap(
        z=data["z"], x=data["x"], y=data["y"], hovertext=data["hovertext"], hoverinfo="text",
        xgap=1, ygap=1, texttemplate="%{z}", textfont=dict(size=9),
        **colour_settings(trace.num_experts, rank, len(data["y"]))))
    style(fig, title or token_title(trace, doc, rank, data), x="token (position in document)", y="decoder layer",
          height=token_height(len(data["y"]), len(data["x"])), width=token_width(len(data["x"])))
    fig.update_layout(margin=dict(b=40))
    fig.update_xaxes(showgrid=False, **token_ticks(data["x"], data["ticktext"]))
    fig.update_yaxes(autorange="reversed", fixedrange=True, **category_axis(data["y"]))
    return fig


def token_caption(trace, max_tokens: int) -> str:
    """The report's paragraph for :func:`token_heatmap` (says what this figure really shows)."""
    repeat = "" if trace.num_experts <= MAX_CATEGORIES else (
        f" With {trace.num_experts} experts the {MAX_CATEGORIES} colours repeat: read the number.")
    scroll = (f" At most {PAGE_TOKENS} tokens are in view: drag the slider under the map to scroll "
              f"(up to the first {max_tokens} tokens of the document are drawn).") if max_tokens > PAGE_TOKENS else (
        f" Up to the first {max_tokens} tokens of the document are drawn.")
    return ("Each column is a token of the document (its text under the column), each row an MoE layer; "
            "the colour and the number in each cell are the expert in the token's heaviest slot, one colour "
            f"per expert.{repeat}{scroll} Hover a cell for the token text and every expert chosen for it "
            "with its routing weight. Runs of one colour along a row show an expert that keeps a stretch of "
            "text; changes down a column show how a token's routing moves with depth.")
