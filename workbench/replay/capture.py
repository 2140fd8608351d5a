"""Capturing layer caches over calibration text, one layer at a time.

For each chosen MoE layer the model runs over the texts and stops right after that layer's MoE block
(later layers are not computed); the block's inputs, router logits, outputs and routing are kept.
Then the routing-independent part of the block (shared experts, block biases) is computed by running
the block once more with every routing weight set to 0, and the candidate experts' own outputs by
the replay kernels. With ``out`` each layer is written to disk and dropped before the next one, so
memory holds one layer at a time; a size estimate is printed before a large capture.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> caches = capture(lm, ["one text", "and another"], progress=False)
    >>> caches.layers, tuple(caches[0].expert_out.shape)[1:]
    ([0, 1], (8, 32))
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from workbench.kernels.routing import Decision, route, scores
from workbench.probes import seams
from workbench.probes.record import pad_batch
from workbench.replay.cache import LayerCache, LayerCaches, estimate_bytes, human, layer_file, rule_dict

AUTO_ALL_EXPERTS = 32          # "auto" caches every expert's output up to this many experts
LARGE_BYTES = 256 * 2 ** 20    # a capture estimated above this prints its size even without progress
CHUNK_ELEMENTS = 1 << 24


class _Stop(Exception):
    """Raised after the captured layer's block: later layers need not run."""


def chunk_length(lm, max_length: int | None = None) -> int:
    """``max_length``, or by default the model's context, at most 2048 tokens."""
    limits = [getattr(lm.config, "max_position_embeddings", None), 2048]
    return int(max_length or min(v for v in limits if isinstance(v, int) and v > 0))


def _units(lm, texts, max_length: int, add_special_tokens: bool):
    """``(doc, start_pos, ids)`` chunks of at most ``max_length`` tokens, in document order."""
    units = []
    for doc, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {doc} is empty or not a string; give non-empty strings")
        ids = lm.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        units.extend((doc, s, ids[s:s + max_length]) for s in range(0, len(ids), max_length))
    return units


def pad_id(lm) -> int:
    return lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0


def padded_batches(units, batch_size: int, pad: int):
    """``(ids, mask)`` ``[B, width]`` long tensors of ``batch_size`` units at a time, right-padded."""
    for start in range(0, len(units), batch_size):
        yield pad_batch(units[start:start + batch_size], pad)


def _columns(lm, candidates) -> int:
    e = lm.num_experts
    if candidates == "auto":
        scale_input = lm.adapter.router_io == "scores_logits"
        return 0 if scale_input else (e if e <= AUTO_ALL_EXPERTS else min(e, 4 * lm.top_k))
    if candidates == "all":
        return e
    if candidates is None or candidates == 0:
        return 0
    if isinstance(candidates, int) and candidates > 0:
        return min(candidates, e)
    raise ValueError(f"candidates must be 'auto', 'all', None or a positive int, got {candidates!r}")


def _block_io(args, kwargs, output):
    x = args[0] if args else next(iter(kwargs.values()))
    y = output[0] if isinstance(output, tuple) else output
    return x, y


@torch.no_grad()
def _run_layer(lm, layer, units, batch_size, pad, bar):
    """Block inputs, outputs, logits and routing of ``layer`` for every unit (padding removed)."""
    got: dict[str, list] = {"x": [], "y": [], "logits": [], "idx": [], "w": []}
    seen = {}

    def block_hook(module, args, kwargs, output):
        seen["x"], seen["y"] = _block_io(args, kwargs, output)
        raise _Stop

    def listener(at, logits, decision):
        if at == layer:
            seen["logits"], seen["d"] = logits.detach(), decision

    handle = lm.block(layer).register_forward_hook(block_hook, with_kwargs=True)
    lm.probes.add_listener(listener)
    try:
        for ids, mask in padded_batches(units, batch_size, pad):
            seen.clear()
            try:
                lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
            except _Stop:
                pass
            if "d" not in seen or "x" not in seen:
                raise RuntimeError(f"layer {layer}'s MoE block or router was not called during the forward pass")
            keep = mask.reshape(-1).bool()
            got["x"].append(seen["x"].reshape(-1, seen["x"].shape[-1])[keep.to(seen["x"].device)].cpu())
            got["y"].append(seen["y"].reshape(-1, seen["y"].shape[-1])[keep.to(seen["y"].device)].cpu())
            got["logits"].append(seen["logits"].float()[keep.to(seen["logits"].device)].cpu())
            d = seen["d"]
            got["idx"].append(d.idx[keep.to(d.idx.device)].long().cpu())
            got["w"].append(torch.where(d.valid, d.w.float(), torch.zeros_like(d.w.float()))[keep.to(d.w.device)].cpu())
            if bar is not None:
                bar.update(int(keep.sum()))
    finally:
        handle.remove()
        lm.probes.remove_listener(listener)
    return {k: torch.cat(v) for k, v in got.items()}


@torch.no_grad()
def shared_part(lm, layer: int, x: torch.Tensor) -> torch.Tensor:
    """``[T, H]`` block output with every routing weight 0: shared experts and block-level terms."""
    io = lm.adapter.router_io
    e, k = lm.num_experts, lm.top_k

    def zero_router(module, args, out):
        _, idx, w = seams.unpack(io, out, e, k)
        return seams.pack(io, out, Decision(idx.long(), torch.zeros_like(w, dtype=torch.float32),
                                            torch.ones_like(idx, dtype=torch.bool)), e)

    if seams.at_experts(io):
        handle = lm.experts(layer).register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    else:
        handle = lm.router(layer).register_forward_hook(zero_router)
    parts = []
    try:
        step = max(1, CHUNK_ELEMENTS // max(1, x.shape[1]))
        for s in range(0, x.shape[0], step):
            chunk = x[s:s + step].to(lm.device)
            out = lm.block(layer)(chunk[None])
            out = out[0] if isinstance(out, tuple) else out
            parts.append(out.reshape(chunk.shape).to(x.device))
    finally:
        handle.remove()
    return torch.cat(parts)


@torch.no_grad()
def expert_columns(lm, layer: int, x: torch.Tensor, logits: torch.Tensor, columns: int, backend=None):
    """Each token's candidate experts' outputs ``[T, C, H]`` (weight 1), and ``candidates [T, C]``
    (None when every expert is cached). Candidates are the experts the family rule routes the token
    to, then the best others by the family's selection score (router logits for sparsemixer)."""
    from workbench.kernels.grouped import grouped_experts
    from workbench.probes.expert_outputs import expert_outputs
    from workbench.replay.weights import UnsupportedExperts, expert_weights

    e = lm.num_experts
    if columns >= e:
        cand = None
    else:
        bias = lm.selection_bias(layer)
        bias = None if bias is None else bias.detach().float().cpu()
        choice, _ = scores(logits, lm.rule, bias)
        if lm.rule.scoring == "sparsemixer":
            choice = logits.float()
        own = route(logits, lm.rule, min(lm.top_k, columns), bias).idx
        cand = torch.topk(choice.scatter(1, own, float("inf")), columns, dim=-1).indices
    try:
        ew = expert_weights(lm, layer)
    except UnsupportedExperts:
        ew = None
    parts = []
    step = max(1, CHUNK_ELEMENTS // max(1, columns * x.shape[1]))
    for s in range(0, x.shape[0], step):
        xc = x[s:s + step].to(lm.device)
        idx = (torch.arange(e).expand(xc.shape[0], e) if cand is None else cand[s:s + step]).to(lm.device)
        if ew is None:
            full = expert_outputs(lm, layer, xc)
            parts.append(full.gather(1, idx[:, :, None].expand(-1, -1, full.shape[-1])).cpu())
        else:
            ones = torch.ones(idx.shape, dtype=torch.float32, device=lm.device)
            parts.append(grouped_experts(xc, ew, idx, ones, reduce=False, backend=backend).cpu())
    return torch.cat(parts), cand


def capture(lm, texts, layers=None, *, candidates="auto", batch_size: int = 8, max_length: int | None = None,
            out=None, progress: bool = True, add_special_tokens: bool = True, backend: str | None = None
            ) -> LayerCaches:
    """Capture layer caches of ``lm`` over ``texts``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        texts: calibration texts (list of strings).
        layers: decoder-layer ids (default: every MoE layer).
        candidates: expert outputs to cache per token: ``"auto"`` (every expert up to 32 experts,
            else the best ``4k`` by router score; none for Llama-4, whose weights scale inputs),
            ``"all"``, an int ``C``, or None. The ``C`` candidates of a token are the ``k`` experts
            the family rule routes it to, then the best others by selection score.
        batch_size: chunks per forward pass.
        max_length: chunk length in tokens (default: the model's context, at most 2048).
        out: a folder; each layer is written there and dropped from memory before the next.
        progress: show a progress bar and the size estimate.
        add_special_tokens: let the tokenizer add its special tokens.
        backend: kernel backend for the expert outputs (see :mod:`workbench.kernels.dispatch`).

    Returns:
        :class:`~workbench.replay.cache.LayerCaches` (in memory, or backed by ``out``).
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    if lm.probes.edit_frames:
        raise RuntimeError("capture records the model's own routing; leave the active wb.edit blocks first")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one calibration text")
    layers = list(lm.moe_layers) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    max_length = chunk_length(lm, max_length)
    units = _units(lm, texts, max_length, add_special_tokens)
    num_tokens = sum(len(u[2]) for u in units)
    columns = _columns(lm, candidates)
    itemsize = next(lm.model.parameters()).element_size()
    per_layer = estimate_bytes(num_tokens, int(lm.config.hidden_size), lm.num_experts, lm.top_k, columns, itemsize)
    if progress or per_layer * len(layers) > LARGE_BYTES:
        where = f"written to {out}, one layer in memory at a time" if out is not None else "kept in memory"
        print(f"layer caches: {len(layers)} layer(s) x {num_tokens} tokens, {columns} expert outputs per token: "
              f"about {human(per_layer)} per layer, {human(per_layer * len(layers))} in all ({where})")
    pad = pad_id(lm)
    meta = {"fingerprint": lm.fingerprint, "model": lm.name, "family": lm.adapter.name,
            "num_experts": lm.num_experts, "top_k": lm.top_k, "rule": rule_dict(lm.rule),
            "scale_input": lm.adapter.router_io == "scores_logits", "dtype": str(next(lm.model.parameters()).dtype),
            "texts": len(texts), "max_length": max_length}
    docs = torch.cat([torch.full((len(u[2]),), u[0]) for u in units])
    pos = torch.cat([torch.arange(u[1], u[1] + len(u[2])) for u in units])
    token_ids = torch.cat([torch.tensor(u[2]) for u in units])
    items = {}
    bar = tqdm(total=num_tokens * len(layers), desc="capturing", unit="tok", disable=not progress)
    try:
        for layer in layers:
            got = _run_layer(lm, layer, units, batch_size, pad, bar)
            bias = lm.selection_bias(layer)
            Y, cand = (expert_columns(lm, layer, got["x"], got["logits"], columns, backend)
                       if columns else (None, None))
            cache = LayerCache(layer, got["x"], got["logits"], got["y"], shared_part(lm, layer, got["x"]),
                               got["idx"], got["w"], token_ids, docs, pos, dict(meta), expert_out=Y,
                               candidates=cand, bias=None if bias is None else bias.detach().float().cpu())
            if out is not None:
                cache.save(_folder(out) / layer_file(layer))
            else:
                items[layer] = cache
    finally:
        bar.close()
    caches = LayerCaches(layers, folder=out, items=items, meta=meta)
    if out is not None:
        caches.save(out)
    return caches


def _folder(out):
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
