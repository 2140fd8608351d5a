"""The pruning panel wires controls to workbench.pruning (driven by setting trait values)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from test_pruning import TEXTS

from workbench.widgets.pruning import PruningPanel

ROWS = [{"text": "12 + 34 = 46. 7 + 8 = 15.", "label": "arith"}, {"text": "def f(x):\n    return x", "label": "code"}]


def test_panel_prunes_calibrates_evaluates_and_exports(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny("mixtral")
    panel = PruningPanel(lm, TEXTS, ROWS, folder=tmp_path)
    panel.share.value = 0.5
    assert panel.keep.value == 4
    panel.keep.value = 6
    assert panel.share.value == pytest.approx(0.25)
    panel.method.value = "frequency"
    res = panel.run()
    assert res.method == "frequency" and [b.method for b in panel.baselines] == ["random"]
    assert len(panel.kept_fig.data) == 1 and len(panel.loss_fig.data) == 2
    panel.method.value = "enumerate"
    panel.run_button.click()
    assert panel.result.method == "enumerate" and panel.status.value == ""
    cal = panel.calibrate()
    before = panel.skip_fig.data[1].y
    panel.beta_scale.value = 2.0
    assert tuple(panel.skip_fig.data[1].y) >= tuple(before)
    table = panel.evaluate()
    assert set(table.domain) == {"arith", "code", "mean"}
    assert "skipping" in panel.ppl_table.value and cal.beta
    panel.export_bar.format.value = "csv"
    names = sorted(p.name for p in panel.export_bar.export())
    assert names == ["pruning_layers.csv", "pruning_perplexity.csv", "pruning_skipping.csv"]
    panel.with_beta.value = True
    out = panel.save_checkpoint(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.num_local_experts == 6 and "workbench_skip_beta" in plain.config.to_dict()


def test_panel_reports_errors_in_its_status_line(tiny, tmp_path):
    panel = PruningPanel(tiny("qwen3_moe"), TEXTS, [], folder=tmp_path)
    panel.evaluate_button.click()
    assert "evaluation rows" in panel.status.value
    panel.save_button.click()
    assert "prune first" in panel.status.value
    assert not panel.lm.probes.active


def test_panel_switches_to_the_lu2024_calibration(tiny, tmp_path):
    from workbench import pruning

    lm = tiny("mixtral")
    texts = TEXTS * 30
    panel = PruningPanel(lm, texts, ROWS, folder=tmp_path)
    default = panel.run()
    panel.preset.value = "lu2024"
    lu = panel.run()
    assert lu.settings["units"].startswith("lu2024") and "chunked" in default.settings["units"]
    assert lu.kept == pruning.Pruner(lm, texts, preset="lu2024", progress=False).prune(keep=lu.keep).kept
    assert panel.calibrate().num_tokens == sum(len(u[2]) for u in panel.pruner.units)
    panel.preset.value = None
    assert panel.run().settings["units"] == default.settings["units"]


def test_panel_starts_from_results_computed_in_the_notebook(tiny, tmp_path):
    from workbench import pruning

    lm = tiny("mixtral")
    pruner = pruning.Pruner(lm, TEXTS, progress=False)
    best = pruner.prune(keep=6, method="enumerate")
    skipping = pruning.calibrate_skipping(lm, TEXTS, progress=False)
    quality = pruning.compare({"original": lm, best.label: best.apply(lm)}, ROWS, max_tokens=32)
    empty = PruningPanel(lm, TEXTS, ROWS, pruner=pruner, folder=tmp_path)
    assert not empty.kept_fig.data and "press Prune" in empty.kept_fig.layout.annotations[0].text
    panel = PruningPanel(lm, TEXTS, ROWS, pruner=pruner, folder=tmp_path, result=best, skipping=skipping,
                         quality=quality)
    assert panel.result is best and panel.keep.value == 6 and panel.method.value == "enumerate"
    assert len(panel.kept_fig.data) == 1 and len(panel.loss_fig.data) == 3  # with the frequency and random baselines
    assert [b.method for b in panel.baselines] == ["frequency", "random"] and "<table" in panel.table.value
    assert panel.calibration is skipping and panel.skip_fig.data
    assert panel.evaluation_table is quality and panel.ppl_fig.data and "expert calls per token" in panel.ppl_table.value
    assert set(panel.export_items()) >= {"layers", "kept_map", "loss", "skipping", "perplexity"}
    other = pruning.Pruner(tiny("qwen3_moe"), TEXTS, progress=False).prune(keep=6, method="frequency")
    with pytest.raises(ValueError, match="another model"):
        PruningPanel(lm, TEXTS, ROWS, pruner=pruner, folder=tmp_path, result=other)


def test_evaluate_takes_a_sample_across_domains(tiny, tmp_path):
    from workbench.widgets.pruning import sample_per_domain

    rows = [{"text": f"{a} + {b} = {a + b}.", "label": "arith"} for a, b in zip(range(20), range(5, 25))]
    rows += [{"text": f"def f{i}(x):\n    return x * {i}", "label": "code"} for i in range(3)]
    assert [r["label"] for r in sample_per_domain(rows, 2)] == ["arith", "arith", "code", "code"]
    panel = PruningPanel(tiny("mixtral"), TEXTS, rows, folder=tmp_path, max_tokens=32)
    assert panel.domains() == {"arith": 20, "code": 3} and panel.eval_docs.value == 9
    panel.eval_docs.value = 2
    table = panel.evaluate()
    assert set(table.domain) == {"arith", "code", "mean"}  # rows[:18] would have been arithmetic only
    one = PruningPanel(tiny("mixtral"), TEXTS, rows[:18], folder=tmp_path)
    assert "one domain" in one.eval_note.value
