"""Layer caches over calibration *units* that are already token ids (the stream blocks of
``preset="lu2024"``), with the replay engine's own steps.

:func:`workbench.replay.capture` tokenises texts and chunks each document; a stream block mixes
documents, so here the units come in as ``(unit, start, ids)`` and the same per-layer steps run on
them (the layer's inputs, outputs and routing, the routing-independent part, every expert's output).
Each unit is its own "document" in the cache (``doc`` = unit index, ``pos`` = position in the unit),
and ``meta["max_length"]`` is the unit length, so :func:`~workbench.pruning.calibration.cache_batches`
groups ``batch_size`` consecutive units into one term of the loss, as the reference's loader does.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.pruning.unit_capture import capture_units
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> caches = capture_units(lm, [(0, 0, [5, 6, 7, 8]), (1, 0, [9, 10, 11, 12])], progress=False)
    >>> caches[0].doc.tolist(), tuple(caches[0].expert_out.shape)
    ([0, 0, 0, 0, 1, 1, 1, 1], (8, 8, 32))
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from workbench.replay.cache import LayerCache, LayerCaches, rule_dict
from workbench.replay.capture import _run_layer, expert_columns, pad_id, shared_part


def capture_units(lm, units, *, batch_size: int = 8, progress: bool = True, backend: str | None = None,
                  texts: int | None = None) -> LayerCaches:
    """In-memory layer caches of every MoE layer over ``units``, every expert's output cached.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        units: ``(unit, start, ids)`` triples, in order; all but a last short one of equal length.
        batch_size: units per forward pass (and per loss term).
        progress: show a progress bar.
        backend: kernel backend for the expert outputs.
        texts: how many documents the units came from (kept in the caches' meta).

    Returns:
        :class:`~workbench.replay.cache.LayerCaches`.
    """
    units = list(units)
    if not units:
        raise ValueError("no calibration units: the calibration text gave no tokens")
    if lm.probes.edit_frames:
        raise RuntimeError("capture records the model's own routing; leave the active wb.edit blocks first")
    layers = list(lm.moe_layers)
    meta = {"fingerprint": lm.fingerprint, "model": lm.name, "family": lm.adapter.name,
            "num_experts": lm.num_experts, "top_k": lm.top_k, "rule": rule_dict(lm.rule),
            "scale_input": lm.adapter.router_io == "scores_logits", "dtype": str(next(lm.model.parameters()).dtype),
            "texts": texts if texts is not None else len(units), "max_length": max(len(u[2]) for u in units),
            "units": "stream blocks"}
    docs = torch.cat([torch.full((len(u[2]),), u[0]) for u in units])
    pos = torch.cat([torch.arange(u[1], u[1] + len(u[2])) for u in units])
    token_ids = torch.cat([torch.tensor(u[2]) for u in units])
    items = {}
    bar = tqdm(total=int(token_ids.numel()) * len(layers), desc="capturing", unit="tok", disable=not progress)
    try:
        for layer in layers:
            got = _run_layer(lm, layer, units, batch_size, pad_id(lm), bar)
            bias = lm.selection_bias(layer)
            outputs, cand = expert_columns(lm, layer, got["x"], got["logits"], lm.num_experts, backend)
            items[layer] = LayerCache(layer, got["x"], got["logits"], got["y"], shared_part(lm, layer, got["x"]),
                                      got["idx"], got["w"], token_ids, docs, pos, dict(meta), expert_out=outputs,
                                      candidates=cand, bias=None if bias is None else bias.detach().float().cpu())
    finally:
        bar.close()
    return LayerCaches(layers, items=items, meta=meta)
