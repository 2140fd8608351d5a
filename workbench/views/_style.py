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
TEMPLATE = "plotly_white"


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
        fig.update_layout(width=width)
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
