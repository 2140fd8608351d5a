"""Replay: rerun a cached layer's routed experts under a new routing, from the model's own weights.

The routing is computed with the family rule from the cached router logits (the same plan an edit
would use), then the experts run on the cached block inputs through the grouped kernels
(:func:`~workbench.kernels.grouped.grouped_experts`: tokens grouped by expert, gather fused, weights
applied in the epilogue, nothing done for pruned or empty experts), and the cached shared part is
added. Handles any routing, also those that need experts outside a recombine cache, and verifies
recombine results. For expert weights in a layout the kernels do not know it falls back to calling
the experts module (:func:`workbench.probes.expert_outputs.expert_outputs`) and warns.

Example:
    >>> import torch, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture, replay
    >>> lm = wb.wrap(*tiny_model("qwen2_moe"))
    >>> cache = capture(lm, ["the quick brown fox"], layers=[0], candidates=None, progress=False)[0]
    >>> torch.allclose(replay(lm, cache), cache.y, atol=1e-5)
    True
    >>> replay(lm, cache, wb.Mask({0: [0, 1]})).shape == cache.y.shape
    True
"""

from __future__ import annotations

import warnings

import torch

from workbench.kernels.grouped import grouped_experts
from workbench.kernels.routing import Decision, apply_plan
from workbench.replay.plans import plan_for
from workbench.replay.weights import UnsupportedExperts, expert_weights


def routing_of(lm, cache, routing) -> Decision:
    """The :class:`~workbench.kernels.Decision` of ``routing`` on the cached logits (``"native"`` =
    the routing the model used at capture)."""
    if isinstance(routing, Decision):
        return routing
    if isinstance(routing, str) and routing == "native":
        return Decision(cache.topk_idx, cache.topk_w, torch.ones_like(cache.topk_idx, dtype=torch.bool))
    plan = plan_for(lm, cache.layer, routing)
    bias = cache.bias.to(cache.logits.device) if cache.bias is not None else None
    return apply_plan(cache.logits, cache.rule, plan, bias)


def _module_fallback(lm, layer, x, d: Decision, reason: str) -> torch.Tensor:
    from workbench.probes.expert_outputs import expert_outputs

    if lm.adapter.router_io == "scores_logits":
        raise UnsupportedExperts(f"{reason}; and this family scales expert inputs, so the module fallback "
                                 "(outputs at weight 1) cannot replay it")
    warnings.warn(f"replay: {reason}; falling back to calling the experts module through "
                  "workbench.probes.expert_outputs (every needed expert runs on every token)", stacklevel=3)
    live = d.idx[d.valid]
    if live.numel() == 0:
        return torch.zeros_like(x)
    experts = torch.unique(live).tolist()
    col = torch.full((lm.num_experts,), 0, dtype=torch.long, device=x.device)
    col[torch.tensor(experts, device=x.device)] = torch.arange(len(experts), device=x.device)
    Y = expert_outputs(lm, layer, x, experts)
    picked = Y.gather(1, col[d.idx][:, :, None].expand(-1, -1, Y.shape[-1]))
    w = torch.where(d.valid, d.w.float(), torch.zeros_like(d.w.float())).to(x.device)
    return (picked.float() * w[:, :, None]).sum(dim=1).to(x.dtype)


@torch.no_grad()
def replay_decision(lm, cache, decision: Decision, *, backend: str | None = None,
                    include_shared: bool = True) -> torch.Tensor:
    """The layer output ``[T, H]`` for an explicit routing ``decision`` (``[T, k]`` tensors).

    ``backend``: ``"torch"``, ``"triton"``, ``"reference"``, ``"module"`` (call the experts module),
    or None (Triton on CUDA, torch otherwise).
    """
    cache.check_model(lm)
    dev = lm.device
    x = cache.x.to(dev)
    d = Decision(decision.idx.to(dev), decision.w.to(dev), decision.valid.to(dev))
    if backend == "module":
        routed = _module_fallback(lm, cache.layer, x, d, "backend='module' asked for")
    else:
        try:
            ew = expert_weights(lm, cache.layer)
        except UnsupportedExperts as err:
            if backend is not None:
                raise
            routed = _module_fallback(lm, cache.layer, x, d, str(err))
        else:
            routed = grouped_experts(x, ew, d.idx, d.w, d.valid, backend=backend)
    out = routed.to(device=cache.y.device, dtype=cache.y.dtype)
    return out + cache.shared.to(out.dtype) if include_shared else out


def replay(lm, cache, *specs, decision=None, backend: str | None = None, include_shared: bool = True
           ) -> torch.Tensor:
    """Recompute one cached layer's output under the routing given by ``specs``.

    Args:
        lm: the :class:`~workbench.loading.MoEModel` the cache was captured on.
        cache: a :class:`~workbench.replay.cache.LayerCache`.
        *specs: edit specs applied together (``wb.Mask``, ``wb.TopK``, ``wb.Skip``, ...); none = the
            model's own rule on the cached logits.
        decision: instead of specs, an explicit :class:`~workbench.kernels.Decision`, or ``"native"``
            for the routing the model used at capture.
        backend: see :func:`replay_decision`.
        include_shared: add the cached shared part (shared experts, block biases).

    Returns:
        ``[T, H]`` layer output in the cache's dtype.
    """
    if decision is not None and specs:
        raise ValueError("give either specs or decision=, not both")
    d = routing_of(lm, cache, decision if decision is not None else (list(specs) or None))
    return replay_decision(lm, cache, d, backend=backend, include_shared=include_shared)


def loss(cache, out: torch.Tensor) -> float:
    """``||out - y||_F`` against the cached block output, accumulated in float64."""
    diff = out.detach().double().cpu() - cache.y.double().cpu()
    return float((diff * diff).sum().sqrt())
