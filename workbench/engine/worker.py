"""The engine side of the vLLM backend: a worker extension that reads and replaces vLLM's routing.

vLLM loads this class into every worker (``LLM(..., worker_extension_cls=QUALNAME)``) and the
driver calls its methods with ``llm.collective_rpc("wb_...")``: nothing of vLLM is edited. Each MoE
layer of vLLM holds a router object whose ``select_experts(hidden, router_logits, ...)`` returns
the ``(topk_weights, topk_ids)`` the fused experts then compute with. While a recording or an edit
is active, that method is wrapped *on the instance* (removed again afterwards, so the engine is
exactly as before):

* the engine's own routing is computed first; under edits the same
  :class:`~workbench.kernels.routing.RoutingPlan` and family rule as the transformers backend
  replace it (:func:`~workbench.engine.decide.engine_decide`), with the engine's dtypes and
  number of slots;
* a recording keeps, per layer, the expert ids and weights the experts received (and optionally
  the router logits) of the scheduled tokens.

Flattened batch tokens are mapped back to requests from the model runner's own step state: a
forward pre-hook on the model reads ``input_ids`` and ``positions`` and the runner's request order
(``input_batch.req_ids``) and ``query_start_loc``. Each request carries the driver's unit and row
numbers in ``SamplingParams.extra_args`` (``wb_unit``, ``wb_row``). Tokens a step pads are dropped.

Arguments and results cross ``collective_rpc`` pickled: with worker processes vLLM encodes them with
msgspec, which would turn the specs and facts (dataclasses) into plain dicts.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import torch

from workbench.engine.decide import engine_decide
from workbench.kernels.routing import Decision
from workbench.probes.seams import in_rank_order

QUALNAME = "workbench.engine.worker.RoutingExtension"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def find_routers(model: torch.nn.Module) -> dict[int, tuple[str, object]]:
    """``{layer: (module name, router)}`` of every vLLM MoE layer: modules holding a ``router``
    with ``select_experts`` (vLLM's fused-MoE runner), numbered by their ``layers.<i>.`` path."""
    found: dict[int, tuple[str, object]] = {}
    for name, module in model.named_modules():
        router = getattr(module, "router", None)
        if router is None or not callable(getattr(router, "select_experts", None)):
            continue
        match = _LAYER.search(name)
        if match is None:
            continue
        found.setdefault(int(match.group(1)), (name, router))
    return dict(sorted(found.items()))


def _selection_bias(model: torch.nn.Module, name: str, router) -> torch.Tensor | None:
    """The layer's per-expert selection bias (``e_score_correction_bias``), where vLLM keeps it."""
    bias = getattr(router, "e_score_correction_bias", None)
    if isinstance(bias, torch.Tensor):
        return bias.detach().reshape(-1)
    block = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    for sub_name, tensor in list(block.named_parameters()) + list(block.named_buffers()):
        if sub_name.endswith("e_score_correction_bias"):
            return tensor.detach().reshape(-1)
    return None


class RoutingExtension:
    """Methods vLLM mixes into its worker class; the driver calls them by name."""

    # -- setup ---------------------------------------------------------------------------
    def wb_setup(self, payload: bytes) -> bytes:
        """Find the MoE routers, check them against the pickled :class:`~workbench.engine.decide.RoutingFacts` and keep them
        (nothing installed)."""
        (facts,) = pickle.loads(payload)
        model = self.model_runner.get_model()
        routers = find_routers(model)
        held = [layer for layer in facts.moe_layers if layer in routers]  # a pipeline stage holds some
        self._wb = {"facts": facts, "routers": {layer: routers[layer] for layer in held},
                    "bias": {layer: _selection_bias(model, *routers[layer]) for layer in held},
                    "scale": {layer: _output_scale(model, routers[layer][0]) for layer in held},
                    "frames": (), "capture": None, "steps": [], "step": None, "installed": [], "hook": None}
        return pickle.dumps({"routers": {layer: type(routers[layer][1]).__name__ for layer in held},
                             "model": type(model).__name__})

    # -- a call's edits and recording ----------------------------------------------------------
    def wb_begin(self, payload: bytes) -> None:
        """Put ``frames`` (tuples of specs) in force and start recording ``capture``
        (``{"layers": [...], "scores": bool}``) or nothing, both pickled in ``payload``; hooks are
        installed only when needed."""
        frames, capture = pickle.loads(payload)
        state = self._wb
        state["frames"], state["capture"], state["steps"], state["step"] = tuple(frames), capture, [], None
        if (frames or capture) and not state["installed"]:
            self._wb_install()

    def wb_end(self) -> bytes:
        """Stop: remove every hook (the engine routes exactly as before) and return what was recorded
        (pickled: a list of units, or None)."""
        state = self._wb
        steps = state["steps"]
        capture = state["capture"]
        state["frames"], state["capture"], state["steps"], state["step"] = (), None, [], None
        self._wb_remove()
        return pickle.dumps(None if capture is None else _by_unit(steps))

    def wb_installed(self) -> int:
        """How many wrappers and hooks are installed (0 between calls)."""
        return len(self._wb["installed"]) + (self._wb["hook"] is not None)

    def _wb_install(self) -> None:
        state = self._wb
        try:
            for layer, (_, router) in state["routers"].items():
                if "select_experts" in vars(router):
                    raise RuntimeError(f"layer {layer}: the router's select_experts is already wrapped")
                original = router.select_experts
                router.select_experts = self._wb_wrap(layer, original)
                state["installed"].append(router)
            state["hook"] = self.model_runner.get_model().register_forward_pre_hook(self._wb_step_hook,
                                                                                     with_kwargs=True)
        except BaseException:
            self._wb_remove()
            raise

    def _wb_remove(self) -> None:
        state = self._wb
        while state["installed"]:
            router = state["installed"].pop()
            vars(router).pop("select_experts", None)
        if state["hook"] is not None:
            state["hook"].remove()
            state["hook"] = None

    # -- hooks -----------------------------------------------------------------------------
    def _wb_step_hook(self, module, args, kwargs):
        """Before each forward: which request every flattened token belongs to."""
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = int(batch.num_reqs)
        if num_reqs == 0:
            self._wb["step"] = None
            return None
        req_ids = list(batch.req_ids[:num_reqs])
        starts = np.asarray(runner.query_start_loc.np[:num_reqs + 1], dtype=np.int64).copy()
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        total = int(starts[-1])
        if positions is not None and positions.dim() == 2:  # M-RoPE: [3, T]; the first row counts tokens
            positions = positions[0]
        units, rows = [], []
        for rid in req_ids:
            extra = (runner.requests[rid].sampling_params.extra_args or {}) if rid in runner.requests else {}
            units.append(int(extra.get("wb_unit", -1)))
            rows.append(int(extra.get("wb_row", -1)))
        counts = np.diff(starts)
        step = {"units": np.repeat(np.asarray(units, dtype=np.int64), counts),
                "rows": torch.from_numpy(np.repeat(np.asarray(rows, dtype=np.int64), counts)),
                "total": total,
                # copies: the runner reuses its input buffers at the next step (and on the CPU .to() is no copy)
                "positions": None if positions is None else positions[:total].detach().to("cpu", torch.long).clone(),
                "ids": None if input_ids is None else input_ids[:total].detach().to("cpu", torch.long).clone(),
                "layers": {}, "nonfinite": []}
        self._wb["step"] = step
        if self._wb["capture"] is not None:
            self._wb["steps"].append(step)
        return None

    def _wb_wrap(self, layer: int, original):
        state = self._wb
        facts = state["facts"]

        def select_experts(hidden_states, router_logits, topk_indices_dtype=None, **kwargs):
            weights, ids = original(hidden_states, router_logits, topk_indices_dtype, **kwargs)
            step = state["step"]
            capture = state["capture"]
            recording = capture is not None and step is not None and layer in capture["layers"]
            if not state["frames"] and not recording:
                return weights, ids
            total = ids.shape[0] if step is None else min(step["total"], ids.shape[0])
            scale = state["scale"][layer]  # vLLM may scale the experts' output, not their weights
            native = Decision(ids.long(), weights.float() * scale if scale != 1.0 else weights.float(),
                              torch.ones_like(ids, dtype=torch.bool))
            logits = router_logits.float()
            rows = positions = None
            if step is not None:
                pad = ids.shape[0] - total  # padded tokens take row -1 and position 0
                rows = torch.nn.functional.pad(step["rows"][:total], (0, pad), value=-1).to(ids.device)
                if step["positions"] is not None:
                    positions = torch.nn.functional.pad(step["positions"][:total], (0, pad)).to(ids.device)
            decision, changed = engine_decide(facts, state["frames"], layer, logits, native, rows=rows,
                                              bias=state["bias"][layer], positions=positions)
            if recording:
                _keep(step, layer, decision, logits[:total] if capture["scores"] else None, total)
            if not changed:
                return weights, ids
            return _engine_format(decision, weights, ids, scale)
        return select_experts


def _output_scale(model: torch.nn.Module, runner_name: str) -> float:
    """The factor vLLM's fused-MoE runner multiplies the routed experts' output by
    (``routed_scaling_factor``, DeepSeek); the weights the experts received are vLLM's weights times it."""
    scale = getattr(model.get_submodule(runner_name), "routed_scaling_factor", 1.0)
    return float(scale) if isinstance(scale, (int, float)) and scale else 1.0


def _engine_format(decision: Decision, weights: torch.Tensor, ids: torch.Tensor, scale: float = 1.0):
    """``(weights, ids)`` of ``decision`` in the engine's dtypes, number of slots and weight unit
    (divided by the runner's output ``scale``; empty slots padded with weight 0; an edit asking for
    more slots than the engine's top-k is refused at entry)."""
    k = ids.shape[1]
    idx, w = decision.idx, decision.w if scale == 1.0 else decision.w / scale
    if idx.shape[1] < k:
        n, pad = idx.shape[0], k - idx.shape[1]
        idx = torch.cat([idx, idx[:, :1].expand(n, pad)], dim=1)
        w = torch.cat([w, torch.zeros(n, pad, dtype=w.dtype, device=w.device)], dim=1)
    elif idx.shape[1] > k:
        raise RuntimeError(f"an edit routed {idx.shape[1]} experts per token; vLLM's layer computes {k}")
    return w.to(weights.dtype).contiguous(), idx.to(ids.dtype).contiguous()


def _keep(step: dict, layer: int, decision: Decision, logits, total: int) -> None:
    """Keep the decision of the step's real tokens: ids (-1 in empty slots) and weights, heaviest first."""
    idx, w, valid = in_rank_order(decision.idx[:total], decision.w[:total].float(), decision.valid[:total])
    w = torch.where(valid, w, torch.zeros_like(w))
    if not bool(torch.isfinite(w).all()) or (logits is not None and not bool(torch.isfinite(logits).all())):
        step["nonfinite"].append(layer)
    step["layers"][layer] = (torch.where(valid, idx, torch.full_like(idx, -1)).to("cpu", torch.int16),
                             w.to("cpu", torch.float32).clone(),
                             None if logits is None else logits.to("cpu", torch.float16).clone())


def _by_unit(steps: list[dict]) -> list[dict]:
    """The recorded steps regrouped per request unit: ``{"unit", "positions", "token_ids", "layers":
    {layer: (idx [T, k], w [T, k], scores [T, E] or None)}, "nonfinite": [layers]}``, tokens in
    position order."""
    pieces: dict[int, list] = {}
    for step in steps:
        units = step["units"]
        for unit in np.unique(units):
            if unit < 0:
                continue
            sel = np.nonzero(units == unit)[0]
            pieces.setdefault(int(unit), []).append((step, torch.from_numpy(sel)))
    out = []
    for unit, parts in sorted(pieces.items()):
        positions = torch.cat([s["positions"][sel] for s, sel in parts])
        order = torch.argsort(positions, stable=True)
        layers = {}
        for layer in parts[0][0]["layers"]:
            idx = torch.cat([s["layers"][layer][0][sel] for s, sel in parts])[order]
            w = torch.cat([s["layers"][layer][1][sel] for s, sel in parts])[order]
            sc = parts[0][0]["layers"][layer][2]
            sc = None if sc is None else torch.cat([s["layers"][layer][2][sel] for s, sel in parts])[order]
            layers[layer] = (idx.numpy(), w.numpy(), None if sc is None else sc.numpy())
        out.append({"unit": unit, "positions": positions[order].numpy(),
                    "token_ids": torch.cat([s["ids"][sel] for s, sel in parts])[order].numpy(),
                    "layers": layers, "nonfinite": sorted({x for s, _ in parts for x in s["nonfinite"]})})
    return out
