"""The controlled experiment's effect sizes: their intervals have power and hold their level, and
the experiment reports them for MoTE's and SteerMoE's designs."""

from __future__ import annotations

import numpy as np
import pytest

from workbench import steering
from workbench.steering.stats import paired_effect


def simulate(rng, effect, docs=37, per_doc=(2, 3), runs=6, base=0.8):
    """Hits of 'steered' and 'random' runs on prompts cut from ``docs`` documents; a document's
    prompts share a propensity (documents differ), random runs differ a little from each other."""
    sizes = rng.integers(per_doc[0], per_doc[1] + 1, size=docs)
    groups = np.repeat(np.arange(docs), sizes)
    q = np.clip(rng.normal(base, 0.15, size=docs), 0.02, 0.98)[groups]
    run_shift = rng.normal(0, 0.03, size=runs)
    random_hits = rng.random((len(groups), runs)) < np.clip(q[:, None] + run_shift[None], 0, 1)
    steered = rng.random(len(groups)) < np.clip(q + effect, 0, 1)
    return steered.astype(float), random_hits.astype(float), groups


@pytest.mark.parametrize("effect, at_least, at_most", [(-0.2, 0.8, 1.0), (0.0, 0.0, 0.1)])
def test_interval_has_power_and_holds_its_level(effect, at_least, at_most):
    """At the benchmark's size (about 80 prompts in 37 documents, 6 random runs) a 20-point effect
    is found (interval excludes 0) at least 80% of the time; no effect at most 10% of the time."""
    rng = np.random.default_rng(1)
    found, covered = 0, 0
    reps = 200
    for i in range(reps):
        x, y, g = simulate(rng, effect)
        r = paired_effect(x, y, groups=g, resamples=600, seed=i)
        found += r["ci_high"] < 0 or r["ci_low"] > 0
        covered += r["ci_low"] <= effect <= r["ci_high"]
    assert at_least <= found / reps <= at_most
    assert covered / reps >= 0.85  # the interval covers the true effect about 95% of the time


def test_effect_is_the_mean_paired_difference_and_groups_widen_the_interval():
    rng = np.random.default_rng(0)
    x, y, g = simulate(rng, -0.15)
    r = paired_effect(x, y, groups=g)
    assert r["effect"] == pytest.approx(float(np.mean(x - y.mean(axis=1))))
    assert r["groups"] == 37 and r["runs"] == 6 and r["n"] == len(x)
    one_run = paired_effect(x, y[:, :1], groups=g)
    assert one_run["runs"] == 1
    with pytest.raises(ValueError, match="same items"):
        paired_effect(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_effect([1.0], [0.0])


def test_experiment_reports_effects_for_both_designs(tiny):
    lm = tiny("qwen3_moe")
    prompts = steering.prompts.PromptList(["The quick brown", "The lazy dog", "Der schnelle", "def add(a, b):"],
                                          groups=[0, 0, 1, 2])
    behaviour = steering.set_behaviour(["Der Hund ist hier", "Die Katze"], ["The dog is here", "The cat"])
    exp = steering.run_experiment(lm, prompts, [(0, 1), (1, 2), (0, 5)], behaviour, seeds=(0, 1),
                                  max_new_tokens=3, progress=False,
                                  conditions=steering.ALL_CONDITIONS, activate=[(1, 4), (0, 6)])
    assert exp.table.condition.tolist() == ["baseline", "top_off", "random_off", "random_off", "top_on",
                                            "switch", "random_switch", "random_switch"]
    assert exp.continuations.group.tolist()[:4] == [0, 0, 1, 2]
    assert exp.continuations.score.between(0, 1).all()
    effects = exp.effects()
    assert set(zip(effects["first"], effects["second"])) == {
        ("top_off", "random_off"), ("top_off", "baseline"), ("switch", "random_switch"), ("switch", "baseline")}
    assert (effects.groups == 3).all() and (effects.ci_low <= effects.effect).all()
    assert (effects.effect <= effects.ci_high).all()
    r = exp.effect("switch", "random_switch")
    conts = exp.continuations
    hits = lambda c: conts[conts.condition == c].groupby("prompt_id").hit.mean().to_numpy()  # noqa: E731
    assert r["effect"] == pytest.approx(float(np.mean(hits("switch") - hits("random_switch"))))
    assert any("effect switch - random_switch" in line for line in exp.report_lines())
    with pytest.raises(ValueError, match="single steered"):
        exp.effect("random_off", "baseline")
    with pytest.raises(ValueError, match="need experts to activate"):
        steering.run_experiment(lm, prompts, [(0, 1)], behaviour, conditions=("switch",), progress=False)


def test_random_switch_matches_counts_and_respects_k(tiny):
    lm = tiny("mixtral")  # 2 layers x 8 experts, k = 2
    exclude = [(0, 1), (1, 1)]
    for seed in range(5):
        on, off = steering.random_switch(lm, 3, 5, seed=seed, exclude=exclude)
        assert len(on) == 3 and len(off) == 5 and not set(on) & set(off)
        assert not (set(on) | set(off)) & set(exclude)
        assert max(sum(1 for layer, _ in on if layer == x) for x in lm.moe_layers) <= lm.top_k
    assert steering.random_switch(lm, 3, 5, seed=0) != steering.random_switch(lm, 3, 5, seed=1)
    with pytest.raises(ValueError, match="cannot place"):
        steering.random_switch(lm, 5, 0)
