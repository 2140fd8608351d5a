"""Self-contrast decoding: the formula, batched = two-pass, the weak row's routing, restoration."""

import math

import pytest
import torch

import workbench as wb
from workbench.contrast import (
    RandomExpert,
    contrast_scores,
    generate,
    generate_greedy,
    generate_two_pass,
    plausible_mask,
    weak_spec,
)
from workbench.contrast.scoring import WEAK_FLOOR, choose
from workbench.demo import checkpoint_available
from workbench.kernels import route
from workbench.kernels import scores as selection_scores
from workbench.testing import FAMILIES

PROMPT = "12 + 34 = 46. The quick"


def _weak_for(lm):
    return "rank2" if lm.num_experts > 2 and lm.top_k > 1 else "rank1"


# -- the formula on hand-made logits -------------------------------------------------------------
def test_score_is_the_formula_on_log_probabilities():
    strong = torch.tensor([2.0, 1.5, -0.5, -1.0])
    weak = torch.tensor([3.0, 0.0, 0.5, 0.0])
    beta, alpha = 0.7, 0.1
    got = contrast_scores(strong, weak, alpha=alpha, beta=beta)
    ls, lw = torch.log_softmax(strong, -1), torch.log_softmax(weak, -1)
    keep = ls >= math.log(alpha) + ls.max()
    assert keep.tolist() == [True, True, False, False]
    expected = torch.where(keep, (1 + beta) * ls - beta * lw, torch.tensor(float("-inf")))
    torch.testing.assert_close(got, expected)
    # a constant shift of either logit vector changes nothing (log-softmax of each)
    torch.testing.assert_close(contrast_scores(strong + 7.0, weak - 3.0, alpha=alpha, beta=beta), expected)


def test_beta_zero_is_greedy_and_beta_flips_the_choice():
    strong = torch.log(torch.tensor([0.5, 0.4, 0.1]))
    weak = torch.log(torch.tensor([0.8, 0.1, 0.1]))
    assert int(contrast_scores(strong, weak, beta=0.0).argmax()) == 0
    # token 0 wins while (1+b) log(.5/.4) > b log(.8/.1), i.e. b < 0.12
    assert int(contrast_scores(strong, weak, beta=0.1).argmax()) == 0
    assert int(contrast_scores(strong, weak, beta=0.5).argmax()) == 1


def test_plausibility_cut_off():
    logp = torch.log(torch.tensor([0.5, 0.3, 0.04, 0.16]))
    assert plausible_mask(logp, 0.1).tolist() == [True, True, False, True]
    assert plausible_mask(logp, 1.0).tolist() == [True, False, False, False]
    assert plausible_mask(logp, 0.0).all()
    # a token the weak model hates but the strong model finds implausible is never chosen
    weak = torch.log(torch.tensor([0.49, 0.49, 1e-6, 0.02]))
    assert int(contrast_scores(logp, weak, alpha=0.2, beta=10.0).argmax()) != 2
    assert int(contrast_scores(logp, weak, alpha=0.01, beta=10.0).argmax()) == 2


def test_infinite_logits():
    inf = float("-inf")
    strong = torch.tensor([1.0, 0.9, inf, 0.0])
    weak = torch.tensor([1.0, inf, inf, 0.0])
    s = contrast_scores(strong, weak, alpha=0.1, beta=0.5)
    assert not torch.isnan(s).any()
    assert torch.isneginf(s[2])  # the strong routing rules it out: never plausible
    assert torch.isfinite(s[1]) and int(s.argmax()) == 1  # weak rules it out: largest finite bonus
    expected = 1.5 * torch.log_softmax(strong, -1)[1] - 0.5 * WEAK_FLOOR
    torch.testing.assert_close(s[1], expected)
    s0 = contrast_scores(strong, weak, alpha=0.1, beta=0.0)  # no nan from 0 * inf
    assert not torch.isnan(s0).any() and int(s0.argmax()) == 0
    all_inf = contrast_scores(strong, torch.full((4,), inf), beta=0.5)
    assert int(all_inf.argmax()) == 0 and not torch.isnan(all_inf).any()


@pytest.mark.parametrize("alpha, beta", [(-0.1, 0.5), (1.5, 0.5), (0.1, -1.0), (0.1, float("inf"))])
def test_bad_parameters_say_what_to_pass(alpha, beta):
    with pytest.raises(ValueError, match="alpha|beta"):
        contrast_scores(torch.zeros(3), torch.zeros(3), alpha=alpha, beta=beta)


def test_sampling_stays_in_the_plausible_set():
    strong = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    weak = torch.log(torch.tensor([[0.9, 0.02, 0.04, 0.04]]))
    score = contrast_scores(strong, weak, alpha=0.2, beta=1.0)
    g = torch.Generator().manual_seed(0)
    draws = {int(choose(score, sample=True, generator=g)) for _ in range(200)}
    assert draws == {0, 1}


# -- decoding on tiny models of every family ----------------------------------------------------
def _same(lm, weak):
    a = generate(lm, PROMPT, max_new_tokens=6, beta=1.0, weak=weak)
    b = generate_two_pass(lm, PROMPT, max_new_tokens=6, beta=1.0, weak=weak)
    assert a.token_ids == b.token_ids, weak
    assert a.changed == b.changed
    torch.testing.assert_close(a.steps["strong_p"], b.steps["strong_p"], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(a.steps["weak_p"], b.steps["weak_p"], rtol=1e-3, atol=1e-5)
    assert not lm.probes.active and not lm.probes.edit_frames


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_two_pass(family, tiny):
    _same(tiny(family), _weak_for(tiny(family)))


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "jetmoe"])
def test_batched_equals_two_pass_other_weak_routings(family, tiny):
    for weak in ("top1", "random:3", wb.TopP(0.3)):
        _same(tiny(family), weak)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "phimoe", "llama4_text"])
def test_beta_zero_reproduces_greedy(family, tiny):
    lm = tiny(family)
    greedy = generate_greedy(lm, PROMPT, max_new_tokens=8)
    assert generate(lm, PROMPT, max_new_tokens=8, beta=0.0, weak=_weak_for(lm)).token_ids == greedy.token_ids
    assert not any(greedy.changed)


def test_greedy_matches_transformers_generate(tiny):
    lm = tiny("qwen3_moe")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[lm.tokenizer.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        ref = lm.model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    assert generate_greedy(lm, PROMPT, max_new_tokens=8).token_ids[:len(ref)] == ref


def test_contrast_changes_some_tokens(tiny):
    changed = 0
    for family in ("gpt_oss", "phimoe", "mixtral", "glm4_moe"):
        lm = tiny(family)
        g = generate(lm, PROMPT, max_new_tokens=8, beta=3.0, alpha=0.0, weak=_weak_for(lm))
        changed += sum(g.changed)
        df = g.explain(top=2)
        assert df.changed.tolist() == g.changed
        assert (df.p_strong <= df.strong_1_p + 1e-6).all()
    assert changed > 0, "with beta=3 the contrast should change at least one token somewhere"


def _routing_log(lm):
    calls = []

    def listener(layer, logits, decision):
        calls.append((layer, logits.detach().clone(), decision.idx.clone(), decision.w.clone(),
                      decision.valid.clone()))
    return calls, listener


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe", "llama4_text"])
@pytest.mark.parametrize("weak", ["rank", "random", "top1"])
def test_weak_row_uses_the_chosen_expert(family, weak, tiny):
    lm = tiny(family)
    rank = 2 if lm.top_k > 1 else 1
    spec = {"rank": wb.KeepRank(rank), "random": RandomExpert(seed=5), "top1": wb.TopK(1)}[weak]
    calls, listener = _routing_log(lm)
    lm.probes.add_listener(listener)
    try:
        g = generate(lm, PROMPT, max_new_tokens=4, weak=spec)
    finally:
        lm.probes.remove_listener(listener)
    prompt_len = len(calls[0][1]) // 2
    assert len(calls) == len(lm.moe_layers) * g.num_tokens
    for i, (layer, logits, idx, w, valid) in enumerate(calls):
        per_row = logits.shape[0] // 2
        forward = i // len(lm.moe_layers)  # 0 = the prompt pass, then one pass per token
        positions = torch.arange(prompt_len) if forward == 0 else torch.tensor([prompt_len + forward - 1])
        assert per_row in (prompt_len, 1)
        strong, weak_rows = slice(0, per_row), slice(per_row, None)
        choice, _ = selection_scores(logits, lm.rule, lm.selection_bias(layer))
        order = torch.argsort(choice, dim=-1, descending=True)
        assert (valid[weak_rows].sum(-1) == 1).all(), "the weak row routes to a single expert"
        if weak == "rank":
            assert torch.equal(idx[weak_rows, 0], order[weak_rows, rank])
            assert (w[weak_rows, 0] == 1.0).all()
        elif weak == "random":
            assert torch.equal(idx[weak_rows, 0], spec.experts_for(layer, positions, lm.num_experts))
            assert (w[weak_rows, 0] == 1.0).all()
        else:
            top1 = route(logits[weak_rows], lm.rule, 1, lm.selection_bias(layer))
            assert torch.equal(idx[weak_rows, :1], top1.idx)
        assert (valid[strong].sum(-1) == min(lm.top_k, lm.num_experts)).all(), "the strong row is untouched"


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v2", "jetmoe"])
def test_model_is_restored_also_after_an_error(family, tiny, texts):
    lm = tiny(family)
    ids = lm.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        before = lm.model(**ids).logits
    generate(lm, PROMPT, max_new_tokens=3)
    state = {"n": 0}

    def boom(layer, logits, decision):
        state["n"] += 1
        if state["n"] == 5:
            raise RuntimeError("boom")
    lm.probes.add_listener(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(lm, PROMPT, max_new_tokens=6)
        assert not lm.probes.edit_frames, "the weak-row edit is gone after the error"
    finally:
        lm.probes.remove_listener(boom)
    assert not lm.probes.active
    with torch.no_grad():
        assert torch.equal(lm.model(**ids).logits, before)


def test_stop_strings_and_eos(tiny):
    lm = tiny("qwen2_moe")
    full = generate(lm, PROMPT, max_new_tokens=12, beta=0.5)
    assert full.stop_reason == "length" and full.num_tokens == 12
    printable = [c for c in full.text[1:] if c.isascii() and c.strip()]
    if not printable:
        pytest.skip("tiny model produced no printable ASCII to stop on")
    stop = printable[0]
    cut = generate(lm, PROMPT, max_new_tokens=12, beta=0.5, stop=stop)
    assert cut.stop_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and cut.token_ids == full.token_ids[:cut.num_tokens]
    eos = full.token_ids[3]
    config = lm.model.generation_config
    old = config.eos_token_id
    config.eos_token_id = eos
    try:
        ended = generate(lm, PROMPT, max_new_tokens=12, beta=0.5)
    finally:
        config.eos_token_id = old
    assert ended.stop_reason == "eos" and ended.token_ids[-1] == eos
    assert ended.token_ids == full.token_ids[:full.token_ids.index(eos) + 1]


def test_sampling_is_seeded(tiny):
    lm = tiny("olmoe")
    a = generate(lm, PROMPT, max_new_tokens=5, sample=True, seed=3, alpha=0.0)
    b = generate(lm, PROMPT, max_new_tokens=5, sample=True, seed=3, alpha=0.0)
    c = generate_two_pass(lm, PROMPT, max_new_tokens=5, sample=True, seed=3, alpha=0.0)
    assert a.token_ids == b.token_ids == c.token_ids


def test_weak_choices_and_errors(tiny):
    lm = tiny("mixtral")
    assert weak_spec("rank3", lm) == wb.KeepRank(3)
    assert weak_spec("top1", lm) == wb.TopK(1)
    assert weak_spec("random:7", lm) == RandomExpert(seed=7)
    with pytest.raises(ValueError, match="unknown weak routing"):
        weak_spec("weakest", lm)
    with pytest.raises(ValueError, match="rank 9 out of range"):
        weak_spec("rank9", lm)
    with pytest.raises(ValueError, match="rows"):
        weak_spec(wb.KeepRank(2, rows=[1]), lm)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, PROMPT, max_new_tokens=0)


@pytest.mark.skipif(not checkpoint_available(), reason="the demo checkpoint is not installed")
def test_demo_model_decodes_and_batched_equals_two_pass():
    from workbench.contrast.evaluate import demo_tasks

    lm = wb.load("demo")
    for task in demo_tasks(3):
        for weak in ("rank2", "top1"):
            a = generate(lm, task["prompt"], max_new_tokens=6, stop="\n", beta=1.0, weak=weak)
            b = generate_two_pass(lm, task["prompt"], max_new_tokens=6, stop="\n", beta=1.0, weak=weak)
            assert a.token_ids == b.token_ids and a.num_tokens >= 1
    assert not lm.probes.active
