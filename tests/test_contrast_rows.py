"""Per-row routing behind SCMoE: the fast ProbeManager.decide equals its reference, and the weak
routing "random" draws a seeded expert per token (per layer and position)."""

import pytest
import torch

import workbench as wb
from workbench.contrast import RandomExpert, generate, generate_two_pass
from workbench.kernels import RoutingPlan, apply_plan
from workbench.kernels.plans import route_plans
from workbench.kernels.reference import plan_token, random_expert
from workbench.kernels.routing import random_experts
from workbench.probes import seams

PROMPT = "12 + 34 = 46. The quick"


# -- the fast decide against the reference (split rows, route each group, merge) --------------
def _same_decision(fast, ref):
    """Equal routing; slot counts may differ only by trailing empty slots (top-p on a subset)."""
    k = min(fast.k, ref.k)
    for d in (fast, ref):
        assert not d.valid[:, k:].any() and (d.w[:, k:] == 0).all()
    assert torch.equal(fast.valid[:, :k], ref.valid[:, :k])
    assert torch.equal(torch.where(fast.valid[:, :k], fast.idx[:, :k], -1),
                       torch.where(ref.valid[:, :k], ref.idx[:, :k], -1))
    torch.testing.assert_close(fast.w[:, :k], ref.w[:, :k], rtol=0, atol=1e-7)


SPEC_SETS = {
    "weak row 1": lambda lm: [wb.KeepRank(2 if lm.num_experts > 2 else 1, rows=[1])],
    "top1 row 0, mask all": lambda lm: [wb.TopK(1, rows=[0]), wb.Mask({lm.moe_layers[0]: [0, 1]})],
    "top-p rows 1 and 3": lambda lm: [wb.TopP(0.3, rows=[1, 3])],
    "random row 2": lambda lm: [RandomExpert(seed=4, rows=[2])],
    "three plans": lambda lm: [wb.TopK(1, rows=[0, 3]), wb.KeepRank(1, rows=[1]), wb.Skip(0.9, rows=[3])],
    "all rows": lambda lm: [wb.KeepRank(1)],
}


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "phimoe", "llama4_text", "dbrx"])
@pytest.mark.parametrize("specs", list(SPEC_SETS))
def test_fast_decide_equals_reference(family, specs, tiny):
    lm = tiny(family)
    torch.manual_seed(0)
    with wb.edit(lm, *SPEC_SETS[specs](lm)):
        pm = lm.probes
        for rows, per_row in ((4, 3), (4, 1), (1, 5)):
            num_tokens = rows * per_row
            for layer in lm.moe_layers:
                pm._shapes[layer] = (rows, per_row)
                pm._positions[layer] = torch.arange(per_row).unsqueeze(0) + 7
                logits = torch.randn(num_tokens, lm.num_experts) * 2
                native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k), lm.selection_bias(layer))
                named = [r for s in pm.active_specs(layer) if s.rows is not None for r in s.rows]
                if named and max(named) >= rows:  # a row the batch does not have: refused, never ignored
                    with pytest.raises(ValueError, match="outside the batch"):
                        pm.decide(layer, logits, seams.native_decision(native.idx, native.w))
                    continue
                fast, changed = pm.decide(layer, logits, seams.native_decision(native.idx, native.w))
                ref, changed_ref = pm.decide_reference(layer, logits, seams.native_decision(native.idx, native.w))
                assert changed == changed_ref
                _same_decision(fast, ref)
                again, _ = pm.decide(layer, logits, seams.native_decision(native.idx, native.w))  # memoised
                _same_decision(again, ref)
                # what the hooks run when no listener reads the decision: idx and w only
                lean, _ = pm.decide(layer, logits, wb.kernels.Decision(native.idx, native.w, None), need_valid=False)
                assert torch.equal(lean.idx, fast.idx) and torch.equal(lean.w, fast.w)
    assert not lm.probes.active and not lm.probes._position_handles


def test_memo_follows_the_edit_frames(tiny):
    """A new edit with other specs is never served a stale plan (also with frames set directly,
    as the nnsight bridge does)."""
    lm = tiny("mixtral")
    layer = lm.moe_layers[0]
    logits = torch.randn(2, lm.num_experts)
    native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k))
    for rank in (1, 2, 3):
        with wb.edit(lm, wb.KeepRank(rank, rows=[1])):
            lm.probes._shapes[layer] = (2, 1)
            d, _ = lm.probes.decide(layer, logits, seams.native_decision(native.idx, native.w))
            order = torch.argsort(torch.softmax(logits, -1), dim=-1, descending=True)
            assert int(d.idx[1, 0]) == int(order[1, rank]) and torch.equal(d.idx[0], native.idx[0])
    assert not lm.probes._memos, "an ended edit is not kept alive by the memo"
    from workbench.probes.hooks import MAX_LAYOUTS
    with wb.edit(lm, wb.KeepRank(1, rows=[1])):
        for per_row in range(1, MAX_LAYOUTS + 20):  # one layout per batch shape, bounded
            lm.probes._shapes[layer] = (2, per_row)
            x = torch.randn(2 * per_row, lm.num_experts)
            nat = apply_plan(x, lm.rule, RoutingPlan(k=lm.top_k))
            lm.probes.decide(layer, x, seams.native_decision(nat.idx, nat.w))
        assert 0 < len(lm.probes._memo()[layer]["rows"]) <= MAX_LAYOUTS
    decider = type(lm.probes)(lm)
    for rank in (1, 2):
        decider.edit_frames = [wb.edit(lm, wb.KeepRank(rank))]
        d, _ = decider.decide(layer, logits, seams.native_decision(native.idx, native.w))
        assert torch.equal(d.idx[:, 0], torch.argsort(torch.softmax(logits, -1), -1, descending=True)[:, rank])


# -- the random expert: per token, seeded, deterministic --------------------------------------
def test_random_experts_match_the_reference():
    positions = torch.arange(200)
    for seed, blocked in ((0, ()), (12345, {1, 5}), (2**40 + 3, {0})):
        got = random_experts(seed, positions, 8, blocked).tolist()
        assert got == [random_expert(seed, p, 8, frozenset(blocked)) for p in range(200)]
        assert not set(got) & set(blocked)
    counts = torch.bincount(random_experts(7, torch.arange(16000), 16), minlength=16)
    assert counts.min() > 850 and counts.max() < 1150  # about uniform


def test_random_plan_equals_the_per_token_reference(tiny):
    lm = tiny("qwen3_moe")
    logits = torch.randn(6, lm.num_experts)
    positions = torch.tensor([0, 1, 2, 40, 41, 9])
    for plan in (RoutingPlan(k=1, mode="random", seed=11, rank_weight=0.5),
                 RoutingPlan(k=1, mode="random", seed=3, blocked=frozenset({0, 2}))):
        d = apply_plan(logits, lm.rule, plan, positions=positions)
        for t in range(6):
            (e, w, ok), = plan_token(logits[t].tolist(), lm.rule, plan, position=int(positions[t]))
            assert (int(d.idx[t, 0]), float(d.w[t, 0]), bool(d.valid[t, 0])) == (e, w, ok)
    with pytest.raises(ValueError, match="position"):
        route_plans(logits, lm.rule, [RoutingPlan(k=1, mode="random", seed=1)])


def test_without_position_ids_tokens_are_numbered_within_each_row(tiny):
    """The nnsight bridge's decider sees no position_ids: each row counts from 0."""
    lm = tiny("mixtral")
    layer = lm.moe_layers[0]
    decider = type(lm.probes)(lm)
    decider.edit_frames = [wb.edit(lm, RandomExpert(seed=1))]
    decider._shapes[layer] = (2, 6)
    logits = torch.randn(12, lm.num_experts)
    native = apply_plan(logits, lm.rule, RoutingPlan(k=lm.top_k))
    d, _ = decider.decide(layer, logits, seams.native_decision(native.idx, native.w))
    assert torch.equal(d.idx[:6, 0], d.idx[6:, 0])
    assert torch.equal(d.idx[:6, 0], RandomExpert(seed=1).experts_for(layer, torch.arange(6), lm.num_experts))


def _weak_experts(lm, spec, max_new_tokens=5):
    """Per forward pass and layer, the experts of the weak row's tokens during SCMoE decoding."""
    seen = []

    def listener(layer, logits, decision):
        half = decision.idx.shape[0] // 2
        assert (decision.valid[half:].sum(-1) == 1).all()
        seen.append((layer, decision.idx[half:, 0].clone()))
    lm.probes.add_listener(listener)
    try:
        g = generate(lm, PROMPT, max_new_tokens=max_new_tokens, beta=1.0, weak=spec)
    finally:
        lm.probes.remove_listener(listener)
    return g, seen


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "dbrx", "jetmoe"])
def test_random_weak_row_varies_per_token_and_is_seeded(family, tiny):
    lm = tiny(family)
    spec = RandomExpert(seed=5)
    g, seen = _weak_experts(lm, spec)
    layers = len(lm.moe_layers)
    prompt_len = len(seen[0][1])
    assert len(seen) == layers * g.num_tokens
    for i, (layer, experts) in enumerate(seen):
        step = i // layers
        positions = torch.arange(prompt_len) if step == 0 else torch.tensor([prompt_len + step - 1])
        assert torch.equal(experts, spec.experts_for(layer, positions, lm.num_experts))
    prompt = {layer: experts for layer, experts in seen[:layers]}
    assert all(len(set(e.tolist())) > 1 for e in prompt.values()), "one expert for all tokens of a layer"
    assert len({tuple(e.tolist()) for e in prompt.values()}) > 1, "every layer draws the same experts"
    decoded = [int(e) for layer, e in seen[layers:] if layer == lm.moe_layers[0]]
    assert len(set(decoded)) > 1, "the generated tokens all got the same expert"
    # reproducible with the seed, different with another
    _, again = _weak_experts(lm, RandomExpert(seed=5))
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(seen, again))
    _, other = _weak_experts(lm, RandomExpert(seed=6))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(seen[:layers], other[:layers]))
    assert not lm.probes.active and not lm.probes._position_handles


def test_random_expert_depends_on_position_not_on_how_the_text_is_read(tiny):
    """One forward over prompt + continuation gives each token the expert it had while decoding."""
    lm = tiny("mixtral")
    spec = RandomExpert(seed=9)
    g, seen = _weak_experts(lm, spec, max_new_tokens=4)
    layer = lm.moe_layers[1]
    decoded = torch.cat([e for lay, e in seen if lay == layer])
    ids = torch.tensor([[lm.tokenizer.bos_token_id] + lm.tokenizer(PROMPT)["input_ids"] + g.token_ids[:-1]])
    got = {}
    with wb.edit(lm, spec), torch.no_grad():
        def listener(lay, logits, d):
            got.setdefault(lay, d.idx[:, 0].clone())
        lm.probes.add_listener(listener)
        try:
            lm.model(input_ids=ids)
        finally:
            lm.probes.remove_listener(listener)
    assert torch.equal(got[layer], decoded)
    assert not lm.probes.active


def test_random_weak_batched_equals_two_pass_on_every_family_kind(tiny):
    for family in ("qwen3_moe", "gpt_oss", "llama4_text"):
        lm = tiny(family)
        a = generate(lm, PROMPT, max_new_tokens=6, beta=1.0, weak="random:2")
        b = generate_two_pass(lm, PROMPT, max_new_tokens=6, beta=1.0, weak="random:2")
        assert a.token_ids == b.token_ids and a.weak == "random:2"
