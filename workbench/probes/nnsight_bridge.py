"""The nnsight bridge: the workbench's routing record and edits inside an nnsight trace.

:func:`to_nnsight` wraps a :class:`~workbench.loading.MoEModel`'s model for nnsight (0.8).
Inside ``with nn.trace(...)`` or ``with nn.generate(...)``, :func:`record_routing` saves every MoE
layer's routing and :func:`apply_edits` replaces it with the edited routing, computed by the same
code as :func:`workbench.edit` (the family's rule, ``rows=`` per batch row); both return a
:class:`NNsightRouting` that is readable after the block. Parameters are never changed.

nnsight's rules, and what they mean here:

* **Execution order.** A trace body must ask for locations in the order the model reaches them.
  One call visits the MoE layers in order (block input, router output, and for DBRX the experts
  call) and records while it edits, so make **one** call per forward pass; read modules that run
  before the first MoE layer above it and modules after the last one below it.
* **Flattened router tensors.** Routers see ``[B*S, H]``: row ``b`` owns tokens ``b*S..(b+1)*S-1``.
  nnsight's ``tracer.invoke`` batching narrows dim 0 by batch rows, which fits ``[B, S, H]`` but not
  ``[B*S, E]``; give the trace one input (a batch is fine) and pick rows with ``rows=`` on the specs,
  or call from an empty ``tracer.invoke()``, which sees the whole batch.
* **Bounded generation.** ``steps=n`` visits the first ``n`` forward passes of a generation through
  nnsight's ``tracer.iter``; ``max_new_tokens=n`` makes ``n`` passes (pass ``min_new_tokens=n`` too,
  or an EOS can end it sooner: the steps that ran are kept, with a warning).

``to_nnsight`` instruments the model's modules the way nnsight always does (a pass-through
``forward`` on each module, inert outside a trace: outputs stay bit-identical), and hands nnsight a
copy of the tokenizer, because nnsight switches its tokenizer to left padding. Importing nnsight
(on first use, not when this module is imported) gives every Python object a ``.save()``. The
functions run in the trace's own worker, so they work locally; nnsight's remote service would need
them registered with it first.

Example:
    >>> import torch, workbench as wb
    >>> from workbench.probes.nnsight_bridge import to_nnsight, apply_edits
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> nn = to_nnsight(lm)
    >>> with torch.no_grad(), nn.trace("the quick brown fox"):
    ...     routing = apply_edits(nn, lm, wb.Mask({0: [0, 1, 2]}))
    >>> idx, w = routing.topk(0)  # [T, k], heaviest first
    >>> bool((idx >= 3).all()), tuple(idx.shape)
    (True, (4, 2))
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import torch

from workbench.probes import seams
from workbench.probes.hooks import ProbeManager
from workbench.trace import RoutingTrace, partial_token_bytes

_CACHE = weakref.WeakKeyDictionary()  # MoEModel -> its nnsight model


def to_nnsight(lm):
    """The nnsight model of ``lm`` (made once per :class:`~workbench.loading.MoEModel`, then cached).

    Returns an ``nnsight.TransformersModel`` over ``lm.model`` (it has ``trace`` and ``generate``
    and tokenizes strings), or a plain ``nnsight.NNsight`` when ``lm`` has no tokenizer.
    """
    if lm in _CACHE:
        return _CACHE[lm]
    try:
        import nnsight
    except ImportError as exc:  # pragma: no cover - the extra is part of the standard install
        raise ImportError("the nnsight bridge needs nnsight: pip install 'moe-workbench[nnsight]'") from exc
    if lm.tokenizer is None:
        model = nnsight.NNsight(lm.model)
    else:
        import copy

        model = nnsight.TransformersModel(lm.model, tokenizer=copy.deepcopy(lm.tokenizer))
    _CACHE[lm] = model
    return model


class NNsightRouting:
    """Routing saved inside an nnsight trace; read it after the ``with`` block.

    ``steps[i][layer]`` holds forward pass ``i`` (one for a trace; prompt then one token per pass for a
    generation): ``idx [T, k]`` (long, ``-1`` = empty slot) and ``w [T, k]`` (float32) in rank order,
    ``shape`` ``(B, S)`` with ``T = B*S``, and ``logits [T, E]`` when asked for ``scores``.
    """

    def __init__(self, layers, specs=()):
        self.layers = list(layers)
        self.specs = tuple(specs)
        self.steps: list[dict[int, dict]] = []

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def topk(self, layer: int, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx [T, k], w [T, k])`` of one layer at one forward pass, heaviest first."""
        entry = self._entry(layer, step)
        return entry["idx"], entry["w"]

    def logits(self, layer: int, step: int = 0) -> torch.Tensor:
        """Router logits ``[T, E]`` (recorded with ``scores=True``)."""
        entry = self._entry(layer, step)
        if "logits" not in entry:
            raise ValueError("router logits were not kept; call record_routing/apply_edits with scores=True")
        return entry["logits"]

    def by_row(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx [B, S_total, k], w [B, S_total, k])``: every forward pass, concatenated along the
        sequence (a generation's step ``i > 0`` routes the token generated at step ``i - 1``)."""
        entries = [self._entry(layer, s) for s in range(self.num_steps)]
        batch = entries[0]["shape"][0]
        if any(e["shape"][0] != batch for e in entries):
            raise ValueError("the batch size changed between forward passes; read them one by one with topk()")
        k = max(e["idx"].shape[1] for e in entries)
        idx = torch.cat([_pad(e["idx"], k, -1).view(batch, -1, k) for e in entries], dim=1)
        w = torch.cat([_pad(e["w"], k, 0.0).view(batch, -1, k) for e in entries], dim=1)
        return idx, w

    def to_trace(self, lm, input_ids, attention_mask=None, labels=None) -> RoutingTrace:
        """A :class:`~workbench.trace.RoutingTrace` (one document per batch row, padding left out).

        Args:
            lm: the model the routing was recorded on.
            input_ids: ``[B, S]`` ids fed to the model (for a generation: its output; the ids
                beyond the recorded passes are ignored).
            attention_mask: ``[B, S]`` (default: every token is real).
            labels: one label per row.
        """
        ids = torch.as_tensor(input_ids).cpu().long()
        ids = ids[None] if ids.ndim == 1 else ids
        parts = [self.by_row(layer) for layer in self.layers]
        length = parts[0][0].shape[1]
        if ids.shape[1] < length or ids.shape[0] != parts[0][0].shape[0]:
            raise ValueError(f"input_ids {tuple(ids.shape)} do not cover the recorded routing "
                             f"[B={parts[0][0].shape[0]}, S={length}]; pass the ids the model was run on")
        ids = ids[:, :length]
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).cpu().long()
        if mask.shape[1] < length:  # a generation's mask covers the prompt only
            mask = torch.cat([mask, torch.ones(mask.shape[0], length - mask.shape[1], dtype=torch.long)], 1)
        mask = mask[:, :length]
        keep = mask.reshape(-1).bool()
        k = max(p[0].shape[2] for p in parts)
        topk_idx = np.stack([_pad(i.reshape(-1, i.shape[2]), k, -1)[keep].numpy() for i, _ in parts])
        topk_w = np.stack([_pad(w.reshape(-1, w.shape[2]), k, 0.0)[keep].numpy() for _, w in parts])
        token_ids = ids.reshape(-1)[keep].numpy()
        doc = torch.arange(ids.shape[0]).repeat_interleave(length)[keep].numpy()
        pos = (mask.cumsum(1) - 1).reshape(-1)[keep].numpy()
        text = {} if lm.tokenizer is None else {int(t): lm.tokenizer.decode([int(t)]) for t in np.unique(token_ids)}
        meta = {"model": lm.name, "adapter": lm.adapter.name, "top_k": lm.top_k, "source": "nnsight",
                "edits": [repr(s) for s in self.specs]}
        if lm.tokenizer is not None:
            meta["token_bytes"] = partial_token_bytes(lm.tokenizer, token_ids)
        return RoutingTrace(topk_idx, topk_w, token_ids, doc, pos, self.layers, lm.num_experts, lm.fingerprint,
                            token_text=text, doc_labels=list(labels) if labels is not None else [None] * len(ids),
                            meta=meta)

    def _entry(self, layer: int, step: int) -> dict:
        if not self.steps:
            raise ValueError("nothing was recorded: read the routing after the trace block has run")
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range: {self.num_steps} forward pass(es) recorded")
        if layer not in self.steps[step]:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        return self.steps[step][layer]

    def __repr__(self) -> str:
        return f"NNsightRouting(layers={self.layers}, steps={self.num_steps}, specs={self.specs})"


def record_routing(nn_model, lm, *, layers=None, steps: int | None = None, scores: bool = False) -> NNsightRouting:
    """Save every MoE layer's routing; call inside ``with nn_model.trace(...)`` / ``.generate(...)``.

    Args:
        nn_model: :func:`to_nnsight` of ``lm`` (any nnsight wrapper of ``lm.model`` works).
        lm: the :class:`~workbench.loading.MoEModel`.
        layers: decoder-layer indices to keep (default: every MoE layer).
        steps: ``None``: the current forward pass (the trace's one pass, or one step of your own
            ``for step in tracer.iter[...]`` loop). ``n``: the first ``n`` passes of a generation.
        scores: keep the router logits too.

    Returns:
        :class:`NNsightRouting` (already saved: it survives the block).
    """
    return _run(nn_model, lm, (), layers, steps, scores)


def apply_edits(nn_model, lm, *specs, layers=None, steps: int | None = None,
                scores: bool = False) -> NNsightRouting:
    """Route with edits inside an nnsight trace, exactly as ``with wb.edit(lm, *specs)`` would.

    Takes the specs of :func:`workbench.edit` (``Mask``, ``Force``, ``KeepRank``, ``TopK``, ``TopP``,
    ``Skip``, with ``layers=``/``rows=``) and the arguments of :func:`record_routing`; records the
    edited routing of ``layers`` (default: every MoE layer) while it edits.
    """
    if not specs:
        raise ValueError("apply_edits() needs at least one spec, e.g. wb.Mask({layer: [expert]}); "
                         "use record_routing() to only record")
    return _run(nn_model, lm, specs, layers, steps, scores)


def _run(nn_model, lm, specs, layers, steps, scores) -> NNsightRouting:
    from nnsight import save
    from nnsight.intervention.interleaver import Mediator, OutOfOrderError
    from nnsight.intervention.iterator import Iterations
    from workbench.probes.edits import edit

    try:
        Mediator.current("the routing")
    except ValueError:
        raise RuntimeError("record_routing/apply_edits must be called inside a `with nn_model.trace(...)` "
                           "or `with nn_model.generate(...)` block that has its input (or inside one of its "
                           "`with tracer.invoke(...)` blocks)") from None
    if lm.probes.edits_anywhere:  # in any context: nnsight runs this code in a thread of its own
        raise RuntimeError("a wb.edit block is active on this model: its hooks run after nnsight's and would "
                           "override the routing seen here; pass its specs to apply_edits instead")
    decider = ProbeManager(lm)  # never installs hooks: used only for its decide()
    if specs:
        decider.edit_frames = [edit(lm, *specs)]  # validates the specs; not entered
    layers = list(lm.moe_layers) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    routing = save(NNsightRouting(layers, specs))
    if steps is None:
        routing.steps.append(_visit(nn_model, lm, decider, layers, scores))
        return routing
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int (the forward passes to visit), got {steps!r}")
    try:
        for _ in Iterations()[:steps]:
            routing.steps.append(_visit(nn_model, lm, decider, layers, scores))
    except OutOfOrderError:
        if not routing.steps:
            raise
        warnings.warn(f"the generation made {routing.num_steps} forward passes, fewer than steps={steps}; "
                      "kept those (pass min_new_tokens= to hold it to the count)", stacklevel=2)
    return routing


def _visit(nn_model, lm, decider: ProbeManager, layers, scores: bool) -> dict[int, dict]:
    """One forward pass: every needed MoE layer in execution order; returns the recorded entries."""
    io, num_experts = lm.adapter.router_io, lm.num_experts
    edited = {layer for layer in lm.moe_layers if decider.active_specs(layer)}
    entries = {}
    for layer in sorted(set(layers) | edited):
        hidden = _envoy(nn_model, lm.block(layer)).input
        shape = tuple(hidden.shape[:-1])
        router = _envoy(nn_model, lm.router(layer))
        out = router.output
        logits, idx, w = seams.unpack(io, out, num_experts, lm.top_k)
        if seams.at_experts(io):  # DBRX, identified families: edit the experts call
            experts = _envoy(nn_model, lm.experts(layer))
            args, kwargs = experts.inputs
            x, idx_arg, w_arg = seams.experts_call_args(args, kwargs)
            idx, w = seams.from_experts_args(io, idx_arg, w_arg)
        if len(shape) > 1 and shape[0] * shape[1] != logits.shape[0]:
            raise RuntimeError(
                f"layer {layer}: the block input is {shape} but the router saw {logits.shape[0]} tokens. "
                "nnsight's tracer.invoke batching narrows [B, S, H] tensors but not the router's flattened "
                "[B*S, E]; give the trace one input (a batch is fine) and select rows with rows= on the specs, "
                "or call from an empty tracer.invoke(), which sees the whole batch.")
        decider._shapes[layer] = shape
        decision, changed = decider.decide(layer, logits, seams.native_decision(idx, w))
        if changed and seams.at_experts(io):
            experts.inputs = ((x, *seams.to_experts_args(io, decision, idx_arg, w_arg, num_experts)), {})
        elif changed:
            router.output = seams.pack(io, out, decision, num_experts)
        if layer in layers:
            r_idx, r_w, valid = seams.in_rank_order(decision.idx, decision.w, decision.valid)
            entry = {"idx": torch.where(valid, r_idx, torch.full_like(r_idx, -1)).detach().cpu(),
                     "w": torch.where(valid, r_w.float(), torch.zeros_like(r_w, dtype=torch.float32)).detach().cpu(),
                     "shape": shape if len(shape) > 1 else (1, shape[0])}
            if scores:
                entry["logits"] = logits.detach().float().cpu()
            entries[layer] = entry
    return entries


def _envoy(nn_model, module):
    envoy = nn_model.interleaver.envoys.get(id(module))
    if envoy is None:
        raise ValueError("this nnsight model does not wrap the MoEModel's model; build it with to_nnsight(lm)")
    return envoy


def _pad(t: torch.Tensor, k: int, fill) -> torch.Tensor:
    if t.shape[-1] == k:
        return t
    pad = torch.full((*t.shape[:-1], k - t.shape[-1]), fill, dtype=t.dtype)
    return torch.cat([t, pad], dim=-1)
