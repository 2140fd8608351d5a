"""Dynamic skipping: beta against numpy's median, exactly the right experts skipped, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_pruning import TEXTS, grouped

import workbench as wb
from workbench.kernels import RoutingRule, route
from workbench.pruning import calibrate_skipping, perplexity, saved_skipping_off
from workbench.pruning.reference import reference_beta, reference_ratios
from workbench.pruning.skipping import median_beta, rank_ratios, router_logits, skipped_calls

FAMILIES = ["mixtral", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3", "qwen2_moe"]


def test_beta_is_numpys_median_on_a_fixture():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(101, 8, generator=g) * 2
    for rule, k in [(RoutingRule("softmax", renormalize=True), 2), (RoutingRule("topk_softmax"), 3),
                    (RoutingRule("softmax"), 4)]:
        d = route(logits, rule, k)
        w = d.w.double().numpy()
        by_hand = [w[t, i] / w[t, 0] for t in range(101) for i in range(1, k)]
        assert median_beta(rank_ratios(d).numpy()) == pytest.approx(float(np.median(by_hand)), abs=1e-12)
        assert median_beta(rank_ratios(d).numpy()) == pytest.approx(reference_beta(logits, rule, k), abs=1e-6)
    fixture = np.array([0.9, 0.1, 0.5, 0.3])  # even count: numpy averages the middle two
    assert median_beta(fixture) == float(np.median(fixture)) == 0.4


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "qwen2_moe"])
def test_calibrated_beta_equals_the_obvious_computation(tiny, family):
    lm = grouped(n_group=2, topk_group=1) if family == "deepseek_v3" else tiny(family)
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    logits = router_logits(lm, TEXTS, progress=False)
    for layer in lm.moe_layers:
        bias = lm.selection_bias(layer)
        want = float(np.median(reference_ratios(logits[layer], lm.rule, lm.top_k, bias)))
        assert cal.beta[layer] == pytest.approx(min(1.0, want), abs=1e-6)
    table = cal.to_dataframe()
    assert table.skip_rate.between(0.1, 0.4).all()  # about half of the second experts: a quarter of all calls


def test_beta_pools_every_lower_rank_for_k_above_two():
    from transformers import AutoModelForCausalLM

    from workbench.testing import tiny_config, tiny_tokenizer

    cfg = tiny_config("qwen3_moe")
    cfg.num_experts_per_tok = 4
    torch.manual_seed(0)
    lm = wb.wrap(AutoModelForCausalLM.from_config(cfg).eval(), tiny_tokenizer())
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    logits = router_logits(lm, TEXTS, progress=False)
    ratios = reference_ratios(logits[0], lm.rule, 4)
    assert ratios.size == 3 * logits[0].shape[0]
    assert cal.beta[0] == pytest.approx(float(np.median(ratios)), abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_skipping_removes_exactly_the_experts_below_threshold(tiny, family):
    lm = grouped(n_group=2, topk_group=1) if family == "deepseek_v3" else tiny(family)
    text = [TEXTS[0] + " " + TEXTS[1]]
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    logits = router_logits(lm, text, progress=False)
    plain = wb.record(lm, text, progress=False)
    removed = 0
    for li, layer in enumerate(plain.layers):  # one layer at a time: skipping changes later layers' inputs
        beta = cal.beta[layer]
        with wb.edit(lm, wb.Skip({layer: beta})):
            edited = wb.record(lm, text, progress=False)
        assert not lm.probes.active
        d = route(logits[layer], lm.rule, lm.top_k, lm.selection_bias(layer))
        below = d.w < beta * d.w[:, :1]
        below[:, 0] = False
        for t in range(d.idx.shape[0]):
            want = {int(e) for e, b in zip(d.idx[t], below[t]) if not b}
            got = {int(e) for e in edited.topk_idx[li, t] if e >= 0}
            assert got == want, (layer, t)
            assert {int(e) for e in plain.topk_idx[li, t]} == set(d.idx[t].tolist())
        removed += int(below.sum())
        assert skipped_calls(d, beta) == int(below.sum())
        assert (edited.topk_idx[li] == -1).sum() == int(below.sum())
        kept_w = edited.topk_w[li].sum(axis=1)
        assert np.allclose(kept_w, plain.topk_w[li].sum(axis=1), atol=1e-5)  # rescaled to the old total
    assert removed > 0


def test_thresholds_round_trip_through_a_checkpoint(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny("qwen3_moe")
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    out = cal.save_checkpoint(lm, tmp_path / "skip")
    assert not hasattr(lm.model.config, "workbench_skip_beta")  # the live config is left as it was
    saved = json.loads((out / "config.json").read_text())["workbench_skip_beta"]
    assert {int(k): v for k, v in saved.items()} == pytest.approx(cal.beta)
    assert (out / "skipping.csv").read_text().startswith("layer,beta,threshold,skip_rate,tokens")
    loaded = wb.load(out)
    assert loaded.saved_skip is not None and loaded.saved_skip in loaded.probes.edit_frames
    rows = [{"text": t, "label": "x"} for t in TEXTS]
    with_skip = perplexity(loaded, rows).calls_per_token[0]
    with saved_skipping_off(loaded):
        without = perplexity(loaded, rows).calls_per_token[0]
    assert with_skip < without == 2 * len(lm.moe_layers)
    assert loaded.saved_skip in loaded.probes.edit_frames  # restored after the block
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers ignores the thresholds
    ids = lm.tokenizer(TEXTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, lm.model(ids).logits, atol=1e-6)
        with cal.apply(lm):
            skipping = lm.model(ids).logits
        assert torch.allclose(loaded.model(ids).logits, skipping, atol=1e-6)
    with saved_skipping_off(loaded):  # the pruning capture needs the model's own routing
        from workbench.replay import capture

        capture(loaded, TEXTS[:1], layers=[0], progress=False)


def test_pruned_and_skipping_checkpoint(tiny, tmp_path):
    from workbench.pruning import Pruner

    lm = tiny("mixtral")
    res = Pruner(lm, TEXTS, progress=False).prune(keep=6)
    small = res.apply(lm)
    cal = calibrate_skipping(small, TEXTS, progress=False)
    out = res.save_checkpoint(lm, tmp_path / "both", skip=cal)
    loaded = wb.load(out)
    assert loaded.num_experts == 6 and loaded.saved_skip is not None
    with pytest.raises(ValueError, match="calibrated on model"):
        calibrate_skipping(lm, TEXTS, progress=False).apply(small)


def test_skip_rates_scale_and_errors(tiny):
    lm = tiny("olmoe")
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    low, mid, high = (cal.skip_rates(s) for s in (0.0, 1.0, 10.0))
    for layer in lm.moe_layers:
        assert low[layer] == 0.0 <= mid[layer] <= high[layer] <= 0.5
    assert all(v <= 1.0 for v in cal.thresholds(10.0).values())
    assert "skips" in repr(cal)
    llama = tiny("llama4_text")
    with pytest.raises(ValueError, match="k=1"):
        calibrate_skipping(llama, TEXTS, progress=False)


def test_model_is_restored_when_a_pass_fails(tiny):
    from workbench.pruning import Pruner

    lm = tiny("qwen3_moe")
    cal = calibrate_skipping(lm, TEXTS, progress=False)
    pruner = Pruner(lm, TEXTS, progress=False)
    _ = pruner.caches
    rows = [{"text": t, "label": "x"} for t in TEXTS]
    ids = lm.tokenizer(TEXTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        before = lm.model(ids).logits

    def boom(module, args, out):
        raise RuntimeError("boom")

    for module, call in [(lm.model.lm_head, lambda: perplexity(lm, rows, edits=[cal.spec()])),
                         (lm.block(1), lambda: calibrate_skipping(lm, TEXTS, progress=False)),
                         (lm.block(1), lambda: pruner._progressive_cache(1, {0: [0, 1]}))]:
        handle = module.register_forward_hook(boom)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                call()
        finally:
            handle.remove()
        assert not lm.probes.active and not lm.probes.edit_frames and not lm.probes.listeners
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, before)
