"""The hook manager: one set of PyTorch hooks per model that carries every recording and edit.

Hooks sit on the two seams of each MoE block (the router call and, for DBRX, the experts call) and
are installed only while a recording or an edit is active; when the last one ends they are removed,
leaving the model exactly as it was. Hooks never touch parameters.

Order on each router call: the routing is decided (the model's own, or recomputed with the family's
rule under the active edits), then every recording listener sees the final decision.

Per-row edits (``rows=``; self-contrast decoding runs row 0 natively and row 1 edited) take a fast
path in :meth:`ProbeManager.decide`: the specs, plans and per-row token masks of each layer are
built once while the edit frames stay the same, every distinct plan routes all tokens in one call,
and each token takes its row's routing with ``torch.where``. A layout of native rows and rows with a
single ranked expert (SCMoE's weak row) is routed by the fused
:class:`~workbench.kernels.rank_rows.RankRows` instead (four small operations, not about seventeen:
on a decoding step of two one-token rows those operations are the edit's whole cost).
:meth:`ProbeManager.decide_reference` is the obvious split-route-merge form both are tested against.
When no listener reads the decision, the experts-call hook of such a layout skips the general
machinery (decision objects, seams conversions) and runs :class:`_FusedStep` on the block's own
arguments: the choice score, a ``topk`` and two ``where`` (``lm.probes.lean = False`` turns this
off; tests compare both). Layouts are also kept by value (plans, rows, batch shape), so each new
SCMoE generation, which enters a new edit, finds them instead of building them again.
A spec with ``needs_positions`` (the random-expert control) also puts a pre-hook on the decoder
layers to read their ``position_ids``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from typing import Callable

import torch

from workbench.kernels.rank_rows import RankRows, choice_scores, fusable
from workbench.kernels.routing import Decision, RoutingPlan, apply_plan
from workbench.probes import seams

Listener = Callable[[int, torch.Tensor, Decision], None]

MAX_LAYOUTS = 64  # per-row layouts (one per batch shape) kept per layer while the edits stay the same
MAX_MEMOS = 16    # distinct sets of edit frames whose per-layer facts are kept


def check_finite(layer: int, values: torch.Tensor, what: str) -> None:
    """Raise a FloatingPointError naming the layer and token when ``values`` (``[T, ...]``) has NaN or inf."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        token = int((~finite).reshape(values.shape[0], -1).any(dim=1).nonzero()[0, 0])
        bad = values.reshape(values.shape[0], -1)[token][~finite.reshape(values.shape[0], -1)[token]][0]
        raise FloatingPointError(f"layer {layer}: the {what} of token {token} (of {values.shape[0]} in this "
                                 f"call) are not finite ({float(bad)}); the model's activations overflowed or "
                                 "are NaN (try float32 or bfloat16 instead of float16)")


def check_finite_fast(layer: int, values: torch.Tensor, what: str) -> None:
    """:func:`check_finite` with one reduction in the common case: a finite sum means every value is
    finite (a NaN or an infinity makes the sum NaN or infinite); only then is each value checked."""
    if not math.isfinite(float(values.sum())):
        check_finite(layer, values, what)  # raises, unless the sum merely overflowed


_NATIVE = object()  # _fused_step's answer when no edit applies to the layer
_LAYOUTS: dict = {}  # per-row layouts by value (plans, row groups, shape, device, rule), shared by managers
MAX_SHARED_LAYOUTS = 256


class _FusedStep:
    """:class:`~workbench.kernels.rank_rows.RankRows` on the block's own routing arguments, for the
    hooks' lean path: the family's choice score, one ``topk``, a ``where`` for the ids and one for
    the weights (in the block's dtype). Equal to ``RankRows`` followed by the seams' conversion
    (the weights of a ranked token are ``[weight, 0, ...]`` cast once; the native tokens' weights
    are the block's own, which float32 and back leaves unchanged); tests compare them."""

    def __init__(self, fused: RankRows, rule):
        self.mask = fused.mask
        self.rank = fused.rank
        self.top = fused.rank + 1
        self.fused = fused
        self.softmax = rule.scoring == "softmax"
        self.rule = rule
        self._weights: dict = {}  # (k, dtype) -> [1, k] weights of a ranked token

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor):
        """``(idx, w)`` ``[T, k]`` of the merged routing, from the router ``logits [T, E]`` and the
        block's own ``idx``/``w`` (ids as int64, weights in ``w``'s dtype)."""
        choice = torch.softmax(logits.float(), dim=-1) if self.softmax else choice_scores(logits, self.rule)
        ranked = torch.topk(choice, self.top, dim=-1)[1][:, self.rank:]
        key = (w.shape[1], w.dtype)
        row = self._weights.get(key)
        if row is None:
            row = self._weights[key] = self.fused._constants(w.shape[1])[0].to(w.dtype)
        return torch.where(self.mask, ranked, idx.long()), torch.where(self.mask, row, w)


def _positional(frame) -> bool:
    return any(getattr(s, "needs_positions", False) for s in getattr(frame, "specs", ()))


class ProbeManager:
    """Installs and removes the hooks of one :class:`~workbench.loading.MoEModel`.

    The active edits and listeners belong to the caller: they live in :mod:`contextvars`, so each
    thread, asyncio task or widget callback sees only the edits it entered, even when several run
    forwards of the same model at once. The hooks are installed while any context has an edit or a
    listener, and read the state of the context that runs the forward. Model-wide edits (the saved
    skipping a checkpoint carries) are *base* frames, seen in every context unless suspended there.
    """

    def __init__(self, lm):
        self.lm = lm
        self._frames = contextvars.ContextVar(f"workbench_edits_{id(self)}", default=())
        self._listeners = contextvars.ContextVar(f"workbench_listeners_{id(self)}", default=())
        self._suspended = contextvars.ContextVar(f"workbench_suspended_{id(self)}", default=())
        self._base: tuple = ()
        self._lock = threading.RLock()
        self._users = 0        # edits and listeners entered in any context, plus base frames
        self._positional = 0   # of those, edits with a spec that routes by token position
        self.edits_anywhere = 0  # edit frames entered in any context (base frames included)
        self._handles: list = []
        self._position_handles: list = []
        self._local = threading.local()  # the state of one forward pass, per thread
        self._memos: dict = {}
        self.lean = True  # the hooks' lean path for fused layouts (False: always the general path)

    # -- per-thread forward state --------------------------------------------------------
    def _state(self, name: str) -> dict:
        value = getattr(self._local, name, None)
        if value is None:
            value = {}
            setattr(self._local, name, value)
        return value

    _shapes = property(lambda self: self._state("shapes"))
    _pending_logits = property(lambda self: self._state("pending"))
    _positions = property(lambda self: self._state("positions"))

    # -- activation ----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def edit_frames(self) -> list:
        """The edit frames in force in the calling context: base frames first, then entered ones."""
        hidden = self._suspended.get()
        return [f for f in self._base if f not in hidden] + list(self._frames.get())

    @edit_frames.setter
    def edit_frames(self, frames) -> None:  # for a manager used only to decide (never installs hooks)
        self._frames.set(tuple(frames))

    @property
    def listeners(self) -> list:
        return list(self._listeners.get())

    def push_edit(self, frame) -> None:
        """Enter ``frame`` in the calling context (undone completely if anything fails)."""
        with self._lock:
            self._enter(self._frames, frame, _positional(frame))
            self.edits_anywhere += 1

    def pop_edit(self, frame) -> None:
        with self._lock:
            if frame in self._frames.get():
                self._leave(self._frames, frame, _positional(frame))
                self.edits_anywhere -= 1
                # an ended edit is not kept alive by the memo (another context using it rebuilds it)
                self._memos = {k: v for k, v in self._memos.items() if not any(f is frame for f in v[0])}

    def add_listener(self, fn: Listener) -> None:
        self._enter(self._listeners, fn, False)

    def remove_listener(self, fn: Listener) -> None:
        self._leave(self._listeners, fn, False)

    def push_base_edit(self, frame) -> None:
        """Make ``frame`` a model-wide edit, in force in every context (see :meth:`suspend`)."""
        with self._lock:
            self._acquire(_positional(frame))
            self._base = self._base + (frame,)
            self.edits_anywhere += 1

    @contextlib.contextmanager
    def suspend(self, frame):
        """Inside the block, a base frame is not in force in the calling context."""
        token = self._suspended.set(self._suspended.get() + (frame,))
        try:
            yield
        finally:
            self._suspended.reset(token)

    def _enter(self, var, item, positional: bool) -> None:
        with self._lock:
            before = var.get()
            try:
                self._acquire(positional)
            except BaseException:
                var.set(before)
                raise
            try:
                var.set(before + (item,))
            except BaseException:
                var.set(before)
                self._release(positional)
                raise

    def _leave(self, var, item, positional: bool) -> None:
        with self._lock:
            items = var.get()
            if item not in items:
                return
            i = len(items) - 1 - items[::-1].index(item)
            var.set(items[:i] + items[i + 1:])
            self._release(positional)

    def _acquire(self, positional: bool) -> None:
        if self._users == 0:
            self._install()
        self._users += 1
        if positional:
            if self._positional == 0:
                try:
                    self._install_positions()
                except BaseException:
                    self._release(False)
                    raise
            self._positional += 1

    def _release(self, positional: bool) -> None:
        if positional:
            self._positional = max(self._positional - 1, 0)
            if self._positional == 0:
                self._remove_positions()
        self._users = max(self._users - 1, 0)
        if self._users == 0:
            self._remove()

    def _install(self) -> None:
        adapter = self.lm.adapter
        try:
            for layer in self.lm.moe_layers:
                block = self.lm.block(layer)
                self._handles.append(block.register_forward_pre_hook(self._shape_hook(layer), with_kwargs=True))
                router = adapter.router(block)
                self._handles.append(router.register_forward_hook(self._router_hook(layer), prepend=True))
                if seams.at_experts(adapter.router_io):
                    experts = adapter.experts(block)
                    self._handles.append(
                        experts.register_forward_pre_hook(self._experts_hook(layer), with_kwargs=True, prepend=True))
        except BaseException:
            self._remove()  # never leave some layers hooked
            raise

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._shapes.clear()
        self._pending_logits.clear()

    def _install_positions(self) -> None:
        layers = self.lm.adapter.decoder_layers(self.lm.model)
        try:
            for layer in self.lm.moe_layers:
                self._position_handles.append(
                    layers[layer].register_forward_pre_hook(self._position_hook(layer), with_kwargs=True))
        except BaseException:
            self._remove_positions()
            raise

    def _remove_positions(self) -> None:
        while self._position_handles:
            self._position_handles.pop().remove()
        self._positions.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _shape_hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else next(iter(kwargs.values()))
            self._shapes[layer] = tuple(hidden.shape[:-1])
        return hook

    def _position_hook(self, layer: int):
        """Installed on decoder layers only while a spec routes by token position (RandomExpert):
        keeps the ``position_ids`` the layer is called with."""
        def hook(module, args, kwargs):
            self._positions[layer] = kwargs.get("position_ids")
        return hook

    def _router_hook(self, layer: int):
        io = self.lm.adapter.router_io

        def hook(module, args, out):
            logits, idx, w = seams.unpack(io, out, self.lm.num_experts, self.lm.top_k)
            if seams.at_experts(io):
                self._pending_logits[layer] = logits
                return None
            listeners = self._listeners.get()
            decision, changed = self._decide_native(layer, logits, idx, w, listeners)
            for fn in listeners:
                fn(layer, logits, decision)
            return seams.pack(io, out, decision, self.lm.num_experts) if changed else None
        return hook

    def _experts_hook(self, layer: int):
        io = self.lm.adapter.router_io
        fast_io = io == "experts_call"

        def hook(module, args, kwargs):
            logits = self._pending_logits.pop(layer)
            listeners = self._listeners.get()
            if fast_io and self.lean and not listeners and len(args) == 3 and not kwargs:
                step = self._fused_step(layer, logits)
                if step is not None:  # native rows + rank rows (SCMoE): the lean fused path
                    if step is _NATIVE:
                        return None
                    return (args[0], *step(logits, args[1], args[2])), {}
            hidden, idx_arg, w_arg = seams.experts_call_args(args, kwargs)
            idx, w = seams.from_experts_args(io, idx_arg, w_arg)
            decision, changed = self._decide_native(layer, logits, idx, w, listeners)
            for fn in listeners:
                fn(layer, logits, decision)
            if not changed:
                return None
            return (hidden, *seams.to_experts_args(io, decision, idx_arg, w_arg, self.lm.num_experts)), {}
        return hook

    def _decide_native(self, layer: int, logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                       listeners=None):
        """:meth:`decide` from the model's own ``(idx, w)``; the ``valid`` masks are built only
        when a listener will read the decision (the block itself needs only ``idx`` and ``w``)."""
        if self.listeners if listeners is None else listeners:
            return self.decide(layer, logits, seams.native_decision(idx, w))
        return self.decide(layer, logits, Decision(idx.long(), w.float(), None), need_valid=False)

    # -- deciding ------------------------------------------------------------------------
    def active_specs(self, layer: int) -> list:
        if layer in self.lm.hash_layers:  # routed by token id: edits never apply (see edits.edit)
            return []
        return [s for frame in self.edit_frames for s in frame.specs if s.applies_to(layer)]

    def plan_for(self, specs, layer: int) -> RoutingPlan:
        plan = RoutingPlan(k=self.lm.top_k)
        for spec in specs:
            plan = spec.update(plan, layer, self.lm)
        return plan

    def _memo(self) -> dict:
        """Per-layer facts that depend only on the edit frames in force (specs, plans, bias, row
        layouts), one memo per distinct set of frames (contexts with other edits get their own).
        The frames themselves are held, so their ids cannot be reused while the memo lives.

        Each thread keeps the last lookup: while the calling context's frame tuples are the same
        objects (every change of the edits sets new tuples) the memo is found without rebuilding
        the frame list (a router call of SCMoE's decoding step is a few microseconds of tensor
        work, so this lookup counts)."""
        entered, hidden, base = self._frames.get(), self._suspended.get(), self._base
        last = getattr(self._local, "last_memo", None)
        if last is not None and last[0] is entered and last[1] is hidden and last[2] is base:
            return last[3]
        frames = tuple(self.edit_frames)
        if not frames:  # recording only: every layer routes natively; kept apart from the edits' memos
            memo = self._local.empty_memo = getattr(self._local, "empty_memo", None) or {}
            self._local.last_memo = (entered, hidden, base, memo)
            return memo
        key = tuple(map(id, frames))
        hit = self._memos.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], frames)):
            if len(self._memos) >= MAX_MEMOS:
                self._memos.clear()
            hit = self._memos[key] = (frames, {})
        self._local.last_memo = (entered, hidden, base, hit[1])
        return hit[1]

    def _layer_memo(self, layer: int) -> dict:
        memo = self._memo()
        entry = memo.get(layer)
        if entry is None:
            specs = self.active_specs(layer)
            entry = {"specs": specs, "rows": {}}
            if specs:
                entry["bias"] = self.lm.selection_bias(layer)
                if all(s.rows is None for s in specs):
                    entry["plan"] = self.plan_for(specs, layer)
            memo[layer] = entry
        return entry

    def _fused_step(self, layer: int, logits: torch.Tensor):
        """The lean form of :meth:`decide` the hooks take when no listener reads the decision:
        :data:`_NATIVE` when no edit applies to the layer; the layout's :class:`_FusedStep` when
        the layer's rows are native rows + rows of one ranked expert (SCMoE's weak row) and the
        layout of this batch shape is built (the router scores are checked finite here); else None
        (the general path, which builds the layout on its first call)."""
        entry = self._layer_memo(layer)
        if not entry["specs"]:
            return _NATIVE
        if "plan" in entry:
            return None
        num_tokens = logits.shape[0]
        shape = self._shapes.get(layer, (1, num_tokens))
        per_row = max(num_tokens // shape[0] if len(shape) > 1 else num_tokens, 1)
        layout = entry["rows"].get((num_tokens, per_row, logits.device))
        if layout is None or layout[3] is None:
            return None
        check_finite_fast(layer, logits, "router scores")
        return layout[4]

    def decide(self, layer: int, logits: torch.Tensor, native: Decision,
               need_valid: bool = True) -> tuple[Decision, bool]:
        """The routing of one router call under the active edits; ``changed`` False = native.

        Fast path: specs, plans and the per-row layout are built once per layer while the edit
        frames stay the same; with row-restricted specs, every distinct plan routes all tokens in
        one vectorised call and each token takes its row's result (``torch.where``). Equal to
        :meth:`decide_reference` (tests compare them). With ``need_valid=False`` (the hooks, when
        no listener reads the decision) the merged rows carry ``valid=None``.
        """
        entry = self._layer_memo(layer)
        specs = entry["specs"]
        if not specs:
            return native, False
        check_finite_fast(layer, logits, "router scores")
        num_tokens = logits.shape[0]
        shape = self._shapes.get(layer, (1, num_tokens))
        per_row = max(num_tokens // shape[0] if len(shape) > 1 else num_tokens, 1)
        bias = entry["bias"]
        plan = entry.get("plan")
        if plan is not None:
            return self._route(layer, logits, plan, bias, per_row), True
        key = (num_tokens, per_row, logits.device)
        layout = entry["rows"].get(key)
        if layout is None:
            if len(entry["rows"]) >= MAX_LAYOUTS:  # e.g. recording many batch shapes under one edit
                entry["rows"].clear()
            layout = entry["rows"][key] = self._row_layout(layer, specs, num_tokens, per_row, logits.device, bias)
        plans, masks, pads, fused, _ = layout
        if fused is not None:  # native rows + rows with one ranked expert (SCMoE's weak row)
            return fused(logits, native, self.lm.rule, need_valid), True
        parts = [native if p is None else self._route(layer, logits, p, bias, per_row) for p in plans]
        if len(parts) == 1:
            return parts[0], True
        k = max(d.k for d in parts)
        out = _pad(parts[0], k, pads, need_valid)
        for mask, part in zip(masks, parts[1:]):
            part = _pad(part, k, pads, need_valid)
            out = Decision(torch.where(mask, part.idx, out.idx), torch.where(mask, part.w, out.w),
                           torch.where(mask, part.valid, out.valid) if need_valid else None)
        return out, True

    def _route(self, layer: int, logits: torch.Tensor, plan: RoutingPlan, bias, per_row: int) -> Decision:
        if plan.mode != "random":
            return apply_plan(logits, self.lm.rule, plan, bias)
        return apply_plan(logits, self.lm.rule, plan, bias, self.token_positions(layer, logits.shape[0], per_row))

    def token_positions(self, layer: int, num_tokens: int, per_row: int) -> torch.Tensor:
        """``[T]`` positions of the router's tokens in their sequences: the ``position_ids`` the
        decoder layer was called with (transformers passes them, counting the KV cache), else
        ``0..per_row-1`` in every row (e.g. for the nnsight bridge, which does not see them)."""
        pos = self._positions.get(layer)
        rows = num_tokens // per_row
        if (isinstance(pos, torch.Tensor) and pos.dim() == 2 and pos.shape[-1] == per_row
                and pos.shape[0] in (1, rows) and rows * per_row == num_tokens):
            return pos.expand(rows, per_row).reshape(-1)
        return torch.arange(num_tokens) % per_row

    def _row_layout(self, layer: int, specs, num_tokens: int, per_row: int, device, bias=None):
        """The distinct plans of the rows (None = the model's own routing), for every plan after
        the first a ``[T, 1]`` bool mask of the tokens whose row uses it, a cache of padding blocks,
        and the fused :class:`~workbench.kernels.rank_rows.RankRows` when the layout is native rows
        plus rows of one ranked expert (else None)."""
        num_rows = (num_tokens - 1) // per_row + 1
        outside = sorted({r for s in specs if s.rows is not None for r in s.rows if r >= num_rows})
        if outside:
            raise ValueError(f"edit rows {outside} are outside the batch of {num_rows} row(s); rows= counts "
                             "batch rows from 0")
        keys = [tuple(i for i, s in enumerate(specs) if s.rows is None or row in s.rows) for row in range(num_rows)]
        distinct = list(dict.fromkeys(keys))
        plans = [self.plan_for([specs[i] for i in key], layer) if key else None for key in distinct]
        groups = tuple(distinct.index(key) for key in keys)
        # the rest depends only on these values: shared by later edits with equal plans (each SCMoE
        # generation enters a new edit; its layouts are then found here instead of rebuilt)
        cache_key = (tuple(None if p is None else tuple(vars(p).items()) for p in plans), groups, num_tokens,
                     per_row, str(device), bias is None, self.lm.rule)
        hit = _LAYOUTS.get(cache_key)
        if hit is not None:
            return hit
        group = torch.tensor(groups, device=device)
        group = group.repeat_interleave(per_row)[:num_tokens]
        masks = [(group == j).unsqueeze(1) for j in range(1, len(distinct))]
        rank_plan = fusable(plans, bias)
        fused = step = None
        if rank_plan is not None:
            fused = RankRows(masks[0] if plans[0] is None else ~masks[0], rank_plan)
            step = _FusedStep(fused, self.lm.rule)
        layout = (plans, masks, {}, fused, step)
        if len(_LAYOUTS) >= MAX_SHARED_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[cache_key] = layout
        return layout

    def decide_reference(self, layer: int, logits: torch.Tensor, native: Decision) -> tuple[Decision, bool]:
        """The obvious form of :meth:`decide`: no memo; rows are split into groups with the same
        specs, each group is routed on its own tokens, and the parts are merged back."""
        specs = self.active_specs(layer)
        if not specs:
            return native, False
        bias = self.lm.selection_bias(layer)
        rule = self.lm.rule
        num_tokens = logits.shape[0]
        shape = self._shapes.get(layer, (1, num_tokens))
        per_row = num_tokens // shape[0] if len(shape) > 1 else num_tokens
        positions = self.token_positions(layer, num_tokens, max(per_row, 1)).to(logits.device)
        if all(s.rows is None for s in specs):
            return apply_plan(logits, rule, self.plan_for(specs, layer), bias, positions), True
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
                part = apply_plan(logits[mask], rule, plan, bias, positions[mask])
            else:
                part = Decision(native.idx[mask], native.w[mask], native.valid[mask])
            parts.append((mask, part))
        return _merge(parts, num_tokens), True


def _pad(d: Decision, k: int, zeros: dict, need_valid: bool = True) -> Decision:
    """``d`` with empty slots appended up to ``k`` (as :func:`~workbench.kernels.plans.pad_slots`:
    the first slot's expert id, weight 0, not valid); the zero blocks are kept in ``zeros``."""
    pad = k - d.k
    if pad <= 0:
        return d
    num_tokens = d.idx.shape[0]
    key = (pad, num_tokens, d.w.dtype, d.w.device)
    block = zeros.get(key)
    if block is None:
        block = zeros[key] = (torch.zeros(num_tokens, pad, dtype=d.w.dtype, device=d.w.device),
                              torch.zeros(num_tokens, pad, dtype=torch.bool, device=d.w.device))
    idx = d.idx.expand(-1, k) if d.k == 1 else torch.cat([d.idx, d.idx[:, :1].expand(-1, pad)], dim=1)
    valid = torch.cat([d.valid, block[1]], dim=1) if need_valid else None
    return Decision(idx, torch.cat([d.w, block[0]], dim=1), valid)


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
