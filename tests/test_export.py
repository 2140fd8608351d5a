"""Export: deterministic CSV, offline HTML with escaped token text, PNG/SVG through system Chromium."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from test_views import SCRIPT, synthetic_trace

from workbench import analysis as A
from workbench import views
from workbench.export import (
    ChromiumNotFoundError,
    export,
    find_chromium,
    have_chromium,
    save_figure,
    save_figures,
    save_table,
)


def test_csv_is_sorted_and_byte_identical_whatever_the_row_order(tmp_path):
    frame = A.coactivation(synthetic_trace())
    shuffled = frame.sample(frac=1.0, random_state=3)
    a = save_table(frame, tmp_path / "a.csv").read_bytes()
    b = save_table(shuffled, tmp_path / "b.csv").read_bytes()
    assert a == b
    back = pd.read_csv(tmp_path / "a.csv")
    assert list(back.columns) == list(frame.columns)
    assert back[["layer", "a", "b"]].apply(tuple, axis=1).is_monotonic_increasing
    np.testing.assert_allclose(back.lift.to_numpy(), frame.sort_values(["layer", "a", "b"]).lift, rtol=1e-5)


def test_csv_float_format_and_mixed_columns(tmp_path):
    frame = pd.DataFrame({"label": ["b", None, "a"], "x": [1 / 3, 2.0, 1e-9]})
    text = save_table(frame, tmp_path / "t.csv").read_text()
    assert text.splitlines() == ["label,x", "a,1e-09", "b,0.333333", ",2"]
    with pytest.raises(TypeError, match="DataFrame"):
        save_table([1, 2], tmp_path / "x.csv")


def test_html_is_offline_and_escapes_token_text(tmp_path):
    fig = views.token_heatmap(synthetic_trace(), doc=0)
    page = save_figure(fig, tmp_path / "tokens.html").read_text(encoding="utf-8")
    assert SCRIPT not in page
    assert "&lt;script&gt;" in page
    assert '<script src="http' not in page and len(page) > 1_000_000  # plotly.js is inline
    with pytest.raises(ValueError, match="offline"):
        save_figure(fig, tmp_path / "x.html", include_plotlyjs="cdn")


def test_export_dispatches_by_type_and_suffix(tmp_path):
    assert export(pd.DataFrame({"a": [1]}), tmp_path / "t.csv").read_text() == "a\n1\n"
    assert export(go.Figure(), tmp_path / "f.json").read_text().startswith("{")
    with pytest.raises(ValueError, match=".csv"):
        export(pd.DataFrame({"a": [1]}), tmp_path / "t.png")
    with pytest.raises(ValueError, match="cannot export a figure as 'gif'"):
        export(go.Figure(), tmp_path / "f.gif")
    with pytest.raises(TypeError, match="plotly figure"):
        export(object(), tmp_path / "f.png")


def test_without_chromium_png_fails_with_install_hint_html_and_csv_work(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CHROMIUM", "none")
    assert find_chromium() is None and not have_chromium()
    fig = go.Figure(go.Bar(y=[1, 2]))
    for suffix in ("png", "svg"):
        with pytest.raises(ChromiumNotFoundError, match="apt-get install chromium"):
            save_figure(fig, tmp_path / f"f.{suffix}")
    assert save_figure(fig, tmp_path / "f.html").is_file()
    assert save_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv").is_file()


def test_browser_path_is_honoured(tmp_path, monkeypatch):
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.delenv("WORKBENCH_CHROMIUM", raising=False)
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert find_chromium() == str(fake)


@pytest.mark.skipif(not have_chromium(), reason="PNG/SVG export needs Debian chromium (/usr/bin/chromium)")
def test_png_and_svg_through_system_chromium(tmp_path):
    fig = views.load_heatmap(synthetic_trace())
    png, svg = save_figures({tmp_path / "load.png": fig, tmp_path / "load.svg": fig})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png.read_bytes()[16:20], "big")
    assert width == 2 * 1000  # default width at scale 2
    text = svg.read_text()
    assert text.startswith("<svg") and "token share / uniform k/E" in text
