"""``wb.record(..., max_new_tokens=N)``: prompts and their greedy continuations, under the edits in force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.probes.continuation import greedy_tails


def _slow_greedy(lm, ids, n):
    """One prompt at a time, argmax of the last position, no padding: the obvious loop."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = lm.model(input_ids=torch.tensor([seq])).logits
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


def test_batched_greedy_equals_one_by_one(tiny, texts):
    lm = tiny("qwen3_moe")
    prompts = [lm.tokenizer(t)["input_ids"] for t in texts]
    assert greedy_tails(lm, prompts, 5, lm.tokenizer.pad_token_id) == [_slow_greedy(lm, p, 5) for p in prompts]


def test_generated_tokens_follow_each_prompt(tiny, texts):
    lm = tiny("olmoe")
    trace = wb.record(lm, texts, labels=list("abcd"), max_new_tokens=4, progress=False)
    prompt_lens = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    assert trace.meta["prompt_tokens"] == prompt_lens and trace.meta["max_new_tokens"] == 4
    for doc, n in enumerate(prompt_lens):
        ids = trace.token_ids[trace.doc == doc]
        assert list(trace.pos[trace.doc == doc]) == list(range(n + 4))
        assert list(ids[n:]) == _slow_greedy(lm, list(ids[:n]), 4)


def test_generation_under_an_edit_uses_the_edited_model(tiny, texts):
    lm = tiny("mixtral")
    plain = wb.record(lm, texts, max_new_tokens=6, progress=False)
    spec = wb.Mask({layer: [0, 1, 2, 3] for layer in lm.moe_layers})
    with wb.edit(lm, spec):
        edited = wb.record(lm, texts, max_new_tokens=6, progress=False)
        prompts = [lm.tokenizer(t)["input_ids"] for t in texts]
        expected = [_slow_greedy(lm, p, 6) for p in prompts]
    for doc, (p, tail) in enumerate(zip(prompts, expected)):
        assert edited.token_ids[edited.doc == doc].tolist() == p + tail
    assert not np.isin(edited.topk_idx, [0, 1, 2, 3]).any()
    assert not np.array_equal(plain.token_ids, edited.token_ids) or not np.array_equal(plain.topk_idx, edited.topk_idx)


def test_generation_that_does_not_fit_is_refused(tiny):
    lm = tiny("olmoe")
    with pytest.raises(ValueError, match="does not fit in one chunk of max_length=8"):
        wb.record(lm, ["The quick brown fox jumps over the lazy dog."], max_length=8, max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        wb.record(lm, ["hello"], max_new_tokens=-1, progress=False)
