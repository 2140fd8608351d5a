"""Replay of cached MoE layers on tiny real models.

The invariant comes first: the model's own routing reproduces the cached block output, through
replay and through recombine, for every family (qwen2_moe with its gated shared expert,
deepseek_v3 with its selection bias, gpt_oss with its transposed biased experts, ...). Then: replay
under an edit spec equals the block run under ``wb.edit`` with that spec.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.demo import checkpoint_available
from workbench.replay import UnsupportedExperts, capture, expert_weights, loss, recombine, replay
from workbench.testing import FAMILIES

CALIBRATION = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
               "Der schnelle braune Fuchs springt. 12 + 34 = 46"]
_CACHES = {}


def cached(tiny, family):
    """Every MoE layer's cache of a tiny model (captured once per session)."""
    if family not in _CACHES:
        _CACHES[family] = capture(tiny(family), CALIBRATION, progress=False)
    return _CACHES[family]


def rel(cache, out) -> float:
    return loss(cache, out) / float(cache.y.double().norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_own_routing_reproduces_cached_output(tiny, family):
    lm = tiny(family)
    caches = cached(tiny, family)
    for layer in caches:
        cache = caches[layer]
        assert cache.num_tokens > 20
        assert rel(cache, replay(lm, cache)) < 1e-5, "rule on cached logits, replayed"
        assert rel(cache, replay(lm, cache, decision="native")) < 1e-5, "routing the model used, replayed"
        if not cache.scale_input:
            res = recombine(lm, cache, [None], outputs=True)
            assert float(res.loss[0]) / float(res.norm) < 1e-5
            torch.testing.assert_close(res.outputs[0], cache.y.float(), rtol=1e-4, atol=1e-5 * float(cache.y.abs().max()))


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "llama4_text", "jetmoe"])
def test_shared_part_is_the_routing_independent_output(tiny, family):
    lm = tiny(family)
    cache = cached(tiny, family)[lm.moe_layers[0]]
    routed = replay(lm, cache, include_shared=False)
    torch.testing.assert_close(routed + cache.shared, cache.y, rtol=1e-4, atol=1e-6)
    if family != "jetmoe":  # jetmoe's block bias starts at zero
        assert float(cache.shared.norm()) > 0.1 * float(cache.y.norm())


def _block_under_edit(lm, cache, *specs):
    with wb.edit(lm, *specs), torch.no_grad():
        out = lm.block(cache.layer)(cache.x[None])
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(cache.x.shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_equals_the_block_under_the_same_edit(tiny, family):
    lm = tiny(family)
    layer = lm.moe_layers[-1]
    cache = cached(tiny, family)[layer]
    specs = [wb.Mask({layer: [0, 3]}), wb.Mask({layer: [1]}, mode="empty"), wb.TopK(3), wb.KeepRank(1),
             wb.Skip(0.5)]
    if family != "phimoe":  # sparsemixer routes top-2 only
        specs.append([wb.TopK(3), wb.Mask({layer: [2]})])
    for spec in specs:
        spec_list = spec if isinstance(spec, list) else [spec]
        want = _block_under_edit(lm, cache, *spec_list)
        got = replay(lm, cache, *spec_list)
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-5 * scale, spec


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe"])
def test_recombine_equals_replay_for_many_routings(tiny, family):
    lm = tiny(family)
    layer = lm.moe_layers[0]
    cache = cached(tiny, family)[layer]
    routings = [None, wb.Mask({layer: [0]}), wb.Mask({layer: [1, 2]}, mode="empty"), wb.Skip(0.6),
                wb.KeepRank(2), [wb.TopK(3), wb.Mask({layer: [5]})], wb.TopP(0.5)]
    res = recombine(lm, cache, routings, outputs=True)
    for r, routing in enumerate(routings):
        specs = routing if isinstance(routing, list) else ([] if routing is None else [routing])
        want = replay(lm, cache, *specs)
        torch.testing.assert_close(res.outputs[r], want.float(), rtol=1e-4, atol=1e-5 * float(want.abs().max()))
        assert abs(float(res.loss[r]) - loss(cache, want)) <= 1e-4 * float(res.norm)


def test_module_fallback_equals_kernels_and_says_so(tiny):
    lm = tiny("mixtral")
    cache = cached(tiny, "mixtral")[0]
    with pytest.warns(UserWarning, match="expert_outputs"):
        via_module = replay(lm, cache, wb.Mask({0: [1]}), backend="module")
    torch.testing.assert_close(via_module, replay(lm, cache, wb.Mask({0: [1]})), rtol=1e-4, atol=1e-7)


def test_every_tiny_family_has_native_expert_weights(tiny):
    sources = {}
    for family in FAMILIES:
        lm = tiny(family)
        ew = expert_weights(lm, lm.moe_layers[0])
        assert ew.num_experts == lm.num_experts and ew.hidden == lm.config.hidden_size
        sources[family] = ew.source
        assert ew.gate.data_ptr() != 0
    assert "interleaved" in sources["gpt_oss"] and "input scaling" in sources["llama4_text"]
    assert sources["dbrx"].startswith("dbrx") and sources["jetmoe"].startswith("jetmoe")


def test_expert_weights_are_views_not_copies(tiny):
    lm = tiny("gpt_oss")
    ew = expert_weights(lm, 0)
    storage = lm.experts(0).gate_up_proj.untyped_storage().data_ptr()
    assert ew.gate.untyped_storage().data_ptr() == storage == ew.up.untyped_storage().data_ptr()


def test_unknown_layout_is_reported(tiny):
    lm = tiny("mixtral")

    class Odd(torch.nn.Module):
        pass

    block = lm.block(0)
    original = block.experts
    try:
        block.experts = Odd()
        with pytest.raises(UnsupportedExperts, match="layout"):
            expert_weights(lm, 0)
    finally:
        block.experts = original


def test_replay_errors_are_clear(tiny):
    lm = tiny("mixtral")
    cache = cached(tiny, "mixtral")[0]
    with pytest.raises(ValueError, match="either specs or decision"):
        replay(lm, cache, wb.TopK(1), decision="native")
    with pytest.raises(ValueError, match="batch rows"):
        replay(lm, cache, wb.Mask({0: [1]}, rows=[0]))
    with pytest.raises(ValueError, match="not an MoE layer"):
        replay(lm, cache, wb.Mask({7: [1]}))
    other = tiny("olmoe")
    with pytest.raises(wb.TraceMismatchError, match="capture it again"):
        replay(other, cache)


@pytest.mark.slow
@pytest.mark.skipif(not checkpoint_available(), reason="the demo checkpoint is not present in this checkout")
def test_demo_model_own_routing_reproduces_cached_output():
    from workbench.demo import DATA_DIR

    lm = wb.load("demo")
    texts = CALIBRATION
    heldout = DATA_DIR / "heldout.jsonl"
    if heldout.is_file():
        import json

        texts = [json.loads(line)["text"] for line in heldout.read_text().splitlines()[:8] if line.strip()]
    caches = capture(lm, texts, max_length=128, progress=False)
    for layer in caches:
        cache = caches[layer]
        assert rel(cache, replay(lm, cache)) < 1e-5
        res = recombine(lm, cache, [None, wb.Mask({layer: [0]})])
        assert float(res.loss[0]) / float(res.norm) < 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            masked = replay(lm, cache, wb.Mask({layer: [0]}))
        assert abs(float(res.loss[1]) - loss(cache, masked)) <= 1e-4 * float(res.norm)
