"""The coverage matrix, computed: every MoE model type in the installed transformers, checked.

For each type of :func:`~workbench.families.build.candidate_model_types` a tiny random model is
built from the type's own config class (:func:`~workbench.families.build.build_tiny`; nothing is
downloaded) and wrapped. Then, against hooks of its own on the experts call:

* **recorded** — what a recording sees equals the ``(idx, w)`` every MoE layer's experts received
  (ids exact, weights bit for bit);
* **edits** — under each of ``Mask`` (both modes), ``Force``, ``KeepRank``, ``TopK``, ``TopP`` and
  ``Skip`` the experts receive exactly (bit for bit) what the family's identified rule gives for
  that edit; ``TopK`` is also compared with the model's own router run at the larger top-k, an
  independent check of the rule (same experts, weights to 1e-5 relative: the router may sum in
  another order); after each edit the model's logits and parameters are bit-identical to before;
* **pruning** — a pruned checkpoint is written and reloaded by plain transformers with the logits of
  the equivalent ``Mask`` edit, or refused with a reason.

A type is ``exact`` when recording and every edit are exact. ``python -m workbench families``
prints the matrix and ``--write`` publishes it (``workbench/families/coverage.csv`` and the table in
``docs/supported_models.md``).

Example:
    >>> from workbench.families.coverage import check_type
    >>> row = check_type("mixtral")
    >>> row["status"], row["recorded"], row["edits"]
    ('exact', 'exact', 'exact')
"""

from __future__ import annotations

import tempfile
import time
import warnings

import torch

from workbench.families.matrix import FIELDS
from workbench.probes import seams

EDIT_NAMES = ("Mask", "Mask-empty", "Force", "KeepRank", "TopK", "TopP", "Skip")


class _ExpertsTap:
    """Hooks of the check's own: the router logits and the ``(idx, w)`` the experts received — read
    at the experts call, or, for the registered families whose experts take no routing arguments
    (Llama-4, JetMoE), from the router output the block consumes."""

    def __init__(self, lm):
        self.lm, self.calls, self.logits, self.handles = lm, {}, {}, []
        self.at_experts = seams.at_experts(lm.adapter.router_io)

    def __enter__(self):
        for layer in self.lm.moe_layers:
            if self.at_experts:
                self.handles.append(self.lm.experts(layer).register_forward_pre_hook(self._experts(layer), with_kwargs=True))
            self.handles.append(self.lm.router(layer).register_forward_hook(self._router(layer)))
        return self

    def _experts(self, layer):
        def hook(module, args, kwargs):
            _, idx_arg, w_arg = seams.experts_call_args(args, kwargs)
            idx, w = seams.from_experts_args(self.lm.adapter.router_io, idx_arg, w_arg)
            self.calls[layer] = (idx.detach().long().clone(), w.detach().clone())
        return hook

    def _router(self, layer):
        def hook(module, args, out):
            io = self.lm.adapter.router_io
            logits, idx, w = seams.unpack(io, out, self.lm.num_experts, self.lm.top_k)
            if io == "scores_logits":  # the experts see the dense scores: their nonzero entries
                w, idx = out[0].topk(max(self.lm.top_k, int((out[0] != 0).sum(-1).max())), dim=-1)
            self.logits[layer] = logits.detach().reshape(-1, logits.shape[-1]).float().clone()
            if not self.at_experts:
                self.calls[layer] = (idx.detach().long().clone(), w.detach().clone())
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def _by_expert(idx: torch.Tensor, w: torch.Tensor, valid: torch.Tensor | None = None):
    """Slots sorted by expert id with empty slots as ``(-1, 0)``: an order-free form to compare."""
    if valid is not None:
        idx = torch.where(valid, idx, torch.full_like(idx, -1))
        w = torch.where(valid, w, torch.zeros_like(w))
    key = torch.where(w != 0, idx, torch.full_like(idx, -1))  # weight-0 slots do not compute
    order = torch.argsort(key * 4096 + torch.arange(idx.shape[1]), dim=1)
    return key.gather(1, order), w.gather(1, order)


def _same(a, b) -> bool:
    """Equal routings; a narrower one is widened with empty slots (hooks pad an edit to the model's k)."""
    width = max(a[0].shape[1], b[0].shape[1])

    def widen(x):
        pad = width - x[0].shape[1]
        if not pad:
            return x
        rows = x[0].shape[0]
        return (torch.cat([torch.full((rows, pad), -1, dtype=x[0].dtype), x[0]], dim=1),
                torch.cat([torch.zeros(rows, pad, dtype=x[1].dtype), x[1]], dim=1))
    a, b = widen(a), widen(b)
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _forward(lm, inputs):
    with torch.no_grad():
        out = lm.model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def check_recording(lm, inputs) -> str:
    """``"exact"`` when the recording listener sees what every experts call received."""
    seen = {}

    def listener(layer, logits, decision):
        seen[layer] = (decision.idx.detach().long().clone(), decision.w.detach().float().clone(),
                       decision.valid.clone() if decision.valid is not None else None)

    lm.probes.add_listener(listener)
    try:
        with _ExpertsTap(lm) as tap:
            _forward(lm, inputs)
    finally:
        lm.probes.remove_listener(listener)
    for layer in lm.moe_layers:
        if layer not in tap.calls or layer not in seen:
            return f"layer {layer} was not seen"
        idx, w, valid = seen[layer]
        got_idx, got_w = tap.calls[layer]
        if not _same(_by_expert(idx, w.to(got_w.dtype), valid), _by_expert(got_idx, got_w)):
            return f"layer {layer}: the trace differs from what the experts received"
    return "exact"


def _edit_specs(lm):
    import workbench as wb

    learned = [x for x in lm.moe_layers if x not in lm.hash_layers]
    layer = learned[0]
    e, k = lm.num_experts, lm.top_k
    return {
        "Mask": wb.Mask({layer: [0, 1]}),
        "Mask-empty": wb.Mask({layer: [0, 1]}, mode="empty"),
        "Force": wb.Force({layer: [e - 1]}),
        "KeepRank": wb.KeepRank(1, layers=[layer]),
        "TopK": wb.TopK(min(k + 1, e), layers=[layer]),
        "TopP": wb.TopP(0.5, layers=[layer]),
        "Skip": wb.Skip({layer: 0.5}),
    }


def check_edit(lm, name: str, spec, inputs, before: torch.Tensor, state: dict) -> str:
    """``"exact"`` when the edited experts calls equal the rule's routing and the model is restored."""
    import workbench as wb
    from workbench.kernels.routing import apply_plan

    with _ExpertsTap(lm) as tap, wb.edit(lm, spec):
        _forward(lm, inputs)
    for layer in lm.moe_layers:
        if layer in lm.hash_layers or not spec.applies_to(layer):
            continue
        plan = lm.probes.plan_for([spec], layer)
        d = apply_plan(tap.logits[layer], lm.rule, plan, lm.selection_bias(layer))
        got_idx, got_w = tap.calls[layer]  # weights cross the seam in the model's dtype
        if not _same(_by_expert(d.idx, d.w.to(got_w.dtype), d.valid), _by_expert(got_idx, got_w)):
            return f"{name}: layer {layer} experts received another routing than the rule gives"
    after = _forward(lm, inputs)
    if not torch.equal(before, after):
        return f"{name}: the model's output changed after the edit"
    if any(not torch.equal(v, state[n]) for n, v in lm.model.state_dict().items()):
        return f"{name}: a parameter changed"
    return "exact"


def check_topk_against_router(lm, inputs) -> str:
    """The ``TopK(k + 1)`` edit against the model's own router run with ``top_k = k + 1``."""
    import workbench as wb

    layers = [x for x in lm.moe_layers if x not in lm.hash_layers]
    routers = [lm.router(x) for x in layers]
    if (not all(isinstance(getattr(r, "top_k", None), int) for r in routers) or lm.top_k + 1 > lm.num_experts
            or lm.rule.scoring == "sparsemixer"):  # PhiMoE's sparsemixer is defined for its top-2 only
        return "n/a"
    saved = [r.top_k for r in routers]
    try:
        for r in routers:
            r.top_k = lm.top_k + 1
        with _ExpertsTap(lm) as native:
            _forward(lm, inputs)
    except (RuntimeError, ValueError):  # the block cannot run another top-k (sizes fixed at construction)
        return "n/a"
    finally:
        for r, k in zip(routers, saved):
            r.top_k = k
    with _ExpertsTap(lm) as edited, wb.edit(lm, wb.TopK(lm.top_k + 1, layers=layers)):
        _forward(lm, inputs)
    for layer in layers:
        (ids_a, w_a), (ids_b, w_b) = _by_expert(*native.calls[layer]), _by_expert(*edited.calls[layer])
        rel = float(((w_a.float() - w_b.float()).abs() / w_a.float().abs().clamp_min(1e-30)).max())
        if not torch.equal(ids_a, ids_b) or rel > 1e-5:  # a few ulps: the router may sum in another order
            return f"TopK: layer {layer} differs from the router's own top-{lm.top_k + 1} (weights {rel:.1e} relative)"
    return "exact"


def check_pruning(lm, inputs) -> str:
    """Write a pruned checkpoint and reload it with plain transformers (or say why not)."""
    import workbench as wb
    from workbench.pruning.slicing import UnsupportedPruning, prune_model, save_pruned
    from workbench.pruning.subsets import PruningConstraintError

    learned = [x for x in lm.moe_layers if x not in lm.hash_layers]
    if lm.hash_layers or lm.num_routed_experts < lm.num_experts:
        return "refused: hash-routed layers or null experts cannot be sliced"
    # drop one expert of each group (balanced groups), or experts 0 and 1 without groups
    size = lm.num_experts // lm.rule.n_group
    dropped = list(range(0, lm.num_experts, size)) if lm.rule.n_group > 1 else [0, 1]
    keep = [e for e in range(lm.num_experts) if e not in dropped]
    try:
        small = prune_model(lm, {layer: keep for layer in learned})
        with tempfile.TemporaryDirectory() as folder:
            save_pruned(small, folder, progress=False)
            plain = type(lm.model).from_pretrained(folder).eval()
            with wb.edit(lm, wb.Mask({layer: dropped for layer in learned})):
                expected = _forward(lm, inputs)
            got = _forward(wb.wrap(plain), inputs)
    except (UnsupportedPruning, PruningConstraintError) as err:
        return f"refused: {err}"
    except Exception as err:  # noqa: BLE001 - reported in the matrix
        return f"failed: {type(err).__name__}: {str(err)[:160]}"
    return "exact" if torch.allclose(got, expected, atol=1e-5, rtol=1e-4) else "failed: logits differ from the Mask edit"


def check_type(model_type: str, seed: int = 0, pruning: bool = True) -> dict:
    """One row of the matrix (see :data:`~workbench.families.matrix.FIELDS`)."""
    import workbench as wb
    from workbench.families.build import build_tiny, dummy_inputs, model_class_for, moe_block_names

    row = dict.fromkeys(FIELDS, "")
    row["model_type"] = model_type
    try:
        row["model_class"] = model_class_for(model_type).__name__
        model = build_tiny(model_type, seed=seed)
    except Exception as err:  # noqa: BLE001 - reported in the matrix
        return {**row, "status": "not built", "reason": f"tiny model: {type(err).__name__}: {str(err)[:200]}"}
    if not moe_block_names(model):
        return {**row, "status": "not moe", "reason": "the model has no routed-expert block"}
    try:
        lm = wb.wrap(model)
    except wb.UnsupportedModelError as err:
        return {**row, "status": "refused", "reason": str(err).split(". Supported model types")[0]}
    a = lm.adapter
    row.update(rule=lm.rule.describe(), adapter=a.origin, moe_layers=len(lm.moe_layers),
               experts=lm.num_experts, top_k=lm.top_k)
    inputs = dummy_inputs(model, seed=seed)
    row["recorded"] = check_recording(lm, inputs)
    before = _forward(lm, inputs)
    state = {n: v.clone() for n, v in lm.model.state_dict().items()}
    results = [check_edit(lm, name, spec, inputs, before, state) for name, spec in _edit_specs(lm).items()]
    results.append(check_topk_against_router(lm, inputs))
    failed = [r for r in results if r not in ("exact", "n/a")]
    row["edits"] = "exact" if not failed else failed[0]
    if pruning:
        row["pruning"] = check_pruning(lm, inputs)
    notes = [n for n in a.notes.split("; ") if n and not n.startswith("identified on the router")]
    row["reason"] = "; ".join(notes)
    row["status"] = "exact" if row["recorded"] == "exact" and row["edits"] == "exact" else "recorded only"
    return row


def compute_matrix(model_types=None, progress: bool = True, pruning: bool = True) -> list[dict]:
    """Rows for every candidate MoE type of the installed transformers (or ``model_types``)."""
    from tqdm.auto import tqdm

    from workbench.families.build import candidate_model_types

    types = list(model_types or candidate_model_types())
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mt in tqdm(types, desc="MoE types", disable=not progress):
            start = time.perf_counter()
            try:
                row = check_type(mt, pruning=pruning)
            except Exception as err:  # noqa: BLE001 - one broken type must not stop the matrix
                row = {**dict.fromkeys(FIELDS, ""), "model_type": mt, "status": "error",
                       "reason": f"{type(err).__name__}: {str(err)[:200]}"}
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
    return rows
