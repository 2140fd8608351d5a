"""Expert pruning (Lu et al.): the loss and the argmin against brute force, searches, baselines, groups."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.pruning import Groups, Pruner, PruningConstraintError, PruningResult
from workbench.pruning.calibration import batch_ids, cache_batches, demo_split, unit_ids
from workbench.pruning.loss import LossScorer, drop_losses
from workbench.pruning.reference import reference_argmin, reference_losses
from workbench.pruning.search import beam_search, enumerate_search, frequency_drop, random_drop
from workbench.replay import capture, recombine
from workbench.testing import tiny_config, tiny_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs springt.",
         "def add(a, b):\n    return a + b\n", "12 + 34 = 46. 7 + 8 = 15.", "Le renard brun saute."]
FAMILIES = ["olmoe", "qwen3_moe", "mixtral", "gpt_oss", "qwen2_moe", "deepseek_v3"]


def grouped(family: str = "deepseek_v3", **over):
    """A tiny model of a group-routed family with a group layout that can be pruned."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family)
    for key, value in over.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.mul_(30.0)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.05)
    return wb.wrap(model, tiny_tokenizer())


_MODELS: dict = {}


def model(tiny, family):
    if family == "deepseek_v3":  # the default tiny layout (4 groups, top-2 sum, 2 groups) allows no pruning
        if family not in _MODELS:
            _MODELS[family] = grouped(n_group=2, topk_group=1)
        return _MODELS[family]
    return tiny(family)


def layer_cache(lm, max_length=6):
    layer = lm.moe_layers[-1]
    return capture(lm, TEXTS, layers=[layer], candidates="all", max_length=max_length, batch_size=2,
                   progress=False)[layer]


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_argmin_equal_brute_force(tiny, family):
    lm = model(tiny, family)
    cache = layer_cache(lm)
    groups = Groups.of(lm.rule, lm.num_experts, lm.top_k)
    keep = 6
    sets = groups.drop_sets(keep)
    fast = drop_losses(lm, cache, sets, batch_size=3)
    slow = torch.tensor(reference_losses(lm, cache, sets, batch_size=3), dtype=torch.float64)
    norm = float(LossScorer(lm, cache, 3).norm)
    assert len(cache_batches(cache, 3)) >= 3
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6 * norm)
    best, loss, seen = enumerate_search(lambda s: drop_losses(lm, cache, s, batch_size=3), groups, keep, chunk=7)
    ref_best, ref_loss = reference_argmin(lm, cache, keep, batch_size=3, drop_sets=sets)
    assert seen == len(sets) == groups.count(keep)
    assert best == ref_best and math.isclose(loss, ref_loss, rel_tol=1e-5, abs_tol=1e-6 * norm)


def test_loss_is_the_sum_of_per_batch_frobenius_norms(tiny):
    lm = tiny("mixtral")
    cache = layer_cache(lm)
    whole = drop_losses(lm, cache, [(0, 1)], batch_size=None)
    per_batch = drop_losses(lm, cache, [(0, 1)], batch_size=1)
    out = recombine(lm, cache, [wb.Mask({cache.layer: [0, 1]})], outputs=True).outputs[0].double()
    diff = out - cache.y.double()
    manual = sum(float(diff[rows].norm()) for rows in cache_batches(cache, 1))
    assert len(cache_batches(cache, 1)) > 4
    assert math.isclose(float(per_batch[0]), manual, rel_tol=1e-6)
    assert float(per_batch[0]) >= float(whole[0]) - 1e-9  # triangle inequality: sum of norms >= norm of sum
    assert float(drop_losses(lm, cache, [()], batch_size=1)[0]) < 1e-4 * float(whole[0])


def test_calibration_batches_follow_the_capture_chunks():
    doc = torch.tensor([0] * 7 + [1] * 2 + [2] * 4)
    pos = torch.tensor(list(range(7)) + [0, 1] + list(range(4)))
    assert unit_ids(doc, pos, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5]
    assert batch_ids(doc, pos, 3, 4).tolist() == [0] * 9 + [1] * 4
    with pytest.raises(ValueError, match="batch_size"):
        batch_ids(doc, pos, 3, 0)


def test_groups_enumerate_balanced_sets_and_refuse_invalid_counts():
    from workbench.kernels import RoutingRule

    g = Groups.of(RoutingRule("sigmoid", n_group=2, topk_group=1, group_score="top2sum"), 8, top_k=2)
    sets = g.drop_sets(4)
    brute = [s for s in itertools.combinations(range(8), 4) if sum(e < 4 for e in s) == 2]
    assert sets == brute and g.count(4) == len(brute) == 36
    assert g.valid_keeps() == [4, 6]
    with pytest.raises(PruningConstraintError, match="multiple of 2.*valid choices: 4, 6"):
        g.check(5)
    strict = Groups.of(RoutingRule("sigmoid", n_group=4, topk_group=2, group_score="top2sum"), 8, top_k=2)
    with pytest.raises(PruningConstraintError, match="cannot be pruned"):
        strict.check(4)
    free = Groups.of(RoutingRule("sigmoid", n_group=4, topk_group=4, group_score="top2sum"), 8, top_k=2)
    assert free.free_groups and free.count(3) == math.comb(8, 5)


def test_default_tiny_deepseek_v3_is_refused_with_a_clear_message(tiny):
    lm = tiny("deepseek_v3")
    with pytest.raises(PruningConstraintError, match="every group must keep at least 2"):
        Pruner(lm, TEXTS, progress=False).prune(keep=4)


def test_beam_search_equals_enumeration_when_wide_and_greedy_on_a_separable_loss():
    rng = np.random.default_rng(0)
    table = {s: float(v) for s, v in zip(itertools.combinations(range(7), 3), rng.random(35))}

    def score(sets):
        return torch.tensor([table[s] if len(s) == 3 else 0.0 for s in sets], dtype=torch.float64)

    g = Groups(num_experts=7, top_k=2)
    exact = enumerate_search(score, g, keep=4)
    assert beam_search(score, g, keep=4, width=10 ** 4)[:2] == exact[:2]
    cost = torch.tensor([0.5, 3.0, 0.1, 2.0, 0.7, 1.0, 4.0], dtype=torch.float64)

    def separable(sets):
        return torch.tensor([float(cost[list(s)].sum()) for s in sets], dtype=torch.float64)

    best, loss, seen = beam_search(separable, g, keep=4, width=1)
    assert best == (0, 2, 4) and math.isclose(loss, 1.3) and seen == 7 + 6 + 5


def test_frequency_and_random_baselines(tiny):
    lm = tiny("qwen3_moe")
    pruner = Pruner(lm, TEXTS, progress=False)
    counts = pruner.counts(1)
    want = np.bincount(pruner.caches[1].topk_idx.reshape(-1).numpy(), minlength=8)
    assert counts.tolist() == want.tolist()
    res = pruner.prune(keep=5, method="frequency")
    order = sorted(range(8), key=lambda e: (want[e], e))
    assert res.dropped[1] == sorted(order[:3])
    g = Groups(8, 2)
    a, b = random_drop(g, 5, random.Random(3)), random_drop(g, 5, random.Random(3))
    assert a == b and len(a) == 3
    r1, r2 = pruner.prune(keep=5, method="random", seed=1), pruner.prune(keep=5, method="random", seed=1)
    assert r1.kept == r2.kept
    assert frequency_drop([5, 1, 1, 9], Groups(4, 1), 2) == (1, 2)
    enum = pruner.prune(keep=5)
    for layer in lm.moe_layers:  # enumeration is optimal for its own loss
        c = {x.layer: x for x in enum.layers}[layer]
        assert c.loss <= {x.layer: x for x in res.layers}[layer].loss + 1e-9
        assert c.loss <= {x.layer: x for x in r1.layers}[layer].loss + 1e-9


def test_switch_over_to_greedy_search_is_reported(tiny):
    lm = tiny("mixtral")
    pruner = Pruner(lm, TEXTS, progress=False, max_subsets=10)
    res = pruner.prune(keep=5)
    table = res.to_dataframe()
    assert set(table.search) == {"greedy"}
    assert table.note.str.contains("56 drop sets > max_subsets=10").all()
    assert (table.evaluated == 8 + 7 + 6).all() and (table.candidates == 56).all()
    assert Pruner(lm, TEXTS, progress=False, max_subsets=10, beam_width=3).prune(keep=5).layers[0].search == "beam"


def test_progressive_uses_inputs_of_the_partly_pruned_model(tiny):
    lm = tiny("olmoe")
    pruner = Pruner(lm, TEXTS, progress=False, max_length=8)
    plain = pruner.prune(keep=6)
    prog = pruner.prune(keep=6, progressive=True)
    assert prog.layers[0].dropped == plain.layers[0].dropped and prog.progressive
    dropped0 = {0: list(prog.layers[0].dropped)}
    cache = pruner._progressive_cache(1, dropped0)
    seen = []
    hook = lm.block(1).register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad(), wb.edit(lm, wb.Mask(dropped0)):
            for text in TEXTS:
                ids = lm.tokenizer(text)["input_ids"]
                for s in range(0, len(ids), 8):
                    lm.model(input_ids=torch.tensor([ids[s:s + 8]]))
    finally:
        hook.remove()
    assert torch.allclose(cache.x, torch.cat(seen), atol=1e-5)
    assert torch.equal(cache.y, pruner.caches[1].y)  # targets stay the unpruned model's
    assert not torch.allclose(cache.x, pruner.caches[1].x)
    with pytest.raises(ValueError, match="progressive"):
        pruner.prune(keep=6, method="frequency", progressive=True)


def test_result_saves_and_loads(tiny, tmp_path):
    lm = tiny("mixtral")
    res = Pruner(lm, TEXTS, progress=False).prune(share=0.25)
    assert res.keep == 6
    res.save(tmp_path)
    back = PruningResult.load(tmp_path)
    assert back.kept == res.kept and back.to_dataframe().equals(res.to_dataframe())
    csv = (tmp_path / "pruning.csv").read_text().splitlines()
    assert csv[0].startswith("layer,method,progressive,keep,search,kept,dropped,loss")
    assert "enumerate" in repr(res)


def test_demo_split_is_disjoint_and_reproducible():
    cal, ev = demo_split(3, 2, seed=1)
    again, _ = demo_split(3, 2, seed=1)
    assert [r["text"] for r in cal] == [r["text"] for r in again]
    assert not {r["text"] for r in cal} & {r["text"] for r in ev}
    labels = {r["label"] for r in cal}
    assert all(sum(r["label"] == lab for r in cal) == 3 for lab in labels)


def test_wrong_inputs_give_clear_errors(tiny):
    lm = tiny("qwen3_moe")
    with pytest.raises(ValueError, match="exactly one of keep"):
        Pruner(lm, TEXTS, progress=False).prune()
    with pytest.raises(ValueError, match="unknown method"):
        Pruner(lm, TEXTS, progress=False).prune(keep=4, method="magnitude")
    cache = capture(lm, TEXTS[:1], layers=[0], candidates=4, progress=False)[0]
    with pytest.raises(ValueError, match="candidates='all'"):
        drop_losses(lm, cache, [(0,)])


def test_caches_on_disk_give_the_same_choice(tiny, tmp_path):
    lm = tiny("gpt_oss")
    in_memory = Pruner(lm, TEXTS, progress=False).prune(keep=5)
    on_disk = Pruner(lm, TEXTS, progress=False, cache_dir=tmp_path / "caches").prune(keep=5)
    assert on_disk.kept == in_memory.kept
    assert (tmp_path / "caches" / "caches.json").is_file()
    assert [c.loss for c in on_disk.layers] == pytest.approx([c.loss for c in in_memory.layers])
