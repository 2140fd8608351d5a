"""The nnsight bridge gives the same routing, logits and tokens as the hook path, on tiny models."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings

import pytest
import torch

import workbench as wb
from workbench.probes.nnsight_bridge import apply_edits, record_routing, to_nnsight
from workbench.probes.seams import in_rank_order

# find_spec, not importorskip: importing nnsight mounts `.save` on every object, so it is imported
# only when these tests run, not when pytest collects them
pytestmark = pytest.mark.skipif(importlib.util.find_spec("nnsight") is None, reason="nnsight is not installed")

# softmax (mixtral), shared experts (qwen2_moe), sigmoid + selection bias + groups (deepseek_v3),
# router with bias (gpt_oss), logits-only router edited at the experts call (dbrx), jetmoe's sorted
# dispatch, llama4's dense scores
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe", "llama4_text"]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b"]
SPECS = {  # (lm, experts the first layer uses) -> specs
    "mask": lambda lm, used: [wb.Mask({lm.moe_layers[0]: used})],
    "keep_rank": lambda lm, used: [wb.KeepRank(1)],
    "rows_mask": lambda lm, used: [wb.Mask({layer: used for layer in lm.moe_layers}, rows=[1])],
    "rows_keep_rank": lambda lm, used: [wb.KeepRank(2, rows=[1])],
    "rows_mixed": lambda lm, used: [wb.TopK(1, rows=[0]), wb.KeepRank(2, rows=[1]), wb.Skip(0.9)],
}


@functools.lru_cache(maxsize=None)
def _model(family: str):
    """A model of our own: nnsight instruments the modules it wraps, so the shared fixtures stay clean."""
    from workbench.testing import tiny_model

    return wb.wrap(*tiny_model(family))


def _ids(lm, length: int = 7) -> torch.Tensor:
    """``[2, length]`` token ids, no padding (both paths then run the very same input)."""
    rows = [lm.tokenizer(t)["input_ids"][:length] for t in TEXTS]
    return torch.tensor(rows)


def _hook_path(lm, fn, specs=()):
    """``fn()`` under ``wb.edit(lm, *specs)``; every router call's routing as ``(layer, idx, w, logits)``."""
    calls = []

    def listener(layer, logits, decision):
        idx, w, valid = in_rank_order(decision.idx, decision.w, decision.valid)
        calls.append((layer, torch.where(valid, idx, -1).cpu(), torch.where(valid, w.float(), 0.0).cpu(),
                      logits.detach().float().cpu()))

    lm.probes.add_listener(listener)
    try:
        with wb.edit(lm, *specs) if specs else contextlib.nullcontext(), torch.no_grad():
            out = fn()
    finally:
        lm.probes.remove_listener(listener)
    return out, calls


def _assert_same_routing(routing, calls, lm, scores=False):
    assert len(calls) == routing.num_steps * len(lm.moe_layers)
    for n, (layer, idx, w, logits) in enumerate(calls):
        step = n // len(lm.moe_layers)
        got_idx, got_w = routing.topk(layer, step)
        assert torch.equal(got_idx, idx), (layer, step)
        assert torch.equal(got_w, w), (layer, step)
        if scores:
            assert torch.equal(routing.logits(layer, step), logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_recording_matches_the_hook_path(family):
    lm = _model(family)
    nn, ids = to_nnsight(lm), _ids(lm)
    ref, calls = _hook_path(lm, lambda: lm.model(input_ids=ids).logits)
    with torch.no_grad(), nn.trace(ids):
        routing = record_routing(nn, lm, scores=True)
        logits = nn.output.logits.save()
    _assert_same_routing(routing, calls, lm, scores=True)
    assert torch.equal(logits, ref)
    assert routing.topk(lm.moe_layers[0])[0].shape == (ids.numel(), lm.top_k)


@pytest.mark.parametrize("family", FAMILIES)
def test_to_trace_equals_wb_record(family):
    lm = _model(family)
    nn = to_nnsight(lm)
    for text in TEXTS:
        expected = wb.record(lm, [text], progress=False)
        ids = lm.tokenizer([text], return_tensors="pt").input_ids
        with torch.no_grad(), nn.trace(ids):
            routing = record_routing(nn, lm)
        got = routing.to_trace(lm, ids)
        assert got.layers == expected.layers
        for name in ("topk_idx", "topk_w", "token_ids", "pos", "doc"):
            assert (getattr(got, name) == getattr(expected, name)).all(), name
        assert got.fingerprint == lm.fingerprint


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("family", FAMILIES)
def test_edit_gives_the_same_routing_and_logits_as_wb_edit(family, spec_name):
    lm = _model(family)
    nn, ids = to_nnsight(lm), _ids(lm)
    native, native_calls = _hook_path(lm, lambda: lm.model(input_ids=ids).logits)
    used = sorted(set(native_calls[0][1][:, 0].tolist()))[:3]
    specs = SPECS[spec_name](lm, used)
    ref, calls = _hook_path(lm, lambda: lm.model(input_ids=ids).logits, specs)
    with torch.no_grad(), nn.trace(ids):
        routing = apply_edits(nn, lm, *specs)
        logits = nn.output.logits.save()
    _assert_same_routing(routing, calls, lm)
    assert torch.equal(logits, ref)
    first = lm.moe_layers[0]
    assert not torch.equal(routing.topk(first)[0], native_calls[0][1]), "the edit must change the routing"
    if spec_name in ("rows_mask", "rows_keep_rank"):  # row 0 keeps the model's own routing at the first layer
        per_row = ids.shape[1]
        assert torch.equal(routing.topk(first)[0][:per_row], native_calls[0][1][:per_row])
        torch.testing.assert_close(logits[0], native[0])  # same routing; expert batching may move last bits


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "dbrx"])
def test_generation_with_an_edit_gives_the_same_tokens(family):
    lm = _model(family)
    nn, ids = to_nnsight(lm), _ids(lm, 5)
    steps = 4
    kw = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    specs = [wb.Mask({lm.moe_layers[0]: [0, 1, 2, 3]}), wb.KeepRank(1, rows=[1])]
    ref, calls = _hook_path(lm, lambda: lm.model.generate(ids, attention_mask=torch.ones_like(ids), **kw), specs)
    with torch.no_grad(), nn.generate(ids, **kw) as tracer:
        routing = apply_edits(nn, lm, *specs, steps=steps)
        tokens = tracer.result.save()
    assert torch.equal(tokens, ref)
    assert routing.num_steps == steps
    _assert_same_routing(routing, calls, lm)
    idx, w = routing.by_row(lm.moe_layers[0])
    assert idx.shape[:2] == (2, ids.shape[1] + steps - 1)
    assert not set(idx[0].ravel().tolist()) & {0, 1, 2, 3}
    trace = routing.to_trace(lm, tokens)
    assert trace.num_tokens == 2 * (ids.shape[1] + steps - 1)
    assert (trace.token_ids == tokens[:, :-1].reshape(-1).numpy()).all()


def test_generation_shorter_than_steps_keeps_what_ran():
    lm = _model("mixtral")
    nn, ids = to_nnsight(lm), _ids(lm, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), nn.generate(ids, max_new_tokens=2, do_sample=False):
            routing = record_routing(nn, lm, steps=5)
    assert routing.num_steps == 2
    assert any("fewer than steps=5" in str(w.message) for w in caught)


def test_steps_inside_your_own_iter_loop():
    lm = _model("qwen2_moe")
    nn, ids = to_nnsight(lm), _ids(lm, 5)
    spec = wb.Mask({lm.moe_layers[-1]: [0, 1]})
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    ref, _ = _hook_path(lm, lambda: lm.model.generate(ids, attention_mask=torch.ones_like(ids), **kw), [spec])
    import nnsight

    with torch.no_grad(), nn.generate(ids, **kw) as tracer:
        per_step = nnsight.save([])
        for _ in tracer.iter[:3]:
            per_step.append(apply_edits(nn, lm, spec))
        tokens = tracer.result.save()
    assert torch.equal(tokens, ref)
    assert [r.topk(lm.moe_layers[-1])[0].shape[0] for r in per_step] == [10, 2, 2]


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "dbrx"])
def test_model_is_unchanged_after_traces(family):
    from workbench.testing import tiny_model

    lm = wb.wrap(*tiny_model(family))
    ids = _ids(lm)
    params = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    nn = to_nnsight(lm)
    assert to_nnsight(lm) is nn
    with torch.no_grad(), nn.trace(ids):
        apply_edits(nn, lm, wb.KeepRank(2), wb.Mask({lm.moe_layers[0]: [1]}))
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), nn.trace(ids):
            apply_edits(nn, lm, wb.TopK(1))
            raise RuntimeError("boom")
    with torch.no_grad():
        after = lm.model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert not lm.probes.active and not lm.probes.edit_frames
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert lm.tokenizer.padding_side == "right", "nnsight's tokenizer is a copy"


def test_errors_say_what_to_do():
    lm = _model("mixtral")
    nn, ids = to_nnsight(lm), _ids(lm)
    with pytest.raises(RuntimeError, match="inside a `with nn_model.trace"):
        record_routing(nn, lm)
    with pytest.raises(ValueError, match="at least one spec"):
        apply_edits(nn, lm)
    with pytest.raises(ValueError, match="out of range"):
        with torch.no_grad(), nn.trace(ids):
            apply_edits(nn, lm, wb.Mask({0: [99]}))
    with pytest.raises(ValueError, match="not an MoE layer"):
        with torch.no_grad(), nn.trace(ids):
            record_routing(nn, lm, layers=[7])
    with pytest.raises(ValueError, match="steps must be a positive int"):
        with torch.no_grad(), nn.generate(ids, max_new_tokens=2):
            record_routing(nn, lm, steps=0)
    with pytest.raises(RuntimeError, match="wb.edit block is active"):
        with wb.edit(lm, wb.TopK(1)), torch.no_grad(), nn.trace(ids):
            record_routing(nn, lm)
    assert not lm.probes.active
    with pytest.raises(RuntimeError, match="empty tracer.invoke"):
        with torch.no_grad(), nn.trace() as tracer:
            with tracer.invoke(ids[:1]):
                record_routing(nn, lm)
            with tracer.invoke(ids[1:]):
                pass


def test_an_empty_invoke_sees_the_whole_batch():
    lm = _model("olmoe")
    nn, ids = to_nnsight(lm), _ids(lm)
    _, calls = _hook_path(lm, lambda: lm.model(input_ids=ids), [wb.TopK(1, rows=[0])])
    with torch.no_grad(), nn.trace() as tracer:
        with tracer.invoke(ids[:1]):
            pass
        with tracer.invoke(ids[1:]):
            pass
        with tracer.invoke():
            routing = apply_edits(nn, lm, wb.TopK(1, rows=[0]))
    _assert_same_routing(routing, calls, lm)
