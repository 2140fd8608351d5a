"""A row of export controls for a widget: format, folder, button, status line.

The bar asks its owner for what to export (``{name: figure or DataFrame}``) when the button is
pressed, so it always writes the current state. Figures go to PNG/SVG/HTML, tables to CSV; without
Chromium, PNG/SVG report how to install it and HTML/CSV still work.

Example:
    >>> import pandas as pd, tempfile
    >>> from workbench.widgets.export_bar import ExportBar
    >>> bar = ExportBar(lambda: {"table": pd.DataFrame({"a": [1]})}, folder=tempfile.mkdtemp())
    >>> bar.format.value = "csv"
    >>> [p.name for p in bar.export()]
    ['table.csv']
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import ipywidgets as W
import pandas as pd

from workbench.export import ChromiumNotFoundError, save_figure, save_figures, save_table

FORMATS = [("HTML (interactive, offline)", "html"), ("PNG", "png"), ("SVG", "svg"), ("CSV (tables)", "csv")]


class ExportBar(W.HBox):
    """Export controls. ``items`` is called on export and returns ``{name: figure | DataFrame}``."""

    def __init__(self, items: Callable[[], dict], folder="exports", prefix: str = ""):
        self._items = items
        self.prefix = prefix
        self.format = W.Dropdown(options=FORMATS, value="html", description="export",
                                 layout=W.Layout(width="260px"))
        self.folder = W.Text(value=str(folder), description="to folder", layout=W.Layout(width="320px"))
        self.button = W.Button(description="Export", icon="download", button_style="",
                               tooltip="write the current figures (or tables, for CSV) to the folder")
        self.status = W.HTML(value="")
        self.button.on_click(self._on_click)
        super().__init__([self.format, self.folder, self.button, self.status],
                         layout=W.Layout(flex_flow="row wrap", align_items="center"))

    def _on_click(self, _button) -> None:
        try:
            self.export()
        except Exception as err:  # shown in the status line; the button must not die
            self.status.value = f"<span style='color:#D55E00'>{html.escape(str(err))}</span>"

    def export(self, fmt: str | None = None) -> list[Path]:
        """Write every item of the chosen (or given) format; returns the paths written."""
        fmt = fmt or self.format.value
        folder = Path(self.folder.value).expanduser()
        items = self._items()
        written: list[Path] = []
        try:
            if fmt == "csv":
                for name, obj in items.items():
                    if isinstance(obj, pd.DataFrame):
                        written.append(save_table(obj, folder / f"{self.prefix}{name}.csv"))
            else:
                figures = {folder / f"{self.prefix}{name}.{fmt}": obj for name, obj in items.items()
                           if not isinstance(obj, pd.DataFrame)}
                if fmt == "html":
                    written = [save_figure(fig, path) for path, fig in figures.items()]
                elif figures:
                    written = save_figures(figures)
        except ChromiumNotFoundError as err:
            self.status.value = f"<span style='color:#D55E00'>{html.escape(str(err))}</span>"
            raise
        names = ", ".join(html.escape(p.name) for p in written) or "nothing of that kind"
        self.status.value = f"wrote {names} to {html.escape(str(folder))}"
        return written
