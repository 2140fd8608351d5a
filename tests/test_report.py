"""The main job (``python -m workbench demo``): the report folder, with and without Chromium."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import workbench as wb
from test_views import SCRIPT, synthetic_trace

from workbench import cli
from workbench.export import have_chromium
from workbench.report import FALLBACK, _balanced, analyse, demo_corpus, run_demo
from workbench.views.page import render_page
from workbench.views.report_sections import build_sections

TABLES = {"expert_load", "load_summary", "label_specialization", "specialization_scores", "vocab_specialization",
          "vocab_summary", "coactivation", "layer_transitions", "router_entropy", "norm_rank_table",
          "norm_rank_summary", "expert_norm_stats"}


def test_sample_is_taken_round_robin_over_labels():
    rows = [{"text": str(i), "label": "a"} for i in range(5)] + [{"text": "x", "label": "b"}]
    assert [r["label"] for r in _balanced(rows, 3)] == ["a", "b", "a"]
    texts, labels = demo_corpus(sample=4)
    assert len(texts) == 4 and len(set(labels)) == 4
    with pytest.raises(ValueError, match="at least 1"):
        _balanced(rows, 0)
    assert len({label for _, label in FALLBACK}) >= 3


def test_report_corpus_from_the_demo_a_file_or_a_list(tmp_path):
    from workbench.report import report_corpus

    texts, labels, what = report_corpus(sample=4)
    assert len(texts) == 4 and len(set(labels)) == 4 and "demo" in what
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "y"}\n')
    assert report_corpus(path, sample=2)[:2] == (["a", "c"], ["x", "y"])  # round-robin over labels
    plain = tmp_path / "t.txt"
    plain.write_text("one\ntwo\nthree\n")
    assert report_corpus(plain, sample=2) == (["one", "two"], None, str(plain))
    assert report_corpus(["p", "q"], ["l", "m"])[:2] == (["p", "q"], ["l", "m"])
    with pytest.raises(ValueError, match="one label per text"):
        report_corpus(["p", "q"], ["l"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report_corpus(tmp_path / "missing.txt")


def test_analyse_reports_progress_and_keeps_its_tables(capsys):
    trace = synthetic_trace()
    quiet = analyse(trace)
    shown = analyse(trace, progress=True)
    assert list(quiet) == list(shown) and "analyses" in capsys.readouterr().err


def test_report_page_escapes_token_text_everywhere():
    trace = synthetic_trace()
    tables = analyse(trace)
    sections = build_sections(trace, tables)
    sections["vocabulary"].table = tables["vocab_specialization"]
    page = render_page("Routing report", list(sections.values()), meta={"corpus": SCRIPT})
    assert SCRIPT not in page and "&lt;script&gt;" in page
    assert {"load", "specialization", "coactivation_first", "entropy", "transitions"} <= set(sections)


@pytest.mark.slow
def test_demo_writes_every_table_figure_and_index(tmp_path, capsys):
    out = run_demo(tmp_path / "report", sample=6, progress=False)
    printed = capsys.readouterr().out
    assert re.search(r"\[6/6\] index\.html", printed)
    assert {p.stem for p in (out / "tables").glob("*.csv")} == TABLES
    load = pd.read_csv(out / "tables" / "expert_load.csv")
    assert (load.groupby("layer").token_share.sum().round(4) > 0).all()
    figures = {p.stem for p in (out / "figures").glob("*.html")}
    assert {"load", "specialization", "specialization_profile", "vocabulary", "coactivation_first",
            "transitions", "entropy", "norm_rank"} <= figures
    assert any(name.startswith("tokens_doc") for name in figures)
    assert (out / "figures" / "plotly.min.js").stat().st_size > 1_000_000
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "src='figures/plotly.min.js'" in index and "cdn.plot.ly/plotly" not in index
    assert index.count("class=\"plotly-graph-div\"") == len(figures)
    assert (out / "trace" / "manifest.json").is_file()
    assert wb.open_trace(out / "trace").num_docs > 0
    if have_chromium():
        assert {p.stem for p in (out / "figures").glob("*.png")} == figures
        assert "figures/load.png" in index


@pytest.mark.slow
def test_demo_without_chromium_writes_html_and_csv_and_says_how_to_get_pngs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CHROMIUM", "none")
    assert cli.main(["demo", "--out", str(tmp_path / "r"), "--sample", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "apt-get install chromium" in printed
    out = tmp_path / "r"
    assert not list((out / "figures").glob("*.png"))
    assert (out / "figures" / "load.html").is_file() and (out / "tables" / "coactivation.csv").is_file()
    assert "apt-get install chromium" in (out / "index.html").read_text(encoding="utf-8")
