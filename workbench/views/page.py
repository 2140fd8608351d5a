"""A self-contained HTML page of figures and tables (the report's ``index.html``).

Figures are embedded as plotly divs that share one ``<script src=...>`` of plotly.js (a local file,
so the page works offline); tables are rendered with every cell HTML-escaped.

Example:
    >>> import pandas as pd, plotly.graph_objects as go
    >>> from workbench.views.page import Section, render_page
    >>> page = render_page("Report", [Section("Load", "What it shows.", go.Figure(go.Bar(y=[1])),
    ...                    table=pd.DataFrame({"token": ["<script>"]}))], plotlyjs_src="plotly.min.js")
    >>> "<td class='text'>&lt;script&gt;</td>" in page, "<td class='text'><script>" in page
    (True, False)
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #222; line-height: 1.45; }
header { border-bottom: 2px solid #0072B2; margin-bottom: 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
.meta td, .meta th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
.note { background: #fff6e0; border-left: 4px solid #E69F00; padding: 8px 12px; }
table.data { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
table.data th, table.data td { border-bottom: 1px solid #e4e4e4; padding: 3px 8px; text-align: right; }
table.data td.text { font-family: ui-monospace, monospace; text-align: left; white-space: pre; }
.links a { margin-right: 14px; } nav a { margin-right: 12px; }
"""


@dataclass
class Section:
    """One part of the page: a heading, a method paragraph, optional figure, table and links."""

    title: str
    text: str
    figure: object | None = None
    table: pd.DataFrame | None = None
    links: dict = field(default_factory=dict)
    anchor: str = ""


def table_html(frame: pd.DataFrame, max_rows: int = 20, digits: int = 3) -> str:
    """An HTML table of the first ``max_rows`` rows; every cell escaped, floats rounded."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.head(max_rows).itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f"<td>{value:.{digits}f}</td>")
            elif isinstance(value, str):
                text = html.escape(value).replace("\n", "↵").replace("\t", "⇥")
                cells.append(f"<td class='text'>{text}</td>")
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<caption style='caption-side:bottom'>first {max_rows} of {len(frame)} rows</caption>" \
        if len(frame) > max_rows else ""
    return f"<table class='data'>{more}<tr>{head}</tr>{''.join(rows)}</table>"


def _anchor(section: Section, i: int) -> str:
    return section.anchor or f"s{i}"


def render_page(title: str, sections: list[Section], *, plotlyjs_src: str = "plotly.min.js",
                meta: dict | None = None, notes: list[str] | None = None) -> str:
    """The full HTML page.

    Args:
        title: page title.
        sections: the :class:`Section` list, in order.
        plotlyjs_src: relative path of a local plotly.js file (loaded once).
        meta: key/value pairs shown under the title (escaped).
        notes: warnings shown in a box under the title (escaped).
    """
    meta_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in (meta or {}).items())
    note_html = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in (notes or []))
    nav = " ".join(f"<a href='#{_anchor(s, i)}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        parts = [f"<h2 id='{_anchor(s, i)}'>{html.escape(s.title)}</h2>", f"<p>{html.escape(s.text)}</p>"]
        if s.figure is not None:
            parts.append(s.figure.to_html(full_html=False, include_plotlyjs=False,
                                          config={"displaylogo": False, "responsive": True}))
        if s.table is not None:
            parts.append(table_html(s.table))
        if s.links:
            parts.append("<p class='links'>" + "".join(
                f"<a href='{html.escape(href, quote=True)}'>{html.escape(name)}</a>"
                for name, href in s.links.items()) + "</p>")
        body.append("<section>" + "".join(parts) + "</section>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script src='{html.escape(plotlyjs_src, quote=True)}'></script></head><body>"
            f"<header><h1>{html.escape(title)}</h1><table class='meta'>{meta_rows}</table></header>"
            f"{note_html}<nav>{nav}</nav>{''.join(body)}</body></html>")
