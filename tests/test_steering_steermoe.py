"""The SteerMoE preset against small re-implementations of the reference's formulas, written here.

Reference: adobe-research/SteerMoE @ 0c7e6b5 — ``src/modeling_vllm/qwen3_moe.py`` lines 158-164 (the
routing), ``src/utils.py`` lines 90-125 (which experts), ``custom_steering.ipynb`` ``calc_risk_diff``
(the score). Nothing below calls the package's routing code to get the expected values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import steering

FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "gpt_oss", "deepseek_v3"]
MARGIN = 0.01


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_route(z, lm, layer, on, off):
    """One token: ``{expert: weight}`` as the reference computes it (softmax families), or with the
    logit offset and DeepSeek-V3's rule written out (sigmoid family)."""
    z = np.asarray(z, dtype=np.float64)
    rule, k = lm.rule, lm.top_k
    if rule.scoring == "sigmoid":
        s = z.copy()
        top, low = s.max(), s.min()
        s[on], s[off] = top + MARGIN, low - MARGIN
        score = 1 / (1 + np.exp(-s))
        choice = score + lm.selection_bias(layer).double().numpy()
        size = len(z) // rule.n_group
        groups = np.sort(choice.reshape(rule.n_group, size), axis=1)[:, -2:].sum(axis=1)
        keep = np.argsort(-groups, kind="stable")[:rule.topk_group]
        choice = np.where(np.isin(np.arange(len(z)) // size, keep), choice, -np.inf)
        idx = np.argsort(-choice, kind="stable")[:k]
        w = score[idx] / score[idx].sum() * rule.scaling
        return dict(zip(idx.tolist(), w.tolist()))
    s = _log_softmax(z)
    top, low = s.max(), s.min()
    s[on], s[off] = top + MARGIN, low - MARGIN
    if rule.scoring == "topk_softmax":  # GPT-OSS: top-k of the scores, softmax over the kept ones
        idx = np.argsort(-s, kind="stable")[:k]
        return dict(zip(idx.tolist(), _softmax(s[idx]).tolist()))
    p = _softmax(s)
    idx = np.argsort(-p, kind="stable")[:k]
    w = p[idx] / p[idx].sum() if rule.renormalize else p[idx]
    return dict(zip(idx.tolist(), w.tolist()))


class Calls:
    """Listener keeping every router call: (layer, logits, decision)."""

    def __init__(self):
        self.calls = []

    def __call__(self, layer, logits, decision):
        self.calls.append((layer, logits.detach().float().cpu().clone(),
                           decision.idx.cpu().clone(), decision.w.detach().float().cpu().clone(),
                           decision.valid.cpu().clone()))


@pytest.mark.parametrize("family", FAMILIES)
def test_offset_routing_equals_the_reference_formula(tiny, family):
    lm = tiny(family)
    first, last = lm.moe_layers[0], lm.moe_layers[-1]
    on = {first: [3], last: [1, 6][: lm.top_k]}
    off = {first: [0, 5], last: [2]}
    calls = Calls()
    lm.probes.add_listener(calls)
    try:
        with wb.edit(lm, wb.Offset(on=on, off=off)):
            steering.generate(lm, ["The quick brown fox", "def add(a, b):"], max_new_tokens=3)
    finally:
        lm.probes.remove_listener(calls)
    assert calls.calls
    compared = 0
    for layer, logits, idx, w, valid in calls.calls:
        for t in range(logits.shape[0]):
            expected = reference_route(logits[t].numpy(), lm, layer, on[layer], off[layer])
            got = {int(e): float(x) for e, x, ok in zip(idx[t], w[t], valid[t]) if ok}
            assert got.keys() == expected.keys(), (family, layer, t, got, expected)
            for e in got:
                assert got[e] == pytest.approx(expected[e], rel=1e-4, abs=1e-6)
            compared += 1
    assert compared > 10


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe", "gpt_oss"])
def test_activated_always_chosen_deactivated_never(tiny, family):
    lm = tiny(family)
    layer = lm.moe_layers[0]
    calls = Calls()
    lm.probes.add_listener(calls)
    try:
        with steering.switch(lm, on=[(layer, 4)], off=[(layer, 1), (layer, 2)]):
            steering.generate(lm, ["The quick brown fox", "Der schnelle"], max_new_tokens=4)
    finally:
        lm.probes.remove_listener(calls)
    steps = [(idx, valid) for lay, _, idx, _, valid in calls.calls if lay == layer]
    assert len(steps) >= 4
    for idx, valid in steps:
        assert ((idx == 4) & valid).any(dim=-1).all()
        assert not ((idx == 1) | (idx == 2))[valid].any()


def reference_risk_difference(trace, in_a):
    """Per (layer, expert): a / (a + d) in set A minus in set B, counting token by token."""
    num_layers, num_tokens, _ = trace.topk_idx.shape
    a = {True: np.zeros((num_layers, trace.num_experts)), False: np.zeros((num_layers, trace.num_experts))}
    d = {True: np.zeros((num_layers, trace.num_experts)), False: np.zeros((num_layers, trace.num_experts))}
    for t in range(num_tokens):
        side = bool(in_a[trace.doc[t]])
        for li in range(num_layers):
            chosen = {int(e) for e in trace.topk_idx[li, t] if e >= 0}
            for e in range(trace.num_experts):
                (a if e in chosen else d)[side][li, e] += 1
    rate = {s: a[s] / (a[s] + d[s]) for s in (True, False)}
    return (rate[True] - rate[False]).reshape(-1)


def test_risk_difference_equals_the_reference_count(tiny):
    lm = tiny("qwen3_moe")
    sets = {"de": ["Der Hund ist nicht hier", "Die Katze", "Das Haus ist sehr alt und groß"],
            "en": ["The dog is not here", "The cat is", "The house"]}
    found = steering.find_experts(lm, sets, a="de", permutations=20, rank_by="risk_diff")
    in_a = np.array([label == "de" for label in found.trace.doc_labels])
    expected = reference_risk_difference(found.trace, in_a)
    table = found.table.sort_values(["layer", "expert"])
    assert np.allclose(table.risk_diff.to_numpy(), expected)
    assert found.table.risk_diff.is_monotonic_decreasing
    assert "t" in found.table.columns  # Welch's t stays beside it


def reference_selection(table, num_pos, num_neg, k, reverse):
    """``steer_moe``: sort by |rd|; the first num_pos positive (set +1 while the layer has < k) and
    num_neg negative ones (set -1); ``reverse`` flips the sign first. Equal scores keep the order of
    the reference's table (built layer by layer, expert by expert)."""
    rows = sorted(sorted(table), key=lambda r: -abs(r[2]))
    rows = [(layer, e, -rd if reverse else rd) for layer, e, rd in rows]
    pos = [r for r in rows if r[2] > 0][:num_pos]
    neg = [r for r in rows if r[2] < 0][:num_neg]
    on, per_layer = [], {}
    for layer, e, _ in pos:
        if per_layer.get(layer, 0) < k:
            on.append((layer, e))
            per_layer[layer] = per_layer.get(layer, 0) + 1
    return on, [(layer, e) for layer, e, _ in neg]


def test_selection_equals_the_reference(tiny):
    lm = tiny("mixtral")
    sets = {"a": ["the cat sat on the mat", "a dog ran in the park", "birds sing in trees"],
            "b": ["def f(x): return x", "for i in range(3): print(i)", "import os, sys"]}
    found = steering.find_experts(lm, sets, a="a", permutations=20)
    table = [(int(r.layer), int(r.expert), float(r.risk_diff)) for r in found.table.itertuples()]
    for n_on, n_off in [(3, 4), (6, 2), (1, 1)]:
        # toward B = the reference's reverse_effect on A's behaviour: B-linked on, A-linked off
        on, off = steering.select_steermoe(found, n_on, n_off, lm.top_k, toward="b")
        assert (on, off) == reference_selection(table, n_on, n_off, lm.top_k, reverse=True)
        on, off = steering.select_steermoe(found, n_on, n_off, lm.top_k, toward="a")
        assert (on, off) == reference_selection(table, n_on, n_off, lm.top_k, reverse=False)


def test_preset_pipeline_steers_the_selected_experts_in_one_edit(tiny):
    from workbench.steering.pipeline import steer_sets

    lm = tiny("qwen3_moe")
    a = ["Der Hund ist hier und da", "Die Katze ist nicht da", "Das Haus ist groß und alt"]
    b = ["The dog is here and there", "The cat is not there", "The house is big and old"]
    contrast, exp = steer_sets(lm, a, b, top=3, seeds=(0, 1), max_new_tokens=2, prompt_tokens=3,
                               permutations=20, preset="steermoe", activate=2, progress=False)
    assert contrast.rank_by == "risk_diff"
    assert exp.table.condition.tolist() == ["baseline", "switch", "random_switch", "random_switch"]
    on, off = steering.select_steermoe(contrast, 2, 3, lm.top_k)
    assert exp.activated == on and list(exp.top) == off
    switched = exp.table.set_index("condition").loc["switch", "experts"].split()
    assert switched == [f"+L{x}/E{e}" for x, e in on] + [f"-L{x}/E{e}" for x, e in off]
    for text in exp.table[exp.table.condition == "random_switch"].experts:
        plus = [x for x in text.split() if x.startswith("+")]
        minus = [x for x in text.split() if x.startswith("-")]
        assert len(plus) == len(on) and len(minus) == len(off)
        assert not {x[1:] for x in plus + minus} & {x[1:] for x in switched}
    assert {"effect", "ci_low", "ci_high"} <= set(exp.effects().columns)


@torch.no_grad()
def test_switch_restores_the_model_even_when_the_body_raises(tiny):
    lm = tiny("olmoe")
    ids = lm.tokenizer(["The quick brown fox"], return_tensors="pt").input_ids
    before = lm.model(ids).logits.detach()
    with pytest.raises(RuntimeError, match="boom"):
        with steering.switch(lm, on=[(0, 3)], off=[(1, 2), (1, 5)]):
            during = lm.model(ids).logits.detach()
            raise RuntimeError("boom")
    assert not torch.equal(before, during)
    assert torch.equal(before, lm.model(ids).logits.detach())
    assert not lm.probes.edit_frames
