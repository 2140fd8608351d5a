"""Export: figures to PNG, SVG, PDF or HTML; result tables to CSV.

* **HTML** needs no browser: plotly's ``write_html`` with plotly.js inline (``include_plotlyjs=True``)
  so the file works offline; token text in figures is HTML-escaped by the views.
* **PNG / SVG / PDF** are drawn by kaleido (≥ 1.0) in a headless Chromium. Kaleido's own Chrome
  download needs the internet, so the workbench points kaleido at the system browser: the first of
  ``$WORKBENCH_CHROMIUM``, ``$BROWSER_PATH``, ``/usr/bin/chromium`` and the usual names on ``PATH``.
  Without one, :class:`ChromiumNotFoundError` says how to install it (``apt-get install chromium``);
  HTML and CSV export keep working. ``WORKBENCH_CHROMIUM=none`` turns static export off.
* **CSV** is deterministic: rows sorted by every column in order, floats written with a fixed format,
  ``\\n`` line ends, so the same analysis gives byte-identical files.

Example:
    >>> import pandas as pd, plotly.graph_objects as go, tempfile, pathlib
    >>> from workbench.export import save_figure, save_table
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> save_figure(go.Figure(go.Bar(y=[1, 2])), out / "bar.html").stat().st_size > 1_000_000
    True
    >>> save_table(pd.DataFrame({"b": [0.5, 1 / 3], "a": [2, 1]}), out / "t.csv").read_text()
    'b,a\\n0.333333,1\\n0.5,2\\n'
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

STATIC_FORMATS = ("png", "svg", "pdf")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = ("PNG/SVG export draws figures in a headless Chromium, and none was found. On Debian/"
                "Ubuntu install it with `sudo apt-get install chromium` (or `make system-deps`), or set "
                "BROWSER_PATH to a Chrome/Chromium executable. HTML and CSV export work without it.")


class ChromiumNotFoundError(RuntimeError):
    """Static image export needs Chromium, and none was found."""


def find_chromium() -> str | None:
    """Path of the Chromium/Chrome used for static export, or None.

    ``WORKBENCH_CHROMIUM=none`` turns static export off (as if no browser were installed).
    """
    if os.environ.get("WORKBENCH_CHROMIUM", "").lower() in ("none", "off", "0"):
        return None
    for var in ("WORKBENCH_CHROMIUM", "BROWSER_PATH"):
        path = os.environ.get(var)
        if path and Path(path).is_file():
            return path
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def have_chromium() -> bool:
    """Whether PNG/SVG/PDF export can run here."""
    return find_chromium() is not None


def _format(path: Path, fmt: str | None) -> str:
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in STATIC_FORMATS + ("html", "json"):
        raise ValueError(f"cannot export a figure as {fmt!r} ({path.name}); use .png, .svg, .pdf, .html "
                         "or .json")
    return fmt


def _size(fig, width, height) -> tuple[int, int]:
    return (int(width or fig.layout.width or 1000), int(height or fig.layout.height or 500))


def save_figure(fig, path, *, format: str | None = None, width: int | None = None,
                height: int | None = None, scale: float = 2.0, include_plotlyjs=True) -> Path:
    """Write one figure; the format comes from ``format`` or the file suffix.

    Args:
        fig: a plotly figure (``go.Figure`` or ``go.FigureWidget``).
        path: output file (``.png``, ``.svg``, ``.pdf``, ``.html`` or ``.json``).
        format: overrides the suffix.
        width, height: pixels (default: the figure's own, else 1000 × 500).
        scale: pixel density of PNGs.
        include_plotlyjs: for HTML: True (inline, works offline; default), ``"directory"`` (a
            ``plotly.min.js`` beside the file) or False.

    Raises:
        ChromiumNotFoundError: for PNG/SVG/PDF when no Chromium is installed.
    """
    path = Path(path)
    fmt = _format(path, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        if include_plotlyjs == "cdn":
            raise ValueError("CDN plotly.js does not work offline; use True or 'directory'")
        fig.write_html(str(path), include_plotlyjs=include_plotlyjs, full_html=True,
                       config={"displaylogo": False})
        return path
    if fmt == "json":
        path.write_text(fig.to_json(), encoding="utf-8")
        return path
    save_figures({path: fig}, width=width, height=height, scale=scale)
    return path


def save_figures(figures: dict, *, width: int | None = None, height: int | None = None,
                 scale: float = 2.0) -> list[Path]:
    """Write many static images with one browser start (much faster than one call each).

    Args:
        figures: ``{path: figure}``; every path must end in ``.png``, ``.svg`` or ``.pdf``.
        width, height, scale: as in :func:`save_figure`.

    Raises:
        ChromiumNotFoundError: when no Chromium is installed.
    """
    browser = find_chromium()
    if browser is None:
        raise ChromiumNotFoundError(INSTALL_HINT)
    import kaleido

    jobs, paths = [], []
    for path, fig in figures.items():
        path = Path(path)
        fmt = _format(path, None)
        if fmt not in STATIC_FORMATS:
            raise ValueError(f"save_figures writes {STATIC_FORMATS} only, not {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = _size(fig, width, height)
        jobs.append({"fig": fig.to_dict(), "path": str(path),
                     "opts": {"format": fmt, "width": w, "height": h, "scale": scale}})
        paths.append(path)
    try:
        kaleido.write_fig_from_object_sync(jobs, kopts={"path": browser, "mathjax": False})
    except Exception as err:  # kaleido wraps browser failures in many types
        raise RuntimeError(f"static export with {browser} failed: {type(err).__name__}: {err}. "
                           "HTML export (.html) needs no browser.") from err
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"kaleido did not write {', '.join(map(str, missing))}")
    return paths


def table_for_csv(frame: pd.DataFrame, sort: bool | list = True) -> pd.DataFrame:
    """The table as :func:`save_table` writes it: index dropped, rows sorted."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    out = frame.reset_index(drop=True)
    if sort and len(out.columns):
        keys = list(out.columns) if sort is True else list(sort)
        out = out.sort_values(keys, key=_sort_key, kind="stable", na_position="last").reset_index(drop=True)
    return out


def _sort_key(column: pd.Series) -> pd.Series:
    """Text columns sort as strings, missing values last (mixed types never raise)."""
    if column.dtype != object:
        return column
    return column.map(lambda v: "\U0010ffff" if pd.isna(v) else str(v))


def save_table(frame: pd.DataFrame, path, *, sort: bool | list = True, float_format: str = "%.6g") -> Path:
    """Write a result table to CSV, deterministically.

    Args:
        frame: any analysis result.
        path: output ``.csv`` file.
        sort: True (all columns in order), a list of columns, or False (keep the order).
        float_format: printf-style format of floats (default 6 significant digits).
    """
    from workbench.store.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:  # a reader never sees half a table
        table_for_csv(frame, sort).to_csv(tmp, index=False, float_format=float_format, lineterminator="\n",
                                          encoding="utf-8")
    return path


def export(obj, path, **kwargs) -> Path:
    """Write a figure (by suffix) or a DataFrame (``.csv``) — one entry point for buttons and scripts."""
    path = Path(path)
    if isinstance(obj, pd.DataFrame):
        if path.suffix.lower() != ".csv":
            raise ValueError(f"tables are exported as .csv, not {path.suffix or 'no suffix'}")
        return save_table(obj, path, **kwargs)
    if hasattr(obj, "to_dict") and hasattr(obj, "write_html"):
        return save_figure(obj, path, **kwargs)
    raise TypeError(f"cannot export a {type(obj).__name__}; give a plotly figure or a pandas DataFrame")
