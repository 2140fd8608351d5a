"""The hook manager: one set of PyTorch hooks per model that carries every recording and edit.

Hooks sit on the two seams of each MoE block (the router call and, for DBRX, the experts call) and
are installed only while a recording or an edit is active; when the last one ends they are removed,
leaving the model exactly as it was. Hooks never touch parameters.

Order on each router call: the routing is decided (the model's own, or recomputed with the family's
rule under the active edits), then every recording listener sees the final decision.
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.kernels.routing import Decision, RoutingPlan, apply_plan
from workbench.probes import seams

Listener = Callable[[int, torch.Tensor, Decision], None]


class ProbeManager:
    """Installs and removes the hooks of one :class:`~workbench.loading.MoEModel`."""

    def __init__(self, lm):
        self.lm = lm
        self.edit_frames: list = []
        self.listeners: list[Listener] = []
        self._handles: list = []
        self._shapes: dict[int, tuple[int, ...]] = {}
        self._pending_logits: dict[int, torch.Tensor] = {}

    # -- activation ----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self._handles)

    def push_edit(self, frame) -> None:
        self.edit_frames.append(frame)
        self._sync()

    def pop_edit(self, frame) -> None:
        if frame in self.edit_frames:
            self.edit_frames.remove(frame)
        self._sync()

    def add_listener(self, fn: Listener) -> None:
        self.listeners.append(fn)
        self._sync()

    def remove_listener(self, fn: Listener) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)
        self._sync()

    def _sync(self) -> None:
        wanted = bool(self.edit_frames or self.listeners)
        if wanted and not self._handles:
            self._install()
        elif not wanted and self._handles:
            self._remove()

    def _install(self) -> None:
        adapter = self.lm.adapter
        for layer in self.lm.moe_layers:
            block = self.lm.block(layer)
            self._handles.append(block.register_forward_pre_hook(self._shape_hook(layer), with_kwargs=True))
            router = adapter.router(block)
            self._handles.append(router.register_forward_hook(self._router_hook(layer), prepend=True))
            if adapter.router_io == "logits_only":
                experts = adapter.experts(block)
                self._handles.append(
                    experts.register_forward_pre_hook(self._experts_hook(layer), with_kwargs=True, prepend=True))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shapes.clear()
        self._pending_logits.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _shape_hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else next(iter(kwargs.values()))
            self._shapes[layer] = tuple(hidden.shape[:-1])
        return hook

    def _router_hook(self, layer: int):
        io = self.lm.adapter.router_io

        def hook(module, args, out):
            logits, idx, w = seams.unpack(io, out, self.lm.num_experts, self.lm.top_k)
            if io == "logits_only":
                self._pending_logits[layer] = logits
                return None
            decision, changed = self.decide(layer, logits, seams.native_decision(idx, w))
            for fn in self.listeners:
                fn(layer, logits, decision)
            return seams.pack(io, out, decision, self.lm.num_experts) if changed else None
        return hook

    def _experts_hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden, idx, w = _experts_args(args, kwargs)
            logits = self._pending_logits.pop(layer)
            decision, changed = self.decide(layer, logits, seams.native_decision(idx, w))
            for fn in self.listeners:
                fn(layer, logits, decision)
            if not changed:
                return None
            return (hidden, decision.idx, decision.w.to(w.dtype)), {}
        return hook

    # -- deciding ------------------------------------------------------------------------
    def active_specs(self, layer: int) -> list:
        return [s for frame in self.edit_frames for s in frame.specs if s.applies_to(layer)]

    def plan_for(self, specs, layer: int) -> RoutingPlan:
        plan = RoutingPlan(k=self.lm.top_k)
        for spec in specs:
            plan = spec.update(plan, layer, self.lm)
        return plan

    def decide(self, layer: int, logits: torch.Tensor, native: Decision) -> tuple[Decision, bool]:
        """The routing of one router call under the active edits; ``changed`` False = native."""
        specs = self.active_specs(layer)
        if not specs:
            return native, False
        bias = self.lm.selection_bias(layer)
        rule = self.lm.rule
        if all(s.rows is None for s in specs):
            return apply_plan(logits, rule, self.plan_for(specs, layer), bias), True
        num_tokens = logits.shape[0]
        shape = self._shapes.get(layer, (1, num_tokens))
        per_row = num_tokens // shape[0] if len(shape) > 1 else num_tokens
        row_of_token = torch.arange(num_tokens, device=logits.device) // max(per_row, 1)
        groups: dict[tuple, list[int]] = {}
        for row in range(int(row_of_token.max().item()) + 1):
            key = tuple(i for i, s in enumerate(specs) if s.rows is None or row in s.rows)
            groups.setdefault(key, []).append(row)
        parts = []
        for key, rows in groups.items():
            mask = torch.isin(row_of_token, torch.tensor(rows, device=logits.device))
            if key:
                plan = self.plan_for([specs[i] for i in key], layer)
                part = apply_plan(logits[mask], rule, plan, bias)
            else:
                part = Decision(native.idx[mask], native.w[mask], native.valid[mask])
            parts.append((mask, part))
        return _merge(parts, num_tokens), True


def _experts_args(args, kwargs):
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args) + [kwargs[n] for n in names[len(args):]]
    return values[0], values[1], values[2]


def _merge(parts, num_tokens: int) -> Decision:
    k = max(part.k for _, part in parts)
    ref = parts[0][1]
    idx = torch.zeros(num_tokens, k, dtype=torch.long, device=ref.idx.device)
    w = torch.zeros(num_tokens, k, dtype=torch.float32, device=ref.idx.device)
    valid = torch.zeros(num_tokens, k, dtype=torch.bool, device=ref.idx.device)
    for mask, part in parts:
        pad = k - part.k
        p_idx = torch.cat([part.idx, part.idx[:, :1].expand(-1, pad)], dim=1) if pad else part.idx
        p_w = torch.cat([part.w, torch.zeros(part.w.shape[0], pad, device=part.w.device)], dim=1) if pad else part.w
        p_valid = (torch.cat([part.valid, torch.zeros(part.valid.shape[0], pad, dtype=torch.bool,
                                                      device=part.valid.device)], dim=1) if pad else part.valid)
        idx[mask], w[mask], valid[mask] = p_idx, p_w.float(), p_valid
    return Decision(idx, w, valid)
