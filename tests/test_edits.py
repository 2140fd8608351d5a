"""Routing edits: semantics checked by recording, exact restoration, per-row edits, errors."""

import pytest
import torch

import workbench as wb

EDIT_FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "granitemoe", "phimoe", "llama4_text",
                 "dbrx", "jetmoe", "olmoe", "deepseek_v2", "qwen3_moe", "glm4_moe"]


def _logits(lm, texts):
    ids = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return lm.model(**ids).logits


def _experts_seen(lm):
    """Records the (idx, w) every experts call actually receives, to check ids stay in range."""
    seen = []

    def hook(module, args):
        if len(args) >= 3:
            seen.append(args[1])
    handles = [lm.experts(layer).register_forward_pre_hook(hook) for layer in lm.moe_layers]
    return seen, handles


@pytest.mark.parametrize("family", EDIT_FAMILIES)
def test_mask_next_best_removes_experts_and_keeps_k(family, tiny, texts):
    lm = tiny(family)
    layer = lm.moe_layers[0]
    base = wb.record(lm, texts, progress=False)
    banned = sorted(set(base.topk_idx[0, :, 0].tolist()))[:3]
    with wb.edit(lm, wb.Mask({layer: banned})):
        edited = wb.record(lm, texts, progress=False)
    assert not set(banned) & set(edited.topk_idx[0].ravel().tolist())
    assert (edited.topk_idx[0] >= 0).all(), "next-best semantics fills every slot"
    # other layers are untouched wherever their input did not change: the first layer's is unchanged
    assert edited.k == base.k


def _mask_topk(lm):
    return [wb.Mask({lm.moe_layers[0]: [0, 1]}), wb.TopK(1)]


def _offset(lm):
    layers = [x for x in lm.moe_layers if x not in lm.hash_layers]
    return [wb.Offset(on={layers[0]: [1]}, off={layers[-1]: [0, 2]})]


@pytest.mark.parametrize("edits", [_mask_topk, _offset], ids=["mask_topk", "offset"])
@pytest.mark.parametrize("family", EDIT_FAMILIES)
def test_model_is_restored_exactly_even_after_an_exception(family, edits, tiny, texts):
    lm = tiny(family)
    params = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    before = _logits(lm, texts)
    with pytest.raises(RuntimeError, match="boom"):
        with wb.edit(lm, *edits(lm)):
            during = _logits(lm, texts)
            raise RuntimeError("boom")
    assert not torch.equal(before, during)
    assert torch.equal(before, _logits(lm, texts))
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert not lm.probes.active and not lm.probes.edit_frames


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "jetmoe", "llama4_text", "dbrx"])
def test_keep_rank_routes_to_one_expert(family, tiny, texts):
    lm = tiny(family)
    scores = wb.record(lm, texts, scores=True, progress=False)
    with wb.edit(lm, wb.KeepRank(2 if lm.top_k > 1 else 1)):
        edited = wb.record(lm, texts, progress=False)
    # first MoE layer input is unchanged, so rank-r expert = r-th best selection score
    from workbench.kernels import scores as selection_scores
    logits = torch.from_numpy(scores.scores[0].astype("float32"))
    choice, _ = selection_scores(logits, lm.rule, lm.selection_bias(lm.moe_layers[0]))
    rank = 2 if lm.top_k > 1 else 1
    expected = torch.argsort(choice, dim=-1, descending=True)[:, rank]
    assert edited.k == 1
    assert torch.equal(torch.from_numpy(edited.topk_idx[0, :, 0].astype("int64")), expected)
    assert (edited.topk_w[0, :, 0] == 1.0).all()


def test_mask_empty_slot_rescales(tiny, texts):
    lm = tiny("mixtral")
    base = wb.record(lm, texts, progress=False)
    target = int(base.topk_idx[0, 0, 0])
    with wb.edit(lm, wb.Mask({0: [target]}, mode="empty")):
        edited = wb.record(lm, texts, progress=False)
    had = (base.topk_idx[0] == target).any(axis=1)
    assert had.any()
    assert (edited.topk_idx[0][had] == -1).sum(axis=1).tolist() == [1] * int(had.sum())
    assert abs(edited.topk_w[0].sum(axis=1) - 1.0).max() < 1e-5


def test_force_topk_topp_skip(tiny, texts):
    lm = tiny("qwen3_moe")
    with wb.edit(lm, wb.Force({0: [5]}, weight=0.25)):
        forced = wb.record(lm, texts, progress=False)
    assert ((forced.topk_idx[0] == 5).sum(axis=1) == 1).all()
    assert (forced.topk_w[0][forced.topk_idx[0] == 5] == 0.25).all()
    with wb.edit(lm, wb.TopK(4)):
        four = wb.record(lm, texts, progress=False)
    assert four.k == 4 and (four.topk_idx >= 0).all()
    assert abs(four.topk_w.sum(axis=2) - 1).max() < 1e-5  # qwen3 renormalises
    with wb.edit(lm, wb.TopP(0.5)):
        topp = wb.record(lm, texts, scores=True, progress=False)
    probs = torch.softmax(torch.from_numpy(topp.scores[0].astype("float32")), -1)
    kept = (topp.topk_idx[0] >= 0).sum(axis=1)
    sorted_p = probs.sort(-1, descending=True).values.cumsum(-1)
    expected = (sorted_p < 0.5).sum(-1) + 1  # the expert that crosses p is kept
    assert torch.equal(torch.from_numpy(kept).long(), torch.clamp(expected, max=8))
    with wb.edit(lm, wb.Skip(0.9)):
        skipped = wb.record(lm, texts, progress=False)
    base = wb.record(lm, texts, progress=False)
    w = base.topk_w[0]
    should_skip = w[:, 1] < 0.9 * w[:, 0]
    assert ((skipped.topk_idx[0][:, 1] == -1) == should_skip).all()


def test_per_row_edit_leaves_other_rows_default(tiny):
    lm = tiny("mixtral")
    text = "the quick brown fox jumps over the lazy dog"
    ids = lm.tokenizer([text, text], return_tensors="pt")
    with torch.no_grad():
        plain = lm.model(**ids).logits
        with wb.edit(lm, wb.KeepRank(2, rows=[1])):
            mixed = lm.model(**ids).logits
        with wb.edit(lm, wb.KeepRank(2)):
            weak = lm.model(**ids).logits
    # the same routing gives the same logits up to matmul blocking (other rows share the GEMMs)
    assert torch.allclose(mixed[0], plain[0], atol=1e-6)
    assert torch.allclose(mixed[1], weak[1], atol=1e-6)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3)
    # and the routing itself: row 0 exactly the default, row 1 exactly the edited one
    base = wb.record(lm, [text, text], progress=False)
    with wb.edit(lm, wb.KeepRank(2, rows=[1])):
        rows = wb.record(lm, [text, text], progress=False)
    with wb.edit(lm, wb.KeepRank(2)):
        all_weak = wb.record(lm, [text, text], progress=False)
    first, second = rows.doc == 0, rows.doc == 1
    assert (rows.topk_idx[:, first] == base.topk_idx[:, first]).all()
    assert (rows.topk_w[0, first] == base.topk_w[0, first]).all()  # layer 0 sees identical input
    assert abs(rows.topk_w[:, first] - base.topk_w[:, first]).max() < 1e-5
    assert (rows.topk_idx[:, second, :1] == all_weak.topk_idx[:, second]).all()
    assert (rows.topk_idx[:, second, 1:] == -1).all()


def test_per_row_edit_during_generation(tiny):
    lm = tiny("qwen2_moe")
    ids = lm.tokenizer(["the quick brown", "the quick brown"], return_tensors="pt")
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = lm.model.generate(**ids, **kw)
        with wb.edit(lm, wb.Mask({0: [0, 1, 2, 3]}, rows=[1])):
            mixed = lm.model.generate(**ids, **kw)
        with wb.edit(lm, wb.Mask({0: [0, 1, 2, 3]})):
            edited = lm.model.generate(**ids, **kw)
    assert torch.equal(mixed[0], plain[0])
    assert torch.equal(mixed[1], edited[1])


def test_edited_ids_stay_in_range_for_experts_call(tiny, texts):
    lm = tiny("mixtral")
    seen, handles = _experts_seen(lm)
    try:
        with wb.edit(lm, wb.Mask({0: list(range(7))}, mode="empty"), wb.TopP(0.99)):
            _logits(lm, texts)
    finally:
        for h in handles:
            h.remove()
    assert seen and all(((s >= 0) & (s < lm.num_experts)).all() for s in seen)


def test_nested_edits_compose(tiny, texts):
    lm = tiny("olmoe")
    with wb.edit(lm, wb.Mask({0: [0, 1]})):
        with wb.edit(lm, wb.Mask({0: [2, 3]})):
            both = wb.record(lm, texts, progress=False)
        outer = wb.record(lm, texts, progress=False)
    assert not {0, 1, 2, 3} & set(both.topk_idx[0].ravel().tolist())
    assert {2, 3} & set(outer.topk_idx[0].ravel().tolist()) or True
    assert not {0, 1} & set(outer.topk_idx[0].ravel().tolist())
    assert not lm.probes.active


def test_bad_specs_raise_clearly(tiny):
    lm = tiny("mixtral")
    with pytest.raises(ValueError, match="not an MoE layer.*\\[0, 1\\]"):
        wb.edit(lm, wb.Mask({7: [0]}))
    with pytest.raises(ValueError, match="out of range"):
        wb.edit(lm, wb.Mask({0: [8]}))
    with pytest.raises(ValueError, match="conflicting"):
        wb.edit(lm, wb.KeepRank(1), wb.TopP(0.5))
    with pytest.raises(ValueError, match="mode"):
        wb.Mask({0: [1]}, mode="zero")
    with pytest.raises(ValueError, match="at least one spec"):
        wb.edit(lm)
    with pytest.raises(ValueError, match="do not fit"):
        wb.edit(lm, wb.Force({0: [1, 2, 3]}))
    assert not lm.probes.active


def test_force_slot_does_not_renormalise_but_offset_does(tiny, texts):
    lm = tiny("qwen3_moe")
    assert issubclass(wb.ForceSlot, wb.Force)
    base = wb.record(lm, texts, progress=False)
    with wb.edit(lm, wb.ForceSlot({0: [5]})):
        forced = wb.record(lm, texts, progress=False)
    with wb.edit(lm, wb.Offset(on={0: [5]})):
        offset = wb.record(lm, texts, progress=False)
    for trace in (forced, offset):
        assert (trace.topk_idx[0] == 5).any(axis=1).all()
    already = (base.topk_idx[0] == 5).any(axis=1)
    sums = forced.topk_w[0].sum(axis=1)
    assert (sums[~already] > 1).all() and sums[~already].mean() > 1.2  # the top-1 weight replaces the last
    assert abs(offset.topk_w[0].sum(axis=1) - 1).max() < 1e-5  # the family's softmax -> top-k -> renormalise
    # the activated expert becomes the token's best expert: the first slot
    assert (offset.topk_idx[0][:, 0] == 5).all()


def test_offset_specs_compose_and_refuse_clearly(tiny, texts):
    lm = tiny("mixtral")  # k = 2
    with wb.edit(lm, wb.Offset(on={0: [3]}), wb.Offset(off={0: [4]}), wb.Mask({1: [0]})):
        plan = lm.probes.plan_for(lm.probes.active_specs(0), 0)
        both = wb.record(lm, texts, progress=False)
    assert plan.activated == {3} and plan.deactivated == {4}
    assert (both.topk_idx[0] == 3).any(axis=1).all() and not (both.topk_idx[0] == 4).any()
    assert not (both.topk_idx[1] == 0).any()
    with pytest.raises(ValueError, match="both on= and off="):
        wb.Offset(on={0: [1]}, off={0: [1]})
    with pytest.raises(ValueError, match="needs experts"):
        wb.Offset()
    with pytest.raises(ValueError, match=">= 0"):
        wb.Offset(on={0: [1]}, margin=-1)
    with pytest.raises(ValueError, match="fit_to_k"):
        wb.edit(lm, wb.Offset(on={0: [1, 2, 3]}))
    with pytest.raises(ValueError, match="conflicting Offset"):
        wb.edit(lm, wb.Offset(on={0: [1]}), wb.Offset(off={0: [1]}))
    with pytest.raises(ValueError, match="out of range"):
        wb.edit(lm, wb.Offset(off={0: [9]}))
    assert not lm.probes.active
