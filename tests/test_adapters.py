"""Each family's adapter reproduces the model's own routing exactly, on a tiny random model."""

import pytest
import torch

import workbench as wb
from workbench.kernels import route
from workbench.probes import seams
from workbench.testing import FAMILIES, tiny_model

TEXT = ["the quick brown fox jumps over the lazy dog", "def add(a, b): return a + b  12 + 34 = 46"]


def _native_routing(lm):
    """(layer -> (logits, idx, w)) as the unhooked model computes them."""
    captured, handles = {}, []
    for layer in lm.moe_layers:
        def router_hook(module, args, out, layer=layer):
            captured.setdefault(layer, {})["router"] = out
        handles.append(lm.router(layer).register_forward_hook(router_hook))
        if lm.adapter.router_io == "experts_call":
            def experts_hook(module, args, layer=layer):
                captured[layer]["experts"] = args
            handles.append(lm.experts(layer).register_forward_pre_hook(experts_hook))
    ids = lm.tokenizer(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        lm.model(**ids)
    for h in handles:
        h.remove()
    result = {}
    for layer, got in captured.items():
        logits, idx, w = seams.unpack(lm.adapter.router_io, got["router"], lm.num_experts, lm.top_k)
        if idx is None:
            idx, w = got["experts"][1], got["experts"][2]
        result[layer] = (logits, idx, w)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_rule_reproduces_model_routing_exactly(family, tiny):
    lm = tiny(family)
    native = _native_routing(lm)
    assert set(native) == set(lm.moe_layers)
    for layer, (logits, idx, w) in native.items():
        d = route(logits, lm.rule, lm.top_k, lm.selection_bias(layer))
        # compare as sets per token (some families use unsorted top-k); values must be identical
        mi, md = torch.sort(idx, dim=1), torch.sort(d.idx, dim=1)
        assert torch.equal(mi.values, md.values), f"{family} layer {layer}: experts differ"
        w_model = w.float().gather(1, mi.indices)
        w_ours = d.w.to(w.dtype).float().gather(1, md.indices)
        assert torch.equal(w_model, w_ours), f"{family} layer {layer}: weights differ"


@pytest.mark.parametrize("family", FAMILIES)
def test_wrap_knows_structure(family, tiny):
    lm = tiny(family)
    assert lm.num_experts == 8
    assert lm.top_k == (1 if family == "llama4_text" else 2)
    assert lm.moe_layers == ([1, 2] if family in ("deepseek_v2", "deepseek_v3", "glm4_moe") else [0, 1])
    assert len(lm.fingerprint) == 16
    if family in ("qwen2_moe", "deepseek_v2", "deepseek_v3", "glm4_moe", "llama4_text"):
        assert lm.shared_experts(lm.moe_layers[0]), "family has shared experts"


def test_unknown_family_lists_supported():
    with pytest.raises(wb.UnsupportedModelError) as err:
        wb.get_adapter("my_new_moe")
    for name in ("mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe"):
        assert name in str(err.value)
    assert "wrap the model itself" in str(err.value)


def test_dense_model_is_refused_with_the_list():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(wb.UnsupportedModelError, match="Supported model types: .*mixtral"):
        wb.wrap(model)


def test_moe_family_with_only_dense_layers_is_refused():
    from transformers import AutoModelForCausalLM

    from workbench.testing import tiny_config

    config = tiny_config("qwen3_moe")
    config.mlp_only_layers = [0, 1]
    with pytest.raises(wb.UnsupportedModelError, match="has no MoE block"):
        wb.wrap(AutoModelForCausalLM.from_config(config))


def test_register_new_family_in_a_few_lines():
    from workbench.adapters import unregister

    base = wb.adapter_for(tiny_model("mixtral")[0])
    adapter = wb.Adapter("mixtral-like", ("mixtral_like_test",), rule=base.rule,
                         num_experts=base.num_experts, top_k=base.top_k)
    wb.register(adapter)
    try:
        assert wb.get_adapter("mixtral_like_test") is adapter
        with pytest.raises(ValueError, match="already served"):
            wb.register(adapter)
    finally:
        unregister("mixtral_like_test")


def test_fingerprint_differs_between_weights():
    a = wb.wrap(*tiny_model("mixtral", seed=0))
    b = wb.wrap(*tiny_model("mixtral", seed=1))
    c = wb.wrap(*tiny_model("mixtral", seed=0))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == c.fingerprint
