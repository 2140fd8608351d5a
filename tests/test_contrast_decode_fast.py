"""The hooks' lean path for SCMoE's per-row routing (hooks._FusedStep, taken by the experts-call hook
when no listener reads the decision) against the general path (ProbeManager.decide and the seams'
conversion) and the reference (decide_reference): exact ids and weights; SCMoE continuations and
step logs identical with the lean path on and off; the lean path really taken, and not with a
listener; layouts shared by value across edits."""

import pytest
import torch

import workbench as wb
from workbench.contrast import generate
from workbench.kernels import RoutingPlan, apply_plan
from workbench.probes import hooks, seams

FAMILIES = ["mixtral", "qwen3_moe", "olmoe", "gpt_oss", "phimoe", "deepseek_v3", "dbrx"]


def _count_steps(monkeypatch):
    calls = []
    original = hooks._FusedStep.__call__

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(hooks._FusedStep, "__call__", counted)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("weak_row", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_step_equals_general_path_and_reference(family, weak_row, dtype, tiny):
    lm = tiny(family)
    gen = torch.Generator().manual_seed(7)
    rank = 2 if lm.num_experts > 2 else 1
    for weight in (1.0, 0.3):
        with wb.edit(lm, wb.KeepRank(rank, weight=weight, rows=[weak_row])):
            pm = lm.probes
            for rows, per_row in ((2, 1), (2, 5), (3, 2)):
                for layer in lm.moe_layers:
                    pm._shapes[layer] = (rows, per_row)
                    logits = (torch.randn(rows * per_row, lm.num_experts, generator=gen) * 2).to(dtype)
                    native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k), lm.selection_bias(layer))
                    idx_arg, w_arg = native.idx, native.w.to(dtype)
                    general, changed = pm.decide(layer, logits, seams.native_decision(idx_arg, w_arg))
                    assert changed
                    ref, _ = pm.decide_reference(layer, logits, seams.native_decision(idx_arg, w_arg))
                    step = pm._fused_step(layer, logits)
                    if lm.selection_bias(layer) is not None:  # a biased choice score: general path only
                        assert step is None
                        continue
                    idx, w = step(logits, idx_arg, w_arg)
                    g_idx, g_w = seams.to_experts_args(lm.adapter.router_io, general, idx_arg, w_arg,
                                                       lm.num_experts)
                    assert idx.dtype == g_idx.dtype and w.dtype == g_w.dtype == dtype
                    assert torch.equal(idx, g_idx) and torch.equal(w, g_w)
                    assert torch.equal(idx, ref.idx) and torch.equal(w, ref.w.to(dtype))


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe", "deepseek_v3"])
@pytest.mark.parametrize("weak", ["rank2", "rank1", "top1", "random"])
def test_scmoe_continuations_identical_with_lean_path_on_and_off(family, weak, tiny, monkeypatch):
    lm = tiny(family)
    calls = _count_steps(monkeypatch)
    for prompt in ("12 + 34 =", "The quick brown fox"):
        lean = generate(lm, prompt, max_new_tokens=8, weak=weak)
        lm.probes.lean = False
        try:
            taken = len(calls)
            general = generate(lm, prompt, max_new_tokens=8, weak=weak)
            assert len(calls) == taken, "lean=False must route through the general path"
        finally:
            lm.probes.lean = True
        assert lean.token_ids == general.token_ids and lean.text == general.text
        for key, value in lean.steps.items():
            assert torch.equal(value, general.steps[key]), key
    fused = weak.startswith("rank") and lm.selection_bias(lm.moe_layers[0]) is None
    assert bool(calls) == fused, "the lean path is taken exactly for plain rank rows without a bias"


def test_lean_path_not_taken_while_recording(tiny, monkeypatch):
    lm = tiny("qwen3_moe")
    calls = _count_steps(monkeypatch)
    seen = []
    lm.probes.add_listener(lambda layer, logits, decision: seen.append(decision))
    try:
        generate(lm, "12 + 34 =", max_new_tokens=4)
    finally:
        lm.probes.remove_listener(lm.probes.listeners[-1])
    assert seen and not calls
    assert all(d.valid is not None for d in seen)   # listeners get the full decision
    generate(lm, "12 + 34 =", max_new_tokens=4)
    assert calls


def test_layouts_shared_across_generations(tiny):
    lm = tiny("qwen3_moe")
    generate(lm, "12 + 34 =", max_new_tokens=3)
    before = dict(hooks._LAYOUTS)
    generate(lm, "12 + 34 =", max_new_tokens=3)
    assert hooks._LAYOUTS.keys() == before.keys()
    assert all(hooks._LAYOUTS[k] is before[k] for k in before)


def test_router_nan_refused_on_lean_path(tiny):
    lm = tiny("qwen3_moe")
    layer = lm.moe_layers[0]
    with wb.edit(lm, wb.KeepRank(2, rows=[1])):
        lm.probes._shapes[layer] = (2, 1)
        logits = torch.randn(2, lm.num_experts)
        native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k))
        lm.probes.decide(layer, logits, seams.native_decision(native.idx, native.w))  # builds the layout
        logits[0, 1] = float("inf")
        with pytest.raises(FloatingPointError, match="token 0"):
            lm.probes._fused_step(layer, logits)
