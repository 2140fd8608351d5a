"""Edit specs validate what they are given; numbers that go wrong are reported; and a property-based
tier (hypothesis) for specs, routing plans and trace round-trips."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench as wb
from workbench.kernels import reference
from workbench.kernels.routing import RoutingPlan, apply_plan
from workbench.kernels.rules import RoutingRule

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("make,error,match", [
    (lambda: wb.Mask({0: "12"}), TypeError, "expert '12'"),           # was: experts 1 and 2
    (lambda: wb.Mask({0: [1.5]}), TypeError, "must be an integer"),
    (lambda: wb.Mask({"0": [1]}), TypeError, "layer '0'"),
    (lambda: wb.Mask({0: [True]}), TypeError, "must be an integer"),
    (lambda: wb.Mask({0: [1]}, layers=[1]), ValueError, "does not match"),
    (lambda: wb.TopK(2.5), TypeError, "TopK: k"),                    # was: k = 2
    (lambda: wb.TopK(0), ValueError, "positive"),
    (lambda: wb.TopP(0.0), ValueError, r"\(0, 1\]"),
    (lambda: wb.TopP(1.5), ValueError, r"\(0, 1\]"),
    (lambda: wb.TopP(float("nan")), ValueError, "finite"),
    (lambda: wb.TopP("0.5"), TypeError, "number"),
    (lambda: wb.Force({0: {3: float("nan")}}), ValueError, "finite"),
    (lambda: wb.Force({0: {3: float("inf")}}), ValueError, "finite"),
    (lambda: wb.Force({0: [3]}, weight=-1.0), ValueError, ">= 0"),
    (lambda: wb.Skip(1.5), ValueError, "between 0 and 1"),
    (lambda: wb.Skip(-0.1), ValueError, "between 0 and 1"),
    (lambda: wb.Skip({0: 0.5}, layers=[1]), ValueError, "does not match"),
    (lambda: wb.TopK(1, rows=[-1]), ValueError, "rows"),
    (lambda: wb.TopK(1, rows=["0"]), TypeError, "row"),
])
def test_specs_refuse_bad_values_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_specs_refuse_what_this_model_does_not_have(tiny):
    lm = tiny("mixtral")
    for spec, match in ((wb.Mask({0: [-1]}), "out of range"), (wb.Mask({0: [8]}), "out of range"),
                        (wb.Mask({5: [1]}), "not an MoE layer"), (wb.TopK(9), "between 1 and 8")):
        with pytest.raises(ValueError, match=match):
            wb.edit(lm, spec)
    with pytest.warns(UserWarning, match="stay empty"):
        wb.edit(lm, wb.Mask({0: list(range(7))}))
    with pytest.warns(UserWarning, match="all 8 experts of layer 0 are masked"):
        wb.edit(lm, wb.Mask({0: list(range(8))}))
    deepseek = tiny("deepseek_v2")
    rule = deepseek.rule
    reachable = rule.topk_group * (deepseek.num_experts // rule.n_group)
    with pytest.raises(ValueError, match="group-limited"):
        wb.edit(deepseek, wb.TopK(reachable + 1))


def test_rows_outside_the_batch_are_refused(tiny):
    lm = tiny("mixtral")
    ids = lm.tokenizer(["one two three"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="outside the batch"):
        with wb.edit(lm, wb.TopK(1, rows=[3])), torch.no_grad():
            lm.model(input_ids=ids)
    assert not lm.probes.active


def test_nan_router_scores_are_reported_under_an_edit(tiny):
    lm = tiny("olmoe")
    ids = lm.tokenizer(["one two three"], return_tensors="pt").input_ids
    gate = lm.adapter.router(lm.block(lm.moe_layers[0]))
    weight = next(gate.parameters())
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        with pytest.raises(FloatingPointError, match=r"layer 0: .*token 0"):
            with wb.edit(lm, wb.TopK(1)), torch.no_grad():
                lm.model(input_ids=ids)
        with pytest.raises(FloatingPointError, match=r"layer 0"):
            wb.record(lm, ["one two three"], progress=False)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not lm.probes.active


# -- property-based tier -----------------------------------------------------------------------
RULES = [RoutingRule("softmax"), RoutingRule("softmax", renormalize=True), RoutingRule("sigmoid", renormalize=True)]


@FAST
@given(seed=st.integers(0, 2**16), rule=st.sampled_from(RULES), k=st.integers(1, 4),
       blocked=st.sets(st.integers(0, 7), max_size=3), emptied=st.sets(st.integers(0, 7), max_size=2))
def test_routing_plans_equal_the_per_token_reference(seed, rule, k, blocked, emptied):
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed)) * 3
    plan = RoutingPlan(k=k, blocked=frozenset(blocked), emptied=frozenset(emptied - blocked))
    got = apply_plan(logits, rule, plan)
    for t in range(logits.shape[0]):
        want = reference.plan_token(logits[t].tolist(), rule, plan)
        for s, (e, w, valid) in enumerate(want):
            assert bool(got.valid[t, s]) == valid
            if valid:
                assert int(got.idx[t, s]) == e and math.isclose(float(got.w[t, s]), w, rel_tol=1e-5, abs_tol=1e-6)
        assert not set(got.idx[t][got.valid[t]].tolist()) & blocked  # a blocked expert is never chosen


@FAST
@given(masked=st.dictionaries(st.sampled_from([0, 1]), st.sets(st.integers(0, 7), min_size=1, max_size=6),
                              min_size=1))
def test_any_valid_mask_is_obeyed_and_leaves_the_model_as_it_was(tiny, masked):
    lm = tiny("mixtral")
    ids = lm.tokenizer(["the quick brown fox"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few experts left: empty slots are warned about
        with wb.edit(lm, wb.Mask({layer: sorted(e) for layer, e in masked.items()})):
            trace = wb.record(lm, ["the quick brown fox"], progress=False)
    for layer, experts in masked.items():
        chosen = trace.topk_idx[trace.layer_index(layer)]
        assert not np.isin(chosen[chosen >= 0], list(experts)).any()
    assert np.isfinite(trace.topk_w).all()
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, before)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_trace_survives_the_store_round_trip(tmp_path_factory, data):
    layers, k = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    experts, tokens = data.draw(st.integers(k, 12)), data.draw(st.integers(1, 60))
    docs = data.draw(st.integers(1, min(tokens, 5)))
    seed = data.draw(st.integers(0, 2**16))
    labels = data.draw(st.lists(st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4)),
                                min_size=docs, max_size=docs))
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((layers, tokens, experts)), axis=-1)[:, :, :k].astype(np.int16)
    idx[rng.random(idx.shape) < 0.1] = -1
    w = np.where(idx >= 0, rng.random(idx.shape), 0).astype(np.float16).astype(np.float32)
    doc = np.sort(np.concatenate([np.arange(docs), rng.integers(0, docs, tokens - docs)])).astype(np.int32)
    pos = np.concatenate([np.arange(n) for n in np.bincount(doc, minlength=docs)]).astype(np.int32)
    trace = wb.RoutingTrace(idx, w, rng.integers(0, 50, tokens), doc, pos, list(range(layers)), experts, "fp",
                            token_text={i: chr(0x41 + i % 40) for i in range(50)}, doc_labels=labels)
    stored = trace.to_store(tmp_path_factory.mktemp("rt") / "s")
    back = stored.materialize()
    for name in ("topk_idx", "topk_w", "token_ids", "doc", "pos"):
        assert np.array_equal(getattr(back, name), getattr(trace, name)), name
    assert back.doc_labels == labels and [type(x) for x in back.doc_labels] == [type(x) for x in labels]
    from workbench.analysis import TraceCounts
    assert np.array_equal(stored.counts().coact, TraceCounts(trace).coact)
