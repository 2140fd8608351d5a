"""Every expert's own output for given MoE-block inputs, for any family.

The routed experts of a block are called directly (not through the router), each expert on every
token with weight 1, so ``Y[t, c]`` is expert ``experts[c]``'s output for token ``t`` before any
routing weight. Shared experts and block-level terms are not included.

Llama-4 scales an expert's *input* by its routing weight, so there the routed output is
``sum_e Y_e(w_e * x)``, not ``sum_e w_e * Y_e(x)``; every other family weights outputs.

Example:
    >>> import torch, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.probes.expert_outputs import expert_outputs
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> expert_outputs(lm, 0, torch.randn(5, 32)).shape
    torch.Size([5, 8, 32])
"""

from __future__ import annotations

import torch


@torch.no_grad()
def expert_outputs(lm, layer: int, x: torch.Tensor, experts=None) -> torch.Tensor:
    """Outputs of routed experts for block inputs ``x``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        layer: a decoder-layer index in ``lm.moe_layers``.
        x: ``[T, H]`` inputs of the MoE block (the hidden states the router sees).
        experts: expert ids to run (default: all ``E``).

    Returns:
        ``[T, C, H]`` outputs, in ``x``'s dtype, ``C = len(experts)``.
    """
    experts = list(range(lm.num_experts)) if experts is None else [int(e) for e in experts]
    if not experts:
        raise ValueError("experts is empty")
    for e in experts:
        if not 0 <= e < lm.num_experts:
            raise ValueError(f"expert {e} out of range 0..{lm.num_experts - 1}")
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H], got shape {tuple(x.shape)}")
    num_tokens, hidden = x.shape
    module = lm.experts(layer)
    io = lm.adapter.router_io
    ids = torch.tensor(experts, device=x.device)
    if io == "scores_logits":
        out = _llama4(module, x, ids, lm.num_experts)
    elif io == "jetmoe":
        out = _jetmoe(lm.block(layer), x, ids, lm.num_experts)
    else:
        x_rep = x.repeat(len(experts), 1)
        idx = ids.repeat_interleave(num_tokens)[:, None]
        w = torch.ones(idx.shape, dtype=x.dtype, device=x.device)
        out = module(x_rep, idx, w).reshape(len(experts), num_tokens, hidden)
    return out.transpose(0, 1).contiguous()


def _llama4(module, x, ids, num_experts):
    # Llama-4's experts take one equal-sized slab of tokens per expert; zero slabs cost nothing extra.
    num_tokens = x.shape[0]
    routed_in = torch.zeros(num_experts, num_tokens, x.shape[1], dtype=x.dtype, device=x.device)
    routed_in[ids] = x
    out = module(routed_in.reshape(-1, x.shape[1])).reshape(num_experts, num_tokens, -1)
    return out[ids]


def _jetmoe(block, x, ids, num_experts):
    num_tokens = x.shape[0]
    sizes = [0] * num_experts
    for e in ids.tolist():
        sizes[e] = num_tokens
    order = ids.sort().indices  # ParallelExperts takes slabs in expert order
    inputs = x.repeat(len(ids), 1)
    hidden = block.input_linear(inputs, sizes)
    gate, up = hidden.chunk(2, dim=-1)
    out = block.output_linear(block.activation(gate) * up, sizes).reshape(len(ids), num_tokens, -1)
    result = torch.empty_like(out)
    result[order] = out
    return result


def weighted_sum(outputs: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[T, H]`` routed output from per-expert outputs ``[T, E, H]`` and routing ``idx``/``w [T, k]``."""
    picked = outputs.gather(1, idx[:, :, None].expand(-1, -1, outputs.shape[-1]))
    return (picked * w[:, :, None].to(outputs.dtype)).sum(dim=1)

