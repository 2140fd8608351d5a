"""A layer's expert weights as :class:`~workbench.kernels.grouped.ExpertWeights` views, per family.

Layouts handled (views of the model's own parameters, never copies):

* transformers 5 fused experts (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, GLM-4-MoE,
  Granite-MoE, PhiMoE): ``gate_up_proj [E, 2I, H]`` (gate rows first), ``down_proj [E, H, I]``,
  activation ``act_fn``;
* GPT-OSS: ``gate_up_proj [E, H, 2I]`` with gate and up interleaved (even/odd columns), biases, and
  the clamped GLU (``alpha``, ``limit``);
* Llama-4: ``gate_up_proj [E, H, 2I]`` (gate columns first), ``down_proj [E, I, H]``; routing
  weights scale the expert *input*;
* DBRX: ``mlp.w1``, ``mlp.v1``, ``mlp.w2``, each ``[E * I, H]``;
* JetMoE: ``input_linear.weight [E, 2I, H]``, ``output_linear.weight [E, H, I]`` (its block-level
  bias is routing-independent and lives in the cache's ``shared`` part).

Anything else raises :class:`UnsupportedExperts`; :func:`workbench.replay.replay` then falls back
to calling the experts module through :func:`workbench.probes.expert_outputs.expert_outputs`.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay.weights import expert_weights
    >>> ew = expert_weights(wb.wrap(*tiny_model("gpt_oss")), 0)
    >>> ew.act, ew.source, tuple(ew.gate.shape)
    ('gpt_oss', 'gpt_oss: gate_up_proj [E, H, 2I] interleaved, biased', (8, 32, 16))
"""

from __future__ import annotations

import torch

from workbench.kernels.grouped import ExpertWeights


class UnsupportedExperts(NotImplementedError):
    """The experts module stores its weights in a layout the replay kernels do not know."""


_ACT_NAMES = {"SiLUActivation": "silu", "SiLU": "silu", "GELUActivation": "gelu", "GELU": "gelu",
              "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh",
              "FastGELUActivation": "gelu_tanh", "ReLU": "relu", "ReLUActivation": "relu"}


def activation_name(act_fn) -> str:
    """The kernel name of an activation module (``SiLUActivation`` -> ``"silu"``)."""
    name = type(act_fn).__name__
    if name == "GELU" and getattr(act_fn, "approximate", "none") == "tanh":
        return "gelu_tanh"
    if name not in _ACT_NAMES:
        raise UnsupportedExperts(f"activation {name} has no replay kernel; known: {', '.join(sorted(_ACT_NAMES))}")
    return _ACT_NAMES[name]


def _split_rows(w: torch.Tensor, inter: int, concatenated: bool):
    """``[E, 2I, H]`` -> gate, up as ``[E, H, I]`` views."""
    if concatenated:
        return w[:, :inter, :].transpose(1, 2), w[:, inter:, :].transpose(1, 2)
    return w[:, 0::2, :].transpose(1, 2), w[:, 1::2, :].transpose(1, 2)


def _split_cols(w: torch.Tensor, inter: int, concatenated: bool):
    """``[E, H, 2I]`` -> gate, up as ``[E, H, I]`` views."""
    if concatenated:
        return w[:, :, :inter], w[:, :, inter:]
    return w[:, :, 0::2], w[:, :, 1::2]


def _fused(lm, module) -> ExpertWeights:
    from transformers.integrations.moe import _default_apply_gate

    gate_up, down = module.gate_up_proj, module.down_proj
    hidden = int(lm.config.hidden_size)
    num_experts = int(gate_up.shape[0])
    llama4 = type(module).__name__ == "Llama4TextExperts"
    transposed = getattr(module, "is_transposed", None)
    if llama4:
        transposed = True
    if transposed is None:
        if tuple(down.shape[1:]) == (hidden, hidden):
            raise UnsupportedExperts(f"{type(module).__name__}: cannot tell whether its weights are transposed")
        transposed = down.shape[2] == hidden and down.shape[1] != hidden
    concatenated = bool(getattr(module, "is_concatenated", True))
    if getattr(module, "has_post_expert_norm", False):
        raise UnsupportedExperts(f"{type(module).__name__} normalises expert outputs; no replay kernel for that")
    if not getattr(module, "has_gate", True):
        raise UnsupportedExperts(f"{type(module).__name__} has no gate projection; no replay kernel for that")
    inter = int(down.shape[1] if transposed else down.shape[2])
    if transposed:
        gate, up = _split_cols(gate_up, inter, concatenated)
        down_v = down
    else:
        gate, up = _split_rows(gate_up, inter, concatenated)
        down_v = down.transpose(1, 2)
    gb = ub = db = None
    if getattr(module, "gate_up_proj_bias", None) is not None:
        b = module.gate_up_proj_bias
        gb, ub = (b[:, :inter], b[:, inter:]) if concatenated else (b[:, 0::2], b[:, 1::2])
        db = getattr(module, "down_proj_bias", None)
    custom_gate = getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate
    if custom_gate:
        if not (hasattr(module, "alpha") and hasattr(module, "limit") and type(module).__name__.startswith("GptOss")):
            raise UnsupportedExperts(f"{type(module).__name__} has its own gating function; no replay kernel for it")
        act, act_fn, extra = "gpt_oss", None, dict(alpha=float(module.alpha), limit=float(module.limit))
        source = "gpt_oss: gate_up_proj [E, H, 2I] interleaved, biased"
    else:
        act, act_fn, extra = activation_name(module.act_fn), module.act_fn, {}
        source = ("llama4: gate_up_proj [E, H, 2I], input scaling" if llama4
                  else f"fused: gate_up_proj {'[E, H, 2I]' if transposed else '[E, 2I, H]'}")
    if gate.shape[0] != num_experts or gate.shape[1] != hidden:
        raise UnsupportedExperts(f"{type(module).__name__}: unexpected weight shapes {tuple(gate_up.shape)}")
    return ExpertWeights(gate, up, down_v, gb, ub, db, act=act, act_fn=act_fn, scale_input=llama4,
                         source=source, **extra)


def _dbrx(module, num_experts: int) -> ExpertWeights:
    mlp = module.mlp
    hidden = int(mlp.w1.shape[1])
    inter = int(mlp.w1.shape[0]) // num_experts
    view = (num_experts, inter, hidden)
    return ExpertWeights(mlp.w1.view(view).transpose(1, 2), mlp.v1.view(view).transpose(1, 2), mlp.w2.view(view),
                         act=activation_name(mlp.activation_fn), act_fn=mlp.activation_fn,
                         source="dbrx: mlp.w1/v1/w2 [E*I, H]")


def _jetmoe(block) -> ExpertWeights:
    w_in, w_out = block.input_linear.weight, block.output_linear.weight
    inter = int(w_in.shape[1]) // 2
    gate, up = _split_rows(w_in, inter, True)
    return ExpertWeights(gate, up, w_out.transpose(1, 2), act=activation_name(block.activation),
                         act_fn=block.activation, source="jetmoe: input_linear/output_linear")


def expert_weights(lm, layer: int) -> ExpertWeights:
    """The routed experts of MoE layer ``layer`` as :class:`ExpertWeights` (views, no copies).

    Raises:
        UnsupportedExperts: for a layout the kernels do not know (replay then falls back to the
            experts module, and says so).
    """
    block = lm.block(layer)
    module = lm.experts(layer)
    if lm.adapter.router_io == "jetmoe":
        return _jetmoe(block)
    if hasattr(module, "mlp") and all(hasattr(module.mlp, n) for n in ("w1", "v1", "w2")):
        return _dbrx(module, lm.num_experts)
    if isinstance(getattr(module, "gate_up_proj", None), torch.Tensor) and \
            isinstance(getattr(module, "down_proj", None), torch.Tensor) and module.gate_up_proj.ndim == 3:
        return _fused(lm, module)
    raise UnsupportedExperts(f"{type(module).__name__} stores its expert weights in a layout the replay "
                             "kernels do not know")
