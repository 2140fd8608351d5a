"""The self-contrast panel: driven by setting control values, escaped HTML, CSV export."""

import pandas as pd

from workbench.widgets.contrast import ContrastPanel


def test_panel_decodes_highlights_and_exports(tiny, tmp_path):
    lm = tiny("gpt_oss")
    panel = ContrastPanel(lm, prompt="<script>alert(1)</script> The quick", max_new_tokens=6, folder=tmp_path)
    panel.beta.value = 3.0
    panel.alpha.value = 0.0
    panel.weak.value = "rank2"
    panel.button.click()
    assert panel.scmoe is not None and panel.scmoe.beta == 3.0 and panel.scmoe.weak == "rank2"
    html = panel.output.value
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("background:#E69F00") == sum(panel.scmoe.changed) + 1  # + the legend swatch
    assert html.count("title=") == panel.scmoe.num_tokens + panel.greedy.num_tokens
    written = panel.export_bar.export("csv")
    table = pd.read_csv(tmp_path / "scmoe_explanation.csv")
    assert len(written) == 2 and len(table) == panel.scmoe.num_tokens
    assert table.changed.tolist() == panel.scmoe.changed


def test_panel_shows_errors_instead_of_raising(tiny, tmp_path):
    panel = ContrastPanel(tiny("mixtral"), prompt="", folder=tmp_path)
    panel.prompt.value = "hi"
    panel.max_new_tokens.value = 2
    panel.alpha.value = 0.0
    panel.beta.value = 0.0
    panel.button.click()
    assert panel.scmoe.num_tokens == 2
    panel.weak.options = list(panel.weak.options) + ["rank99"]
    panel.weak.value = "rank99"
    panel.button.click()
    assert "out of range" in panel.output.value


def test_panel_preset_follows_the_reference_definitions(tiny, tmp_path):
    from workbench.contrast import generate, generate_greedy

    lm = tiny("qwen3_moe")
    panel = ContrastPanel(lm, prompt="12 + 34 =", max_new_tokens=5, folder=tmp_path)
    panel.preset.value = "scmoe"
    panel.run()
    assert panel.scmoe.token_ids == generate(lm, "12 + 34 =", max_new_tokens=5, preset="scmoe").token_ids
    assert panel.greedy.token_ids == generate_greedy(lm, "12 + 34 =", max_new_tokens=5, bos=False).token_ids
    assert lm.tokenizer.eos_token_id not in panel.scmoe.token_ids


def test_panel_warms_up_before_timing(tiny, tmp_path):
    lm = tiny("mixtral")
    panel = ContrastPanel(lm, prompt="12 + 34 =", max_new_tokens=3, folder=tmp_path)
    assert not panel._warm
    panel.run()
    assert panel._warm == {(None, panel.weak.value)}
    panel.run()  # already warm: nothing more
    assert len(panel._warm) == 1
    panel.weak.value = "top1"
    panel.run()
    assert (None, "top1") in panel._warm and panel.greedy.seconds > 0 and panel.scmoe.seconds > 0
