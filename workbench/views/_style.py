"""Shared look of the views: colour scales readable with colour-vision deficiency, safe token text.

Token text reaches plotly as hover text and tick labels, which plotly renders as (a subset of) HTML,
and it reaches exported HTML files inside the figure JSON: every token string goes through
:func:`escape_token` first, so ``<script>`` in a text shows as text and never runs.

Example:
    >>> from workbench.views._style import escape_token
    >>> escape_token('<script>alert("x")</script>\\n')
    '&lt;script&gt;alert("x")&lt;/script&gt;↵'
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

#: Sequential scale for counts and shares (perceptually uniform, colour-blind safe).
SEQUENTIAL = "Viridis"
#: Scale for ratios against a baseline (cividis: designed for colour-vision deficiency).
RATIO = "Cividis"
#: Categorical palette (Okabe-Ito), for bars and lines.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"]
#: Paul Tol's "muted" qualitative scheme: nine colours distinct with colour-vision deficiency.
MUTED = ["#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499"]
#: Paul Tol's discrete rainbow (23 colours); ``RAINBOW_INDEX[n]`` picks the ``n`` most distinct.
RAINBOW = ["#E8ECFB", "#D9CCE3", "#D1BBD7", "#CAACCB", "#BA8DB4", "#AE76A3", "#AA6F9E", "#994F88", "#882E72",
           "#1965B0", "#437DBF", "#5289C7", "#6195CF", "#7BAFDE", "#4EB265", "#90C987", "#CAE0AB", "#F7F056",
           "#F7CB45", "#F6C141", "#F4A736", "#F1932D", "#EE8026", "#E8601C", "#E65518", "#DC050C", "#A5170E",
           "#72190E", "#42150A"]
RAINBOW_INDEX = {
    10: [8, 9, 13, 14, 16, 17, 20, 23, 25, 27], 11: [8, 9, 11, 13, 14, 16, 17, 20, 23, 25, 27],
    12: [2, 5, 8, 9, 11, 13, 14, 16, 17, 20, 23, 25], 13: [2, 5, 8, 9, 11, 13, 14, 15, 16, 17, 20, 23, 25],
    14: [2, 5, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25],
    15: [2, 5, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25, 27],
    16: [2, 4, 6, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25, 27],
    17: [2, 4, 6, 7, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25, 27],
    18: [2, 4, 6, 7, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25, 26, 27],
    19: [1, 3, 4, 6, 7, 8, 9, 11, 13, 14, 15, 16, 17, 19, 21, 23, 25, 26, 27],
    20: [1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 19, 21, 23, 25, 26, 27],
    21: [1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 22, 24, 25, 26, 27],
    22: [1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 22, 24, 25, 26, 27, 28],
    23: [0, 1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 22, 24, 25, 26, 27, 28],
}
#: Most distinct categories a palette gives; beyond, colours repeat (say so, and label the marks).
MAX_CATEGORIES = 23
TEMPLATE = "plotly_white"
#: Widest figure in pixels: fits JupyterLab's output area (~960 px beside the prompt) and the report column.
MAX_WIDTH = 940


def palette(n: int) -> list[str]:
    """``n`` categorical colours, as distinct as possible and readable with colour-vision deficiency.

    Okabe-Ito up to 8 categories, Paul Tol's "muted" for 9, his discrete rainbow for 10 to 23;
    beyond 23 the 23 colours repeat in order (label the marks as well).

    Example:
        >>> len(palette(9)), len(set(palette(9))), len(set(palette(40)))
        (9, 9, 23)
    """
    n = int(n)
    if n <= 0:
        return []
    if n <= len(PALETTE):
        return PALETTE[:n]
    if n <= len(MUTED):
        return MUTED[:n]
    base = [RAINBOW[i] for i in RAINBOW_INDEX[min(n, MAX_CATEGORIES)]]
    return [base[i % len(base)] for i in range(n)]


def discrete_colorscale(n: int) -> list:
    """A plotly colour scale of ``n`` flat bands, for integer codes ``0..n-1`` drawn with
    ``zmin=-0.5, zmax=n-0.5`` (categories, not a continuum)."""
    colours = palette(max(n, 1))
    scale = []
    for i, colour in enumerate(colours):
        scale += [[i / len(colours), colour], [(i + 1) / len(colours), colour]]
    return scale


def fit_width(width: float) -> int:
    """``width`` in pixels, capped at :data:`MAX_WIDTH`."""
    return int(min(MAX_WIDTH, width))


def escape_token(text) -> str:
    """HTML-escaped token text with newlines and tabs made visible (``↵``, ``⇥``; all-space: ``␣``).

    Quotes are left as they are: plotly draws ``&quot;`` literally, and the text never lands inside
    an HTML attribute.
    """
    text = str(text)
    if text and not text.strip(" "):
        return "␣" * len(text)
    return html.escape(text, quote=False).replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def style(fig: go.Figure, title: str, x: str | None = None, y: str | None = None,
          height: int | None = None, width: int | None = None) -> go.Figure:
    """Apply the common layout: title, axis titles, white template, compact margins."""
    fig.update_layout(template=TEMPLATE, title=dict(text=escape_token(title), x=0.01, xanchor="left"),
                      margin=dict(l=70, r=20, t=60, b=60), font=dict(size=12))
    if height:
        fig.update_layout(height=height)
    if width:
        fig.update_layout(width=fit_width(width))
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


def category_axis(values) -> dict:
    """Axis settings that show every value of a short integer axis as a category."""
    values = list(values)
    return dict(tickmode="array", tickvals=values, ticktext=[str(v) for v in values])


def need_columns(frame, columns, what: str) -> None:
    """Raise a ValueError naming the analysis to run when ``frame`` lacks some ``columns``."""
    missing = [c for c in columns if c not in getattr(frame, "columns", [])]
    if missing:
        raise ValueError(f"this view needs the output of {what} (columns {missing} are missing)")
