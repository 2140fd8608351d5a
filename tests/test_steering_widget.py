"""The steering panel, driven from code by setting control values."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("ipywidgets")

from workbench.widgets.steering import SteeringPanel  # noqa: E402

SETS = {"de": ["Der Hund ist nicht", "Die Katze ist hier", "Das Haus ist alt"],
        "en": ["The dog is not", "The cat is here", "The house is old"],
        "code": ["def add(a, b):", "for i in range(3):", "x = [1, 2, 3]"]}


@pytest.fixture
def panel(tiny, tmp_path):
    return SteeringPanel(tiny("qwen3_moe"), SETS, max_new_tokens=3, permutations=50, folder=str(tmp_path))


def test_rank_fills_table_heatmap_and_selection(panel):
    panel.set_b.value = "en"
    result = panel.rank()
    assert result.a == ["de"] and result.b == ["en"]
    assert "<table" in panel.table.value
    assert panel.heatmap.data[0].z is not None and len(panel.heatmap.data[0].z) == 2
    panel.top_n.value = 3
    assert panel.selected == [tuple(x) for x in result.table[["layer", "expert"]].head(3).to_numpy().tolist()]


def test_one_vs_rest_generate_and_toggle(panel):
    panel.rank()
    assert panel.contrast.b == ["code", "en"]
    panel.top_n.value = 2
    panel.action.value = "on"
    panel.weight.value = 0.4
    table = panel.generate()
    assert list(table.columns) == ["prompt", "baseline", "steered"]
    assert "without steering" in panel.output.value
    panel.experts.value = ()
    with pytest.raises(ValueError, match="select at least one"):
        panel.run_experiment()


def test_experiment_progress_and_export(panel, tmp_path):
    panel.rank()
    panel.top_n.value = 2
    panel.seeds.value = 2
    exp = panel.run_experiment()
    assert panel.progress.value == panel.progress.max == 5
    assert len(panel.experiment_fig.data[0].y) == 5
    assert "top_off" in panel.summary.value
    written = panel.export_bar.export("csv")
    names = sorted(p.name for p in written)
    assert names == ["steering_experiment.csv", "steering_experts.csv", "steering_summary.csv"]
    assert len(pd.read_csv(tmp_path / "steering_experiment.csv")) == len(exp.table)
    html_files = panel.export_bar.export("html")
    assert {p.name for p in html_files} == {"steering_contrast.html", "steering_experiment_plot.html"}


def test_errors_show_in_status(panel):
    panel.set_b.value = "de"
    panel.rank_button.click()
    assert "two different sets" in panel.status.value


def test_steermoe_method_preselects_both_sides_and_runs_its_design(panel):
    panel.set_b.value = "en"
    panel.rank()
    panel.preset.value = "steermoe"
    panel.top_n.value = 2
    panel.activate_n.value = 2
    contrast = panel.contrast
    assert panel.selected == list(contrast.top(2, by="risk_diff"))
    on, _ = __import__("workbench").steering.select_steermoe(contrast, 2, 0, panel.lm.top_k)
    assert panel.activated == on and on
    table = panel.generate()
    assert list(table.columns) == ["prompt", "baseline", "steered"]
    panel.seeds.value = 1
    exp = panel.run_experiment()
    assert exp.table.condition.tolist() == ["baseline", "switch", "random_switch"]
    assert exp.activated == on


def test_panel_starts_from_a_computed_contrast_and_experiment(tiny, tmp_path):
    from workbench import steering

    lm = tiny("qwen3_moe")
    empty = SteeringPanel(lm, SETS, max_new_tokens=3, permutations=50, folder=str(tmp_path))
    assert not empty.heatmap.data and "press Rank experts" in empty.heatmap.layout.annotations[0].text
    contrast = steering.find_experts(lm, SETS, a="de", b="en", permutations=50)
    top = contrast.top(2)
    experiment = steering.run_experiment(lm, SETS["de"], top, steering.set_behaviour(SETS["de"], SETS["en"]),
                                         seeds=[0], max_new_tokens=2, progress=False)
    panel = SteeringPanel(lm, SETS, max_new_tokens=3, permutations=50, folder=str(tmp_path), contrast=contrast,
                          experiment=experiment)
    assert panel.contrast is contrast and (panel.set_a.value, panel.set_b.value) == ("de", "en")
    assert panel.heatmap.data and len(panel.heatmap.data[0].z) == len(contrast.layers)
    assert not panel.heatmap.layout.annotations and "<table" in panel.table.value
    assert panel.top_n.value == min(10, panel.top_n.max)
    assert len(panel.heatmap.layout.shapes) == len(panel.selected) == len(contrast.top(panel.top_n.value)) > 0
    assert len(panel.experiment_fig.data[0].y) == len(experiment.table) and "top_off" in panel.summary.value


def test_top_n_slider_moves_the_outline(panel):
    panel.set_b.value = "en"
    contrast = panel.rank()
    pos = {layer: i for i, layer in enumerate(contrast.layers)}

    def outlined():
        return sorted((s.y0 + 0.5, s.x0 + 0.5) for s in panel.heatmap.layout.shapes)

    for n in (3, 1, 5):
        panel.top_n.value = n
        assert outlined() == sorted((pos[l], e) for l, e in contrast.top(n))
    panel.experts.value = ()  # editing the selection moves the outline as well
    assert outlined() == []
    panel.preset.value = "steermoe"
    panel.top_n.value = 2
    panel.activate_n.value = 2
    dashed = [s for s in panel.heatmap.layout.shapes if s.line.dash == "dash"]
    assert len(dashed) == len(panel.activated) and len(panel.heatmap.layout.shapes) == 2 + len(dashed)


def test_a_contrast_of_other_sets_is_refused(tiny, tmp_path):
    from workbench import steering

    lm = tiny("qwen3_moe")
    contrast = steering.find_experts(lm, {"x": SETS["de"], "y": SETS["en"]}, a="x", b="y", permutations=20)
    with pytest.raises(ValueError, match="not one of the panel's sets"):
        SteeringPanel(lm, SETS, contrast=contrast, folder=str(tmp_path))
