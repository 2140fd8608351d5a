"""Layer caches: what is captured, saved without pickle, streamed layer by layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import workbench as wb
from workbench.kernels.routing import scores
from workbench.probes.expert_outputs import expert_outputs
from workbench.replay import LayerCache, LayerCaches, capture, recombine
from workbench.replay.cache import estimate_bytes

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "12 + 34 = 46"]


def _forward_logits(lm):
    ids = lm.tokenizer(TEXTS[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def test_capture_holds_what_the_model_computed(tiny):
    lm = tiny("qwen3_moe")
    caches = capture(lm, TEXTS, progress=False)
    assert caches.layers == lm.moe_layers
    n_tokens = sum(len(lm.tokenizer(t)["input_ids"]) for t in TEXTS)
    trace = wb.record(lm, TEXTS, progress=False, scores=True)
    for i, layer in enumerate(caches):
        c = caches[layer]
        assert (c.num_tokens, c.hidden, c.num_experts, c.top_k) == (n_tokens, 32, 8, 2)
        assert c.logits.dtype == torch.float32 and c.expert_out.shape == (n_tokens, 8, 32)
        assert torch.equal(c.token_ids, torch.as_tensor(trace.token_ids).long())
        # the routing the model used equals what wb.record saw
        assert torch.equal(c.topk_idx, torch.as_tensor(trace.topk_idx[i]).long())
        torch.testing.assert_close(c.logits, torch.as_tensor(trace.scores[i]).float(), rtol=1e-3, atol=1e-2)
        # cached expert outputs equal the experts module's own outputs
        torch.testing.assert_close(c.expert_out, expert_outputs(lm, layer, c.x), rtol=1e-4, atol=1e-7)


def test_padding_and_batching_do_not_change_the_cache(tiny):
    lm = tiny("deepseek_v3")
    a = capture(lm, TEXTS, batch_size=1, progress=False)
    b = capture(lm, TEXTS, batch_size=3, progress=False)
    for layer in a:
        torch.testing.assert_close(a[layer].x, b[layer].x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[layer].y, b[layer].y, rtol=1e-4, atol=1e-6)
        assert a[layer].bias is not None and a[layer].bias.shape == (8,)


def test_capture_leaves_the_model_as_it_was(tiny):
    lm = tiny("mixtral")
    before = _forward_logits(lm)
    capture(lm, TEXTS, progress=False)
    assert not lm.probes.active
    assert torch.equal(before, _forward_logits(lm))


def test_top_c_candidates_are_the_best_by_router_score(tiny):
    lm = tiny("deepseek_v3")
    layer = lm.moe_layers[0]
    c = capture(lm, TEXTS, layers=[layer], candidates=3, progress=False)[layer]
    assert c.candidates.shape == (c.num_tokens, 3) and c.expert_out.shape[1] == 3
    # first the experts the model routes to (also when group limits skip a better expert), then the best other
    assert torch.equal(c.candidates[:, :2].sort(dim=1).values, c.topk_idx.sort(dim=1).values)
    choice, _ = scores(c.logits, lm.rule, lm.selection_bias(layer))
    rest = choice.scatter(1, c.topk_idx, float("-inf")).argmax(dim=1)
    assert torch.equal(c.candidates[:, 2], rest)
    full = expert_outputs(lm, layer, c.x)
    want = full.gather(1, c.candidates[:, :, None].expand(-1, -1, c.hidden))
    torch.testing.assert_close(c.expert_out, want, rtol=1e-4, atol=1e-7)
    # the model's own routing is inside the top-3 candidates, so it recombines exactly
    res = recombine(lm, c, [None])
    assert float(res.loss[0]) / float(res.norm) < 1e-5


def test_save_load_round_trip_without_pickle(tiny, tmp_path):
    lm = tiny("gpt_oss")
    c = capture(lm, TEXTS, layers=[1], candidates=4, progress=False)[1]
    path = c.save(tmp_path / "layer.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["workbench_layer_cache"])
        assert set(f.keys()) >= {"x", "logits", "y", "shared", "expert_out", "candidates"}
    assert meta["fingerprint"] == lm.fingerprint and meta["family"] == "gpt_oss"
    back = LayerCache.load(path)
    assert back.layer == 1 and back.rule == lm.rule and back.bias is None
    for name in ("x", "logits", "y", "shared", "topk_idx", "topk_w", "expert_out", "candidates", "doc", "pos"):
        assert torch.equal(getattr(back, name), getattr(c, name)), name
    back.check_model(lm)
    with pytest.raises(wb.TraceMismatchError):
        back.check_model(tiny("mixtral"))


def test_streaming_to_a_folder_keeps_one_layer_at_a_time(tiny, tmp_path, capsys):
    lm = tiny("olmoe")
    caches = capture(lm, TEXTS, out=tmp_path / "caches", progress=True)
    printed = capsys.readouterr().out
    assert "per layer" in printed and "written to" in printed
    assert caches._items == {}  # nothing held in memory
    files = sorted(p.name for p in (tmp_path / "caches").iterdir())
    assert files == ["caches.json", "layer_000.safetensors", "layer_001.safetensors"]
    reopened = LayerCaches.load(tmp_path / "caches")
    assert reopened.layers == [0, 1]
    in_memory = capture(lm, TEXTS, progress=False)
    torch.testing.assert_close(reopened[1].y, in_memory[1].y)


def test_size_estimate_matches_what_is_stored(tiny):
    lm = tiny("mixtral")
    c = capture(lm, TEXTS, layers=[0], progress=False)[0]
    estimate = estimate_bytes(c.num_tokens, c.hidden, c.num_experts, c.top_k, c.columns, 4)
    assert 0.9 * c.nbytes <= estimate <= 1.1 * c.nbytes


def test_llama4_caches_no_expert_outputs_by_default(tiny):
    lm = tiny("llama4_text")
    c = capture(lm, TEXTS, layers=[0], progress=False)[0]
    assert c.expert_out is None and c.scale_input
    with pytest.raises(ValueError, match="no expert outputs"):
        recombine(lm, c, [None])
    c2 = capture(lm, TEXTS, layers=[0], candidates="all", progress=False)[0]
    with pytest.raises(ValueError, match="scales expert inputs"):
        recombine(lm, c2, [None])


def test_capture_refuses_bad_input(tiny):
    lm = tiny("mixtral")
    with pytest.raises(TypeError, match="list of strings"):
        capture(lm, "one text", progress=False)
    with pytest.raises(ValueError, match="not an MoE layer"):
        capture(lm, TEXTS, layers=[5], progress=False)
    with pytest.raises(ValueError, match="candidates"):
        capture(lm, TEXTS, candidates="some", progress=False)
    with wb.edit(lm, wb.Mask({0: [1]})):
        with pytest.raises(RuntimeError, match="edit"):
            capture(lm, TEXTS, progress=False)
