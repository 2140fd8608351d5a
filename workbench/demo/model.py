"""The demo model's architecture and its per-layer load-balancing loss.

The demo is a plain transformers ``Qwen3MoeForCausalLM`` (model_type ``qwen3_moe``): every decoder
layer is a sparse MoE block (``mlp_only_layers=[]``, ``decoder_sparse_step=1``), softmax routing
with top-k renormalisation, tied embeddings. It loads with ``AutoModelForCausalLM`` and needs no
code from this package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Qwen3MoeConfig

DEFAULT_ARCH = dict(
    hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=64, num_experts=16, num_experts_per_tok=2, moe_intermediate_size=192,
)


def make_config(vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int,
                router_aux_loss_coef: float = 0.01, **arch) -> Qwen3MoeConfig:
    """A ``Qwen3MoeConfig`` for the demo (``DEFAULT_ARCH`` unless overridden by ``arch``).

    Example:
        >>> cfg = make_config(512, 1, 2, 0, num_experts=4, hidden_size=32, head_dim=8)
        >>> cfg.model_type, cfg.num_experts, cfg.mlp_only_layers, cfg.tie_word_embeddings
        ('qwen3_moe', 4, [], True)
    """
    params = {**DEFAULT_ARCH, **arch}
    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        intermediate_size=params["moe_intermediate_size"],  # unused: every layer is MoE
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=True,
        router_aux_loss_coef=router_aux_loss_coef,
        output_router_logits=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **params,
    )


def layer_balance(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch-style balance loss of ONE layer and its expert shares.

    Args:
        router_logits: ``(tokens, E)`` raw router logits of one layer.
        top_k: Experts chosen per token.

    Returns:
        ``(loss, share)``: ``loss = E * sum_e f_e * p_e`` (1.0 when perfectly balanced), where
        ``f_e`` is the share of the layer's ``tokens * top_k`` slots routed to expert ``e`` and
        ``p_e`` its mean router probability; ``share`` is ``f`` (detached), shape ``(E,)``.

    Example:
        >>> loss, share = layer_balance(torch.zeros(8, 4), top_k=2)
        >>> round(float(loss), 3), share.shape
        (1.0, torch.Size([4]))
    """
    probs = F.softmax(router_logits.float(), dim=-1)
    n_experts = probs.shape[-1]
    idx = probs.topk(top_k, dim=-1).indices
    counts = torch.zeros(n_experts, device=probs.device).scatter_add_(
        0, idx.reshape(-1), torch.ones(idx.numel(), device=probs.device))
    share = counts / idx.numel()
    return n_experts * (share * probs.mean(dim=0)).sum(), share


def per_layer_balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Average of :func:`layer_balance` over layers, and the ``(layers, E)`` share matrix.

    Unlike transformers' ``load_balancing_loss_func`` (which sums counts over layers first), an
    expert that dies inside one layer raises this loss.

    Example:
        >>> loss, shares = per_layer_balance_loss((torch.zeros(6, 4), torch.zeros(6, 4)), 2)
        >>> round(float(loss), 3), tuple(shares.shape)
        (1.0, (2, 4))
    """
    losses, shares = zip(*(layer_balance(lg, top_k) for lg in router_logits))
    return torch.stack(losses).mean(), torch.stack(shares)
