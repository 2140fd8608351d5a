"""The grouped replay kernels: every backend equals the explicit-loop reference; the dispatcher."""

from __future__ import annotations

import itertools

import pytest
import torch

from workbench.kernels import dispatch
from workbench.kernels.grouped import ExpertWeights, grouped_experts, schedule
from workbench.kernels.triton_check import on_cpu_f32, random_weights

LAYOUTS = [("concat", False, "silu", False), ("interleaved", True, "gpt_oss", False),
           ("separate", False, "gelu", False), ("concat", False, "gelu_tanh", True),
           ("separate", True, "relu", False)]


def _routing(g, t, k, e, kind):
    idx = torch.randint(0, e, (t, k), generator=g)
    w = torch.rand(t, k, generator=g)
    valid = torch.ones(t, k, dtype=torch.bool)
    if kind == "one_expert":
        idx[:] = e // 2
    elif kind == "empty_experts":
        idx = idx % 2
    elif kind == "empty_slots":
        valid = torch.rand(t, k, generator=g) > 0.4
        w[::3] = 0.0
    elif kind == "no_work":
        valid[:] = False
    return idx, w, valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("e,k", [(1, 1), (4, 2), (8, 3), (16, 8)])
@pytest.mark.parametrize("kind", ["random", "one_expert", "empty_experts", "empty_slots", "no_work"])
def test_torch_path_equals_reference(dtype, e, k, kind):
    g = torch.Generator().manual_seed(e * 10 + k)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for layout, bias, act, scale_input in LAYOUTS[:3] if kind != "random" else LAYOUTS:
        ew = random_weights(g, e, 12, 10, dtype, layout, bias, act, scale_input, "cpu")
        x = torch.randn(11, 12, generator=g).to(dtype)
        idx, w, valid = _routing(g, 11, k, e, kind)
        want = grouped_experts(x.float(), on_cpu_f32(ew), idx, w, valid, backend="reference").float()
        for reduce in (True, False):
            got = grouped_experts(x, ew, idx, w, valid, reduce=reduce, backend="torch")
            assert got.dtype == dtype
            got = got.float() if reduce else got.float().sum(dim=1)
            scale = float(want.abs().max()) + 1e-6
            assert float((got - want).abs().max()) <= tol * scale, (layout, act, reduce)


def test_unreduced_output_holds_each_weighted_slot():
    g = torch.Generator().manual_seed(0)
    ew = random_weights(g, 4, 8, 6, torch.float32, "concat", True, "silu", False, "cpu")
    x = torch.randn(5, 8, generator=g)
    idx = torch.tensor([[0, 1], [1, 2], [3, 3], [2, 0], [1, 1]])
    w = torch.rand(5, 2, generator=g)
    per_slot = grouped_experts(x, ew, idx, w, reduce=False)
    for t, j in itertools.product(range(5), range(2)):
        alone = grouped_experts(x[t:t + 1], ew, idx[t:t + 1, j:j + 1], w[t:t + 1, j:j + 1])
        torch.testing.assert_close(per_slot[t, j], alone[0], rtol=1e-5, atol=1e-6)


def test_schedule_drops_empty_and_zero_weight_slots_and_unused_experts():
    g = torch.Generator().manual_seed(0)
    ew = random_weights(g, 6, 8, 6, torch.float32, "concat", False, "silu", False, "cpu")
    idx = torch.tensor([[0, 1], [1, 4], [4, 0]])
    w = torch.tensor([[0.5, 0.0], [0.5, 0.5], [1.0, 0.2]])
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    pairs, experts, counts = schedule(ew, idx, w, valid)
    assert counts.tolist() == [2, 1, 0, 0, 1, 0]  # experts 2, 3, 5 get no work
    assert pairs.tolist() == [0, 5, 2, 4] and experts.tolist() == [0, 0, 1, 4]
    # Llama-4-style input scaling keeps zero-weight pairs only when biases make f(0) != 0
    biased = random_weights(g, 6, 8, 6, torch.float32, "concat", True, "silu", True, "cpu")
    assert schedule(biased, idx, w, valid)[2].sum() == 5


def test_expert_weights_validate_shapes():
    gate = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"down must be \[E, I, H\]"):
        ExpertWeights(gate, gate, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="act must be one of"):
        ExpertWeights(gate, gate, torch.zeros(2, 3, 4), act="swish")
    ew = ExpertWeights(gate, gate, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"expert ids must be in 0..1"):
        grouped_experts(torch.zeros(3, 4), ew, torch.tensor([[0], [1], [2]]), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"x must be \[T, H=4\]"):
        grouped_experts(torch.zeros(3, 5), ew, torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))


def test_dispatcher_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert dispatch.resolve("grouped_experts", device=cpu)[0] == "torch"
    assert dispatch.resolve("route_plans", "reference", cpu)[0] == "reference"
    assert dispatch.backends("recombine") == ("reference", "torch")
    with pytest.raises(ValueError, match="CUDA|triton package"):
        dispatch.resolve("grouped_experts", "triton", cpu)
    with pytest.raises(ValueError, match="choose one of"):
        dispatch.resolve("grouped_experts", "cuda", cpu)
    with pytest.raises(KeyError, match="known"):
        dispatch.backends("nope")
    with pytest.raises(ValueError, match="module:function"):
        dispatch.register("x", "torch", "no_colon")
