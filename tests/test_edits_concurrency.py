"""Edits belong to their caller: threads and asyncio tasks each see their own, and entering or
leaving an edit is exception-safe at every step (KeyboardInterrupt included)."""

import asyncio
import threading

import pytest
import torch

import workbench as wb


def _hooks(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def _ids(lm):
    return lm.tokenizer(["the quick brown fox jumps over the lazy dog"], return_tensors="pt").input_ids


def test_threads_each_see_their_own_edit(tiny):
    lm = tiny("mixtral")
    ids = _ids(lm)
    specs = [wb.Mask({0: [e], 1: [e]}) for e in range(4)]
    with torch.no_grad():
        expected = []
        for spec in specs:
            with wb.edit(lm, spec):
                expected.append(lm.model(input_ids=ids).logits)
        plain = lm.model(input_ids=ids).logits
    assert not all(torch.equal(expected[0], e) for e in expected[1:])  # the edits differ
    wrong, errors = [], []
    barrier = threading.Barrier(5)

    def worker(i):
        try:
            with wb.edit(lm, specs[i]), torch.no_grad():
                barrier.wait()
                for _ in range(10):
                    if not torch.equal(lm.model(input_ids=ids).logits, expected[i]):
                        wrong.append(i)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def recorder():
        barrier.wait()
        for _ in range(5):  # no edit in this thread: the model's own routing, whatever others do
            trace = wb.record(lm, ["the quick brown fox jumps over the lazy dog"], progress=False)
            if trace.meta["edits"]:
                wrong.append("recorder saw an edit")
            with torch.no_grad():
                if not torch.equal(lm.model(input_ids=ids).logits, plain):
                    wrong.append("recorder")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)] + [threading.Thread(target=recorder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong
    assert not lm.probes.active and _hooks(lm) == 0


def test_asyncio_tasks_each_see_their_own_edit(tiny):
    lm = tiny("olmoe")
    text = ["one two three four"]

    async def task(spec):
        with wb.edit(lm, spec):
            await asyncio.sleep(0)  # the other task enters its edit meanwhile
            trace = wb.record(lm, text, progress=False)
            await asyncio.sleep(0)
            return trace

    async def both():
        return await asyncio.gather(task(wb.Mask({0: [0, 1, 2]})), task(wb.Force({0: [5]})))

    masked, forced = asyncio.run(both())
    assert not (masked.topk_idx[0] <= 2).any()
    assert (forced.topk_idx[0] == 5).any(axis=1).all()
    assert "Mask" in masked.meta["edits"][0] and "Force" in forced.meta["edits"][0]
    assert not lm.probes.active


class Interrupt(KeyboardInterrupt):
    pass


def test_entering_an_edit_is_undone_when_interrupted_at_any_step(tiny, monkeypatch):
    lm = tiny("qwen3_moe")
    spec = wb.Mask({lm.moe_layers[0]: [1]})
    calls = {"n": 0, "fail_at": None}
    original = torch.nn.Module.register_forward_hook, torch.nn.Module.register_forward_pre_hook

    def failing(which):
        def register(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise Interrupt()
            return original[which](self, *args, **kwargs)
        return register
    monkeypatch.setattr(torch.nn.Module, "register_forward_hook", failing(0))
    monkeypatch.setattr(torch.nn.Module, "register_forward_pre_hook", failing(1))
    with wb.edit(lm, spec):
        pass
    steps = calls["n"]
    assert steps >= 2 * len(lm.moe_layers)
    with torch.no_grad():
        want = lm.model(input_ids=_ids(lm)).logits
    for fail_at in range(1, steps + 1):
        calls["n"], calls["fail_at"] = 0, fail_at
        with pytest.raises(Interrupt):
            with wb.edit(lm, spec):
                pytest.fail("the body must not run when entering failed")
        assert _hooks(lm) == 0 and not lm.probes.active, fail_at
        assert lm.probes.edit_frames == [] and lm.probes.edits_anywhere == 0
        with torch.no_grad():
            assert torch.equal(lm.model(input_ids=_ids(lm)).logits, want)
    calls["fail_at"] = None
    with pytest.raises(Interrupt):  # interrupted inside the body: leaving restores the model
        with wb.edit(lm, spec):
            raise Interrupt()
    assert _hooks(lm) == 0 and lm.probes.edit_frames == []


def test_a_listener_and_an_edit_in_two_threads_share_the_hooks_safely(tiny):
    lm = tiny("mixtral")
    inside, release = threading.Event(), threading.Event()

    def hold():
        with wb.edit(lm, wb.TopK(1)):
            inside.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    trace = wb.record(lm, ["hello there"], progress=False)  # hooks are installed by the other thread
    assert trace.k == lm.top_k and (trace.topk_idx[:, :, 1] >= 0).all()  # not top-1: that edit is not ours
    release.set()
    t.join()
    assert not lm.probes.active and _hooks(lm) == 0
