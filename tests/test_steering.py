"""Expert steering: ranking recovers planted experts, edits really act during generation, the
model is restored, the experiment and its statistics behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import steering
from workbench.demo import checkpoint_available
from workbench.steering import stats

FAMILIES = ["mixtral", "qwen3_moe", "deepseek_v3", "dbrx"]


def planted_trace(seed=0, docs=24, tokens=12, layers=(0, 1, 2), experts=8, k=2,
                  planted_a=((1, 5), (2, 2)), planted_b=((0, 6),), rate=0.8):
    """Random routing; set-A documents send ``rate`` of their tokens to the planted_a experts."""
    rng = np.random.default_rng(seed)
    num_tokens = docs * tokens
    idx = np.stack([np.stack([rng.permutation(experts)[:k] for _ in range(num_tokens)])
                    for _ in layers]).astype(np.int16)
    doc = np.repeat(np.arange(docs), tokens)
    labels = ["a" if d % 2 == 0 else "b" for d in range(docs)]
    is_a = np.array([labels[d] == "a" for d in doc])

    def plant(pairs, rows):
        for layer, e in pairs:
            li = list(layers).index(layer)
            hit = rows & (rng.random(num_tokens) < rate) & (idx[li] != e).all(axis=1)
            idx[li, hit, 1] = e
    plant(planted_a, is_a)
    plant(planted_b, ~is_a)
    w = rng.random(idx.shape).astype(np.float32)
    return wb.RoutingTrace(idx, w, np.zeros(num_tokens), doc, np.tile(np.arange(tokens), docs), list(layers),
                           experts, "synthetic", doc_labels=labels)


@pytest.mark.parametrize("test", ["permutation", "welch"])
@pytest.mark.parametrize("measure", ["count", "weight"])
def test_ranking_recovers_planted_experts(test, measure):
    if test == "welch":
        pytest.importorskip("scipy")
    result = steering.contrast_experts(planted_trace(), "a", "b", measure=measure, test=test, permutations=500)
    assert set(result.top(2)) == {(1, 5), (2, 2)}
    assert result.top(1, direction="b") == [(0, 6)]
    table = result.table.set_index(["layer", "expert"])
    assert (table.loc[[(1, 5), (2, 2)], "p"] < 0.01).all()
    assert (table.loc[[(1, 5), (2, 2)], "effect"] > 1).all()
    # planting displaces other experts of the same layers, which shows up as smaller real effects
    others = table.drop(index=[(1, 5), (2, 2), (0, 6)])
    assert table.loc[[(1, 5), (2, 2)], "effect"].min() > 2 * others.effect.max()
    assert len(result.table) == 3 * 8 and result.table["rank"].tolist() == list(range(1, 25))


def test_one_vs_rest_and_label_errors():
    trace = planted_trace()
    trace.doc_labels = ["a", "b", "c"] * 8
    result = steering.contrast_experts(trace, "a", permutations=50)
    assert result.b == ["b", "c"]
    with pytest.raises(ValueError, match="not in the trace"):
        steering.contrast_experts(trace, "german")
    with pytest.raises(ValueError, match="share labels"):
        steering.contrast_experts(trace, "a", ["a", "b"])


def test_activation_maps_count_and_normalise():
    trace = planted_trace(docs=4, tokens=5)
    raw = steering.activation_maps(trace, "count", normalize=False)
    assert raw.shape == (4, 3, 8)
    assert np.allclose(raw.sum(axis=2), 5 * 2)  # every token fills k=2 slots per layer
    rates = steering.activation_maps(trace, "count")
    assert np.allclose(rates, raw / 5)
    mass = steering.activation_maps(trace, "weight", normalize=False)
    assert np.isclose(mass.sum(), trace.topk_w.sum())


def test_welch_matches_scipy_and_wilson_formula():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, (15, 6)), rng.normal(0, 2, (11, 6))
    t, _ = stats.welch_t(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert np.allclose(t, ref.statistic)
    assert np.allclose(stats.welch_pvalues(a, b), ref.pvalue)
    perm = stats.permutation_pvalues(a, b, permutations=2000)
    assert np.allclose(perm, ref.pvalue, atol=0.06)
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64) and stats.mcnemar_exact(3, 3) == 1.0
    assert stats.mcnemar_exact(2, 9) == pytest.approx(scipy_stats.binomtest(2, 11).pvalue)
    low, high = stats.wilson_interval(0, 20)
    assert low == 0 and 0.1 < high < 0.2
    q = stats.bh_adjust([0.01, 0.04, 0.03, 0.5])
    assert np.all(q >= [0.01, 0.04, 0.03, 0.5]) and q[3] == 0.5


class Seen:
    """Listener keeping every (layer, recorded expert ids) of every router call."""

    def __init__(self):
        self.calls = []

    def __call__(self, layer, logits, decision):
        self.calls.append((layer, decision.recorded_idx().detach().cpu()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["next_best", "empty"])
def test_switch_off_removes_experts_during_generation(tiny, family, mode):
    lm = tiny(family)
    layer = lm.moe_layers[-1]
    prompts = ["The quick brown fox", "def add(a, b):"]
    seen = Seen()
    lm.probes.add_listener(seen)
    try:
        steering.generate(lm, prompts, max_new_tokens=4)
        used = {int(e) for lay, ids in seen.calls if lay == layer for e in ids.flatten() if e >= 0}
        target = sorted(used)[:3]
        seen.calls.clear()
        with steering.steer(lm, [(layer, e) for e in target], "off", mode=mode):
            steering.generate(lm, prompts, max_new_tokens=4)
    finally:
        lm.probes.remove_listener(seen)
    steps = [ids for lay, ids in seen.calls if lay == layer]
    assert len(steps) >= 4  # prefill + decoding steps were all seen
    for ids in steps:
        assert not np.isin(ids.numpy(), target).any()
        if mode == "next_best":
            assert (ids >= 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_force_on_puts_experts_into_every_token(tiny, family):
    lm = tiny(family)
    forced = [(lm.moe_layers[0], 1), (lm.moe_layers[-1], lm.num_experts - 1)]
    seen = Seen()
    lm.probes.add_listener(seen)
    try:
        with steering.steer(lm, forced, "on", weight=0.3):
            steering.generate(lm, ["The quick brown fox"], max_new_tokens=3)
    finally:
        lm.probes.remove_listener(seen)
    for layer, expert in forced:
        steps = [ids for lay, ids in seen.calls if lay == layer]
        assert steps and all((ids == expert).any(dim=-1).all() for ids in steps)


def test_force_too_many_experts_is_a_clear_error(tiny):
    lm = tiny("mixtral")  # k = 2
    with pytest.raises(ValueError, match="fit_to_k"):
        steering.steering_specs(lm, [(0, 1), (0, 2), (0, 3)], "on")
    assert steering.fit_to_k([(0, 1), (0, 2), (1, 4), (0, 3)], 2) == [(0, 1), (0, 2), (1, 4)]


def test_model_is_restored_after_steering(tiny):
    lm = tiny("qwen3_moe")
    prompts = ["The quick brown fox", "Der schnelle braune"]
    params = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    before = steering.generate(lm, prompts, max_new_tokens=5)
    ids = lm.tokenizer(prompts[:1], return_tensors="pt").input_ids
    logits = lm.model(ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with steering.steer(lm, {0: [0, 1, 2, 3], 1: [4, 5]}, "off"):
            edited = lm.model(ids).logits
            raise RuntimeError("boom")
    assert not torch.allclose(edited, logits)
    assert not lm.probes.active and not lm.probes.edit_frames
    assert torch.equal(lm.model(ids).logits, logits)
    assert steering.generate(lm, prompts, max_new_tokens=5) == before
    assert all(torch.equal(p, params[n]) for n, p in lm.model.named_parameters())


def test_experiment_conditions_controls_and_quality(tiny):
    lm = tiny("qwen3_moe")
    prompts = ["The quick brown", "The lazy dog", "Der schnelle", "def add(a, b):"]
    top = [(0, 1), (1, 2), (0, 5), (0, 3)]
    exp = steering.run_experiment(lm, prompts, top, lambda s: len(s) > 0, seeds=(0, 1), max_new_tokens=3,
                                  quality={"en": ["The quick brown fox jumps over the lazy dog."]},
                                  progress=False)
    table = exp.table
    assert table.condition.tolist() == ["baseline", "top_off", "random_off", "random_off", "top_on"]
    assert table.seed.tolist() == [-1, -1, 0, 1, -1]
    randoms = [set(x.split()) for x in table[table.condition == "random_off"].experts]
    assert all(len(r) == 4 and not r & {"L0/E1", "L1/E2", "L0/E5", "L0/E3"} for r in randoms)
    assert randoms[0] != randoms[1]
    assert table.experts.iloc[-1] == "L0/E1 L1/E2 L0/E5"  # top_on keeps k=2 per layer, best-ranked first
    assert ((table.ci_low <= table.rate) & (table.rate <= table.ci_high)).all()
    assert table.ppl_en.iloc[1] != table.ppl_en.iloc[0]  # the edit wraps the loss computation
    assert len(exp.continuations) == 5 * len(prompts)
    paired = exp.paired()
    assert paired.seed.tolist() == [0, 1] and (paired.p <= 1).all()
    assert (paired.rate_first == table.rate.iloc[1]).all()
    with pytest.raises(ValueError, match="were not run"):
        exp.paired("top_off", "nothing")
    summary = exp.summary()
    assert summary.set_index("condition").loc["random_off", "n"] == 2 * len(prompts)
    assert exp.plot().data[0].y.shape == (5,)


def test_behaviours():
    assert steering.detect_language("The dog and the cat are in the house with all of them.") == "english"
    assert steering.detect_language("Le chat est dans la maison avec les enfants et il ne dort pas.") == "french"
    assert steering.detect_language("El perro está en la casa con los niños, pero no hay nadie más.") == "spanish"
    assert steering.detect_language("Il gatto è nella casa con gli amici, ma non dorme ancora.") == "italian"
    assert steering.detect_language("Die Katze ist nicht in dem Haus, aber auch nicht bei uns.") == "german"
    assert steering.detect_language("12345 +-") is None
    assert steering.resolve_behaviour("code")("for i in range(10):\n    print(i[0])")
    assert steering.resolve_behaviour("prose")("A plain sentence about the weather today.")
    with pytest.raises(ValueError, match="english"):
        steering.resolve_behaviour("klingon")
    clf = steering.NgramClassifier().fit(["der die das ist nicht", "und auch wir sind hier"] * 2 +
                                         ["the cat is not here", "and we are all there"] * 2,
                                         ["de"] * 4 + ["en"] * 4)
    assert clf.predict(["das ist nicht wir", "the cat and we"]) == ["de", "en"]
    assert np.allclose(clf.predict_proba(["x"]).sum(axis=1), 1)


@pytest.mark.slow
@pytest.mark.skipif(not checkpoint_available(), reason="the trained demo checkpoint is not in this installation")
def test_demo_german_experts_are_found_and_steer_generation():
    lm = wb.load("demo")
    rows = steering.demo_rows(["german", "english"], fallback=True)
    sets = steering.prompt_sets(rows, lm.tokenizer, ["german", "english"], per_set=16, prompt_tokens=16,
                                min_tokens=None if len(rows) > 20 else 2)
    contrast = steering.find_experts(lm, sets, a="german", b="english", permutations=500)
    assert (contrast.table.head(3).q < 0.05).all()  # language-linked experts exist in a trained model
    table = steering.compare(lm, sets["german"][:6], contrast.top(10), "off", mode="empty", max_new_tokens=8)
    assert (table.baseline != table.steered).any()


def test_pipeline_never_passes_experts_with_t_at_most_zero_as_top(tiny):
    """Regression (issue 17): the pipeline once steered the first ``top`` rows of the table, which
    include experts with t <= 0 whenever fewer than ``top`` have a positive contrast."""
    from workbench.steering.pipeline import steer_sets

    lm = tiny("qwen3_moe")
    a = ["Der Hund ist hier und da", "Die Katze ist nicht da", "Das Haus ist groß und alt"]
    b = ["The dog is here and there", "The cat is not there", "The house is big and old"]
    top = 8
    with pytest.warns(UserWarning, match="only"):
        contrast, exp = steer_sets(lm, a, b, top=top, seeds=(0,), max_new_tokens=2, prompt_tokens=3,
                                   permutations=20, progress=False)
    t = {(int(r.layer), int(r.expert)): r.t for r in contrast.table.itertuples()}
    first_rows = [(int(r.layer), int(r.expert)) for r in contrast.table.head(top).itertuples()]
    assert any(t[p] <= 0 for p in first_rows), "the test needs t <= 0 experts among the first rows"
    steered = [tuple(map(int, p)) for p in exp.top]
    assert steered and all(t[p] > 0 for p in steered)
    off = exp.table.set_index("condition").loc["top_off", "experts"].split()
    assert all(t[(int(x[1:x.index("/")]), int(x[x.index("E") + 1:]))] > 0 for x in off)
