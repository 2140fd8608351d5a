"""The demo checkpoint in vLLM against the transformers backend: traces, edits, generations, the
store and the engine's state after an edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.probes.continuation import greedy_tails

from engine_checks import TEXTS, assert_same_trace

pytestmark = pytest.mark.slow
PROMPTS = ["Once upon a time", "def add(a, b):", "12 + 34 =", "Der Fuchs"]
NEW = 8


@pytest.fixture(scope="module")
def pair():
    lm = wb.load("demo", dtype=torch.float32)
    vm = wb.load("demo", backend="vllm", dtype="float32", max_model_len=512)
    yield vm, lm
    vm.close()


def _edits(lm):
    mid = lm.moe_layers[len(lm.moe_layers) // 2]
    return {
        "mask_next_best": wb.Mask({mid: [0, 1, 2, 3]}),
        "mask_empty": wb.Mask({layer: [0, 1, 2, 3] for layer in lm.moe_layers}, mode="empty"),
        "force": wb.Force({mid: [5]}),
        "topk1": wb.TopK(1),
        "skip": wb.Skip(0.6),
        "keeprank": wb.KeepRank(1, layers=[mid]),
        "offset": wb.Offset(on={mid: [7]}, off={mid: [0, 1]}),
    }


def _greedy(lm, prompts):
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    return greedy_tails(lm, ids, NEW, lm.tokenizer.pad_token_id or 0)


def test_same_model_and_trace(pair):
    vm, lm = pair
    assert (vm.num_experts, vm.top_k, vm.moe_layers, vm.rule) == (lm.num_experts, lm.top_k, lm.moe_layers, lm.rule)
    assert vm.fingerprint == lm.fingerprint
    got = wb.record(vm, TEXTS, labels=list("abcd"), scores=True, progress=False)
    want = wb.record(lm, TEXTS, labels=list("abcd"), scores=True, progress=False)
    assert_same_trace(got, want)
    assert got.doc_labels == want.doc_labels and got.token_text == want.token_text
    assert np.abs(got.scores.astype(np.float32) - want.scores.astype(np.float32)).max() < 2e-2  # float16 scores
    got.check_model(lm)  # interchangeable: a vLLM trace belongs to the transformers model


@pytest.mark.parametrize("name", ["mask_next_best", "mask_empty", "force", "topk1", "skip", "keeprank", "offset"])
def test_edit_trace_and_generation_equal_transformers(pair, name):
    vm, lm = pair
    spec = _edits(lm)[name]
    plain = wb.record(lm, TEXTS, progress=False)
    with wb.edit(lm, spec):
        want = wb.record(lm, TEXTS, progress=False)
        want_gen = _greedy(lm, PROMPTS)
    with wb.edit(vm, spec):
        got = wb.record(vm, TEXTS, progress=False)
        got_gen = [g.token_ids for g in vm.generate(PROMPTS, NEW, ignore_eos=True)]
    assert not np.array_equal(want.topk_idx, plain.topk_idx) or not np.allclose(want.topk_w, plain.topk_w)
    assert_same_trace(got, want)
    assert got_gen == want_gen


def test_per_request_edit(pair):
    vm, lm = pair
    spec = wb.Mask({layer: [0, 1, 2, 3, 4, 5] for layer in lm.moe_layers}, rows=[1])
    with wb.edit(lm, spec):
        want = wb.record(lm, TEXTS[:2], batch_size=2, progress=False)
    with wb.edit(vm, spec):
        got = wb.record(vm, TEXTS[:2], batch_size=2, progress=False)
    plain = wb.record(vm, TEXTS[:2], batch_size=2, progress=False)
    assert_same_trace(got, want)
    first = plain.doc == 0
    assert np.array_equal(got.topk_idx[:, first], plain.topk_idx[:, first])  # row 0 untouched
    assert not np.isin(got.topk_idx[:, ~first], np.arange(6)).any()


def test_engine_is_restored_after_edits(pair):
    vm, _ = pair
    before = [g.token_ids for g in vm.generate(PROMPTS, NEW, ignore_eos=True)]
    trace_before = wb.record(vm, TEXTS, progress=False)
    with wb.edit(vm, wb.TopK(1)):
        edited = [g.token_ids for g in vm.generate(PROMPTS, NEW, ignore_eos=True)]
    with pytest.raises(RuntimeError, match="inside"):
        with wb.edit(vm, wb.Mask({vm.moe_layers[0]: list(range(8))})):
            vm.generate(PROMPTS[:1], 2)
            raise RuntimeError("raised inside the edit")
    assert edited != before
    assert vm.llm.collective_rpc("wb_installed") == [0]
    assert [g.token_ids for g in vm.generate(PROMPTS, NEW, ignore_eos=True)] == before
    assert_same_trace(wb.record(vm, TEXTS, progress=False), trace_before, rtol=0.0)


def test_generated_tokens_recorded(pair):
    vm, lm = pair
    spec = wb.Mask({lm.moe_layers[-1]: [0, 1]})
    with wb.edit(lm, spec):
        want = wb.record(lm, PROMPTS, max_new_tokens=6, progress=False)
    with wb.edit(vm, spec):
        got = wb.record(vm, PROMPTS, max_new_tokens=6, progress=False)
    assert got.meta["prompt_tokens"] == want.meta["prompt_tokens"]
    assert [int((want.doc == d).sum()) for d in range(4)] == [n + 6 for n in want.meta["prompt_tokens"]]
    assert_same_trace(got, want)


def test_store_from_vllm_equals_transformers_trace(pair, tmp_path):
    vm, lm = pair
    stored = wb.record(vm, TEXTS, labels=list("abcd"), out=tmp_path / "store", batch_size=3, progress=False)
    want = wb.record(lm, TEXTS, labels=list("abcd"), out=tmp_path / "tf", batch_size=3, progress=False)
    assert stored.fingerprint == want.fingerprint == lm.fingerprint
    assert_same_trace(stored.materialize(), want.materialize(), rtol=2 ** -10)  # stores keep float16 weights
    assert stored.to_dataframe().drop(columns="weight").equals(want.to_dataframe().drop(columns="weight"))


def test_clear_refusals(pair):
    vm, _ = pair
    with pytest.raises(ValueError, match="k=3 experts"):
        with wb.edit(vm, wb.TopK(3)):
            vm.generate(PROMPTS[:1], 2)
    with pytest.raises(ValueError, match="prefix"):
        wb.load("demo", backend="vllm", enable_prefix_caching=True)
    with pytest.raises(TypeError, match="list"):
        vm.generate("one prompt", 2)


def test_long_batch_split_over_engine_steps(pair):
    """More prompt tokens than one engine step takes: vLLM splits prompts over steps (chunked
    prefill) and reuses its input buffers, and every token must still land in its own document."""
    from workbench.demo.heldout import load_heldout

    vm, lm = pair
    texts = [d["text"] for d in load_heldout()[:24]]
    budget = vm.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    got = wb.record(vm, texts, batch_size=24, max_length=511, progress=False)
    assert got.topk_idx.shape[1] > budget  # the batch needed several steps
    want = wb.record(lm, texts, batch_size=8, max_length=511, progress=False)
    assert_same_trace(got, want)
