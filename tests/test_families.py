"""Discovery, rule identification and the computed coverage matrix over transformers' own registry."""

import types

import pytest
import torch

import workbench as wb
from workbench.adapters.identify import IdentificationError, identify
from workbench.families.build import build_tiny, candidate_model_types, dummy_inputs
from workbench.families.coverage import compute_matrix
from workbench.families.matrix import load_matrix
from workbench.families.publish import moe_rows, summary
from workbench.testing import tiny_model


@pytest.fixture(scope="module")
def matrix():
    """The matrix of every MoE type the installed transformers registers (computed, not listed)."""
    return compute_matrix(candidate_model_types(), progress=False)


def test_matrix_covers_the_registry_and_matches_what_is_published(matrix):
    published = {r["model_type"]: r for r in load_matrix()}
    assert published, "workbench/families/coverage.csv is missing: run python -m workbench families --write"
    moe = moe_rows(matrix)
    exact = [r["model_type"] for r in moe if r["status"] == "exact"]
    assert len(exact) >= 70, summary(matrix)
    for row in moe:
        # a type that is not exact must be a known, published refusal with its reason; a type new in
        # this transformers, or one that regressed, fails here until it works (or is re-published)
        if row["status"] != "exact":
            assert row["model_type"] in published, f"new MoE type not exact: {row}"
            assert published[row["model_type"]]["status"] == row["status"], row
        else:
            assert row["recorded"] == "exact" and row["edits"] == "exact"
        assert row["model_type"] in published, f"{row['model_type']} is not in the published matrix"
    for row in moe:
        if row["status"] in ("refused", "recorded only", "not built"):
            assert (row["reason"] or row["edits"]), f"{row['model_type']} is refused without a reason"


def test_supported_types_are_the_verified_ones(matrix):
    verified = {r["model_type"] for r in moe_rows(matrix) if r["status"] == "exact"}
    assert verified <= set(wb.supported_model_types())


@pytest.mark.parametrize("family, expected", [
    ("mixtral", "softmax -> top-k -> renormalise"),
    ("olmoe", "softmax -> top-k"),
    ("deepseek_v2", "softmax -> groups 2/4 by max -> top-k -> x1.5"),
    ("deepseek_v3", "sigmoid (+ selection bias for choice) -> groups 2/4 by top2sum -> top-k -> renormalise -> x2.5"),
    ("gpt_oss", "top-k of logits -> softmax over kept"),
    ("phimoe", "sparsemixer"),
])
def test_identification_finds_the_family_rule(family, expected):
    model, _ = tiny_model(family)
    adapter = identify(model, use_cache=False)
    assert adapter.origin == "identified"
    assert adapter.rule(model.config).describe() == expected


def test_identification_restores_every_tensor_it_perturbs():
    model, _ = tiny_model("deepseek_v3")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    identify(model, use_cache=False)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_a_router_outside_the_grammar_is_refused_saying_what_was_tried():
    model, _ = tiny_model("qwen3_moe")
    for layer in model.model.layers:
        router = layer.mlp.gate
        native = router.forward

        def squared(hidden_states, native=native):  # weights = p^2 of the kept experts: no rule of ours
            logits, w, idx = native(hidden_states)
            return logits, w * w, idx
        router.forward = squared
    with pytest.raises(IdentificationError, match="tried .* rules"):
        identify(model, use_cache=False)


def test_describe_says_how_the_adapter_was_found():
    lm = wb.wrap(*tiny_model("mixtral"))
    text = wb.describe(lm)
    assert "identified from the module tree" in text and "exact on" in text
    assert "registered family file" in wb.describe(wb.wrap(*tiny_model("dbrx")))


def test_identification_is_cached_per_model_type_and_config():
    a, b = tiny_model("olmoe", seed=0)[0], tiny_model("olmoe", seed=1)[0]
    assert identify(a) is identify(b)  # same type and config: identified once


def test_hash_routed_layers_are_recorded_but_not_edited():
    model = build_tiny("deepseek_v4")
    lm = wb.wrap(model)
    assert lm.hash_layers and set(lm.hash_layers) < set(lm.moe_layers)
    with pytest.raises(ValueError, match="route by token id"):
        wb.edit(lm, wb.Mask({lm.hash_layers[0]: [0]}))
    learned = [x for x in lm.moe_layers if x not in lm.hash_layers]
    inputs = dummy_inputs(model)
    with torch.no_grad():
        plain = model(**inputs).logits
        with wb.edit(lm, wb.TopK(1)):  # all layers: the learned ones change, hash layers keep their ids
            edited = model(**inputs).logits
    assert learned and not torch.equal(plain, edited)


def test_encoder_decoder_records_both_stacks_with_layer_names():
    from workbench.testing import tiny_tokenizer

    lm = wb.wrap(build_tiny("switch_transformers"), tiny_tokenizer())
    names = [lm.layer_names[x] for x in lm.moe_layers]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    trace = wb.record(lm, ["the quick brown fox jumps"], progress=False)
    assert trace.layers == lm.moe_layers and (trace.topk_idx >= 0).all()
    assert {str(k): v for k, v in trace.meta["layer_names"].items()} == {str(k): v for k, v in lm.layer_names.items()}
    with wb.edit(lm, wb.Mask({lm.moe_layers[-1]: sorted({int(e) for e in trace.topk_idx[-1].flatten()})})):
        edited = wb.record(lm, ["the quick brown fox jumps"], progress=False)
    assert not set(edited.topk_idx[-1].flatten().tolist()) & set(trace.topk_idx[-1].flatten().tolist())


def test_null_experts_keep_their_own_ids():
    lm = wb.wrap(build_tiny("longcat_flash"))
    assert lm.num_routed_experts < lm.num_experts
    assert "null experts" in wb.describe(lm)
    seen = set()

    def listener(layer, logits, decision):
        seen.update(decision.idx[decision.valid].tolist())
    lm.probes.add_listener(listener)
    try:
        with torch.no_grad():
            lm.model(**dummy_inputs(lm.model, length=32))
    finally:
        lm.probes.remove_listener(listener)
    assert max(seen) < lm.num_experts and any(e >= lm.num_routed_experts for e in seen)


def test_a_block_that_changes_the_routing_before_its_experts_is_read_at_the_router(monkeypatch):
    import workbench.adapters.identify as identify_module

    monkeypatch.setattr(identify_module, "_CACHE", {})  # the unpatched qwen3_moe may be cached
    model, tokenizer = tiny_model("qwen3_moe")
    called = []

    # the block hands its experts the squared weights: no rule reproduces the experts call, while the
    # router's own (logits, weights, indices) are softmax -> top-k -> renormalise
    def squaring(block, hidden_states):
        batch, length, hidden = hidden_states.shape
        x = hidden_states.view(-1, hidden)
        _, weights, indices = block.gate(x)
        called.append((indices.clone(), weights.clone()))
        return block.experts(x, indices, weights * weights).reshape(batch, length, hidden)
    for layer in model.model.layers:
        layer.mlp.forward = types.MethodType(squaring, layer.mlp)
    adapter = identify(model, use_cache=False)
    assert adapter.router_io == "logits_weights_indices" and "router's output" in adapter.notes
    assert adapter.rule(model.config).describe() == "softmax -> top-k -> renormalise"

    lm = wb.wrap(model, tokenizer)
    text = ["the quick brown fox jumps"]
    trace = wb.record(lm, text, progress=False)
    banned = sorted({int(e) for e in trace.topk_idx[0][0].flatten()})  # the first token's experts
    called.clear()
    with wb.edit(lm, wb.Mask({lm.moe_layers[0]: banned})):  # edited at the router: the experts see it
        edited = wb.record(lm, text, progress=False)
    assert not set(edited.topk_idx[0].flatten().tolist()) & set(banned)
    indices, weights = called[0]
    assert not set(indices[weights > 0].tolist()) & set(banned)
