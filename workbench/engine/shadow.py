"""What the workbench knows of a checkpoint's routing, found without loading its weights.

A vLLM engine holds the weights; the driver needs only the family facts the transformers backend
has (MoE layers, ``E``, ``k``, the routing rule, hash-routed layers, layer names). They are
identified exactly as for a loaded model (:func:`workbench.adapters.adapter_for`), on a *shadow*:
the same transformers class built from the checkpoint's config with every width shrunk (hidden
size, FFN sizes, heads) and the routing kept (layer count and layout, experts, top-k, groups,
scaling), randomly initialised. The rule is a function of the config, not of the weights.

Example:
    >>> from workbench.engine.shadow import shadow_model
    >>> from workbench.testing import tiny_config
    >>> shadow = shadow_model(tiny_config("qwen3_moe"))
    >>> shadow.num_experts, shadow.top_k, shadow.moe_layers, shadow.rule.describe()
    (8, 2, [0, 1], 'softmax -> top-k -> renormalise')
"""

from __future__ import annotations

import torch

#: widths set on the shadow (only where the config has the attribute); routing sizes are kept
SHADOW_WIDTHS = {
    "hidden_size": 32, "intermediate_size": 16, "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "kv_lora_rank": 8, "q_lora_rank": 8,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "vocab_size": 512,
}


def shadow_config(config):
    """A copy of ``config`` (a transformers text config) with the widths of :data:`SHADOW_WIDTHS`,
    rebuilt through its class so that derived sizes follow."""
    values = config.to_dict()
    rope_is_head = values.get("head_dim") is not None and values.get("head_dim") == values.get("qk_rope_head_dim")
    for name, width in SHADOW_WIDTHS.items():
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = min(values[name], width)
    if rope_is_head:  # MLA (DeepSeek-V3): the rotary embedding is sized by head_dim, the rope part of q and k
        values["head_dim"] = values["qk_rope_head_dim"]
    if isinstance(values.get("qk_head_dim"), int):  # derived in __init__ but kept in to_dict (MLA)
        values["qk_head_dim"] = values.get("qk_nope_head_dim", 0) + values.get("qk_rope_head_dim", 0)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token = values.get(name)
        if isinstance(token, int) and token >= values.get("vocab_size", token + 1):
            values[name] = 0
    values.pop("quantization_config", None)
    return type(config).from_dict(values)


def shadow_model(config):
    """A :class:`~workbench.loading.MoEModel` of the shadow of ``config`` (seeded, float32).

    Raises:
        UnsupportedModelError: as :func:`workbench.wrap` does for a dense model or an unknown family.
    """
    from transformers import AutoModelForCausalLM

    from workbench.loading import MoEModel

    small = shadow_config(config)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    return MoEModel(model, None, source="shadow")


def checkpoint_fingerprint(path: str, config, shadow) -> str:
    """The fingerprint :func:`workbench.loading.compute_fingerprint` gives the loaded checkpoint,
    from its config and its router tensors read from the safetensors files (nothing else is read).

    A router tensor is found under the transformers module path (``model.layers.3.mlp.gate.weight``)
    or, for checkpoints that name modules otherwise, under any ``layers.<i>.…<router>.<name>`` key;
    a tensor the checkpoint does not hold (a buffer initialised at load) is the shadow's own.
    """
    import hashlib
    import re
    from pathlib import Path

    from safetensors import safe_open

    from workbench.loading import config_digest

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights")
    where = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                where[key] = file
    module_names = {id(m): n for n, m in shadow.model.named_modules()}
    last = shadow.adapter.router_attr.split(".")[-1]
    h = hashlib.sha256(config_digest(config))
    for layer in shadow.moe_layers:
        router = shadow.router(layer)
        prefix = module_names[id(router)]
        for name, own in sorted(router.state_dict().items()):
            key = f"{prefix}.{name}"
            if key not in where:
                pattern = re.compile(rf"(^|\.)layers\.{layer}\.(.+\.)?{re.escape(last)}\.{re.escape(name)}$")
                key = next((k for k in where if pattern.search(k)), None)
            if key is None:
                if own.numel() and own.shape[-1] == shadow.config.hidden_size:
                    raise ValueError(f"the checkpoint at {path} holds no router tensor {prefix}.{name}")
                tensor = own
            else:
                with safe_open(str(where[key]), framework="pt") as fh:
                    tensor = fh.get_tensor(key)
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
