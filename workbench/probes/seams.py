"""Reading and writing the routing decision at a block's seams, for each router convention.

``unpack`` turns whatever a family's router returns into ``(logits, idx, w)``; ``pack`` builds the
same kind of object from an edited :class:`~workbench.kernels.Decision`, so the block runs on
unchanged with the new routing. See :mod:`workbench.adapters.base` for the conventions.
"""

from __future__ import annotations

import torch

from workbench.kernels.routing import Decision


#: conventions whose routing is read and replaced at the experts call
EXPERTS_SEAMS = ("experts_call", "switch")


def at_experts(router_io: str) -> bool:
    """Whether ``router_io`` is recorded and edited at the experts call rather than the router."""
    return router_io in EXPERTS_SEAMS


EXPERTS_ARG_NAMES = ("hidden_states", "top_k_index", "top_k_weights")


def experts_call_args(args, kwargs):
    """``(hidden, top_k_index, top_k_weights)`` of an ``experts(...)`` call, positional or keyword
    (None for an argument the call did not pass)."""
    values = list(args[:3]) + [kwargs.get(n) for n in EXPERTS_ARG_NAMES[len(args):]]
    return values[0], values[1], values[2]


def from_experts_args(router_io: str, idx_arg: torch.Tensor, w_arg: torch.Tensor):
    """``(idx [T, k], w [T, k])`` from what the block passes to ``experts(x, ·, ·)``.

    Switch Transformers passes a one-hot ``[T, k, E]`` dispatch mask; a token its capacity dropped
    has an all-zero mask and shows as weight 0.
    """
    if router_io == "switch":
        return idx_arg.argmax(dim=-1), w_arg * idx_arg.any(dim=-1).to(w_arg.dtype)
    return idx_arg, w_arg


def to_experts_args(router_io: str, decision: Decision, idx_arg: torch.Tensor, w_arg: torch.Tensor, num_experts: int):
    """The experts call's routing arguments, in the block's own format, carrying ``decision``.

    A decision with fewer slots than the call had is padded with empty slots (the first slot's
    expert, weight 0): some experts modules assume at least their native number of slots.
    """
    native_k = w_arg.shape[1]
    if decision.k < native_k:
        pad = native_k - decision.k
        rows = decision.idx.shape[0]
        decision = Decision(
            torch.cat([decision.idx, decision.idx[:, :1].expand(-1, pad)], dim=1),
            torch.cat([decision.w, torch.zeros(rows, pad, dtype=decision.w.dtype, device=decision.w.device)], dim=1),
            None if decision.valid is None else torch.cat(
                [decision.valid, torch.zeros(rows, pad, dtype=torch.bool, device=decision.w.device)], dim=1))
    w = decision.w.to(w_arg.dtype)
    if router_io == "switch":
        hot = torch.nn.functional.one_hot(decision.idx, num_experts)
        if decision.valid is not None:
            hot = hot * decision.valid.unsqueeze(-1)
        return hot.to(idx_arg.dtype), w
    return decision.idx, w


def unpack(router_io: str, out, num_experts: int, top_k: int):
    """``(logits [T, E], idx [T, k] | None, w [T, k] | None)`` from a router's return value."""
    if router_io == "logits_weights_indices":
        logits, w, idx = out[0], out[1], out[2]
        return logits, idx, w
    if router_io == "scores_logits":
        dense, logits = out[0], out[1]
        idx = torch.topk(logits, k=top_k, dim=-1)[1]
        return logits, idx, dense.gather(1, idx)
    if router_io == "experts_call":
        logits = out[0] if isinstance(out, (tuple, list)) else out
        return logits.reshape(-1, logits.shape[-1]), None, None
    if router_io == "switch":  # (dispatch mask, top-1 probability, logits)
        return out[2].reshape(-1, out[2].shape[-1]), None, None
    if router_io == "jetmoe":
        sorted_pos, _, gates, sizes, logits = out
        k = sorted_pos.numel() // logits.shape[0]
        expert_of = torch.repeat_interleave(torch.arange(num_experts, device=logits.device),
                                            torch.as_tensor(sizes, device=logits.device))
        idx = torch.empty(logits.shape[0] * k, dtype=torch.long, device=logits.device)
        w = torch.empty(logits.shape[0] * k, dtype=gates.dtype, device=logits.device)
        idx[sorted_pos] = expert_of
        w[sorted_pos] = gates
        return logits, idx.view(-1, k), w.view(-1, k)
    raise ValueError(f"unknown router_io {router_io!r}")


def pack(router_io: str, out, decision: Decision, num_experts: int):
    """A router return value of the family's kind that carries ``decision``."""
    idx, w = decision.idx, decision.w
    if router_io == "logits_weights_indices":
        w_like = out[1]
        rest = tuple(out[3:]) if isinstance(out, tuple) and len(out) > 3 else ()
        return (out[0], w.to(w_like.dtype), idx.to(out[2].dtype)) + rest
    if router_io == "scores_logits":
        dense = torch.zeros(out[0].shape, dtype=torch.float32, device=out[0].device)
        dense.scatter_add_(1, idx, w.float())
        return (dense.to(out[0].dtype), out[1])
    if router_io == "jetmoe":
        logits = out[4]
        k = idx.shape[1]
        flat = idx.reshape(-1)
        _, sorted_pos = flat.sort(dim=0, stable=True)
        batch_index = sorted_pos.div(k, rounding_mode="trunc")
        gates = w.reshape(-1)[sorted_pos].to(out[2].dtype)
        sizes = torch.bincount(flat, minlength=num_experts).tolist()
        return (sorted_pos, batch_index, gates, sizes, logits)
    raise ValueError(f"router_io {router_io!r} is edited at the experts call, not the router")


def native_decision(idx: torch.Tensor, w: torch.Tensor) -> Decision:
    """The model's own routing as a Decision (all slots valid, slots as the model ordered them)."""
    return Decision(idx.long(), w.float(), torch.ones_like(idx, dtype=torch.bool))


def in_rank_order(idx: torch.Tensor, w: torch.Tensor, valid: torch.Tensor):
    """Slots sorted by weight, heaviest first, empty slots last (the order a trace stores)."""
    key = torch.where(valid, w.float(), torch.full_like(w, float("-inf"), dtype=torch.float32))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    return idx.gather(1, order), w.gather(1, order), valid.gather(1, order)
