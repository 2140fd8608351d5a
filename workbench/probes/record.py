"""Recording a corpus into a :class:`~workbench.trace.RoutingTrace`.

Texts are tokenised in full and split into chunks of at most ``max_length`` tokens (never silently
truncated); chunks are batched with right padding and padding is excluded from the trace. With
``out``, every batch is written to ``out/shards/`` as it completes, so an interrupted run started
again with the same arguments resumes after the last written batch and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.probes.seams import in_rank_order
from workbench.trace import META_FILE, RoutingTrace, as_numpy


class _Collector:
    """Listener that keeps each layer's routing of the current forward pass."""

    def __init__(self, layers):
        self.layers = set(layers)
        self.calls: dict[int, tuple] = {}

    def __call__(self, layer, logits, decision):
        if layer in self.layers:
            self.calls[layer] = (logits.detach(), decision.idx, decision.w, decision.valid)


def _units(lm, texts, max_length: int, add_special_tokens: bool):
    """``(doc, start_pos, ids)`` chunks in document order."""
    units = []
    for doc, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if not ids:
            raise ValueError(f"text {doc} produced no tokens; remove it or give it content")
        for start in range(0, len(ids), max_length):
            units.append((doc, start, ids[start:start + max_length]))
    return units


def _default_max_length(lm) -> int:
    candidates = [getattr(lm.config, "max_position_embeddings", None),
                  getattr(lm.tokenizer, "model_max_length", None), 2048]
    return int(min(c for c in candidates if isinstance(c, int) and c > 0))


def _fingerprint_inputs(texts, labels, params) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for text, label in zip(texts, labels):
        h.update(text.encode())
        h.update(b"\0" + str(label).encode() + b"\0")
    return h.hexdigest()[:16]


def record(lm, texts, labels=None, *, batch_size: int = 8, max_length: int | None = None,
           scores: bool = False, layers=None, out=None, progress: bool = True,
           add_special_tokens: bool = True) -> RoutingTrace:
    """Record which experts every token is routed to.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        texts: list of strings (one document each).
        labels: optional list of labels (e.g. domains), one per text.
        batch_size: chunks per forward pass.
        max_length: chunk length in tokens (default: the model's context, at most 2048).
        scores: also keep the full ``[L, T, E]`` router logits (float16).
        layers: decoder-layer indices to record (default: every MoE layer).
        out: a directory; the recording is written there incrementally and resumed if interrupted.
        progress: show a progress bar.
        add_special_tokens: let the tokenizer add its special tokens (e.g. BOS).

    Returns:
        The :class:`~workbench.trace.RoutingTrace`. Active :func:`~workbench.edit` blocks apply:
        what is recorded is the routing the model actually used.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("olmoe"))
        >>> trace = wb.record(lm, ["one text", "and another"], labels=["a", "b"], progress=False)
        >>> trace.to_dataframe().groupby("label").doc.nunique().to_dict()
        {'a': 1, 'b': 1}
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to record")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(f"text {i} is empty; remove it or give it content")
    labels = [None] * len(texts) if labels is None else list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    layers = list(lm.moe_layers) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    max_length = max_length or _default_max_length(lm)
    params = {"fingerprint": lm.fingerprint, "max_length": max_length, "scores": scores, "layers": layers,
              "add_special_tokens": add_special_tokens, "edits": [repr(f) for f in lm.probes.edit_frames]}
    key = _fingerprint_inputs(texts, labels, params)
    meta = {"model": lm.name, "adapter": lm.adapter.name, "top_k": lm.top_k, "max_length": max_length,
            "edits": params["edits"], "input_key": key, "scores_unit": lm.adapter.router_output,
            "weights_unit": "the routing weights the experts received", "layer_names": lm.layer_names,
            "routed_experts": lm.num_routed_experts}

    out = Path(out) if out is not None else None
    done_units = 0
    if out is not None:
        done_units = _prepare_out(out, key)
        if done_units < 0:
            return RoutingTrace.load(out)

    units = _units(lm, texts, max_length, add_special_tokens)
    shards: list[RoutingTrace] = _load_shards(out) if out is not None else []
    collector = _Collector(layers)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=sum(len(u[2]) for u in units), desc="recording", unit="tok", disable=not progress)
    bar.update(sum(len(u[2]) for u in units[:done_units]))
    lm.probes.add_listener(collector)
    try:
        for start in range(done_units, len(units), batch_size):
            batch = units[start:start + batch_size]
            shard = _run_batch(lm, batch, collector, layers, pad_id, scores, meta)
            if out is not None:
                _write_shard(out, shard, start, start + len(batch))
            shards.append(shard)
            bar.update(sum(len(u[2]) for u in batch))
    finally:
        lm.probes.remove_listener(collector)
        bar.close()

    trace = _merge(shards, lm, layers, labels, meta, scores)
    if out is not None:
        trace.save(out)
        shutil.rmtree(out / "shards", ignore_errors=True)
    return trace


def pad_batch(batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``, ``[B, width]`` long, of ``(doc, start, ids)`` units, right-padded."""
    width = max(len(u[2]) for u in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (_, _, chunk) in enumerate(batch):
        ids[row, :len(chunk)] = torch.tensor(chunk)
        mask[row, :len(chunk)] = 1
    return ids, mask


@torch.no_grad()
def _run_batch(lm, batch, collector, layers, pad_id, want_scores, meta) -> RoutingTrace:
    ids, mask = pad_batch(batch, pad_id)
    collector.calls.clear()
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    # an encoder-decoder reads the text in its encoder and, teacher-forced, in its decoder: both
    # stacks' layers route the same tokens (lm.layer_names says which layer is which)
    extra = {"decoder_input_ids": ids, "decoder_attention_mask": mask} if lm.model.config.is_encoder_decoder else {}
    lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
    keep = mask.reshape(-1).bool()
    idx_l, w_l, sc_l = [], [], []
    for layer in layers:
        if layer not in collector.calls:
            raise RuntimeError(f"layer {layer}'s router was not called during the forward pass")
        logits, idx, w, valid = collector.calls[layer]
        idx, w, valid = in_rank_order(idx, w, valid)
        keep_d = keep.to(idx.device)
        idx_l.append(as_numpy(torch.where(valid, idx, torch.full_like(idx, -1))[keep_d]).astype(np.int16))
        w_l.append(as_numpy(torch.where(valid, w.float(), torch.zeros_like(w, dtype=torch.float32))[keep_d]))
        if want_scores:
            sc_l.append(as_numpy(logits.float()[keep_d]).astype(np.float16))
    k = max(a.shape[1] for a in idx_l)
    idx_arr = np.stack([np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=-1) for a in idx_l])
    w_arr = np.stack([np.pad(a, ((0, 0), (0, k - a.shape[1]))) for a in w_l])
    docs = np.concatenate([np.full(len(u[2]), u[0]) for u in batch])
    pos = np.concatenate([np.arange(u[1], u[1] + len(u[2])) for u in batch])
    token_ids = np.concatenate([np.asarray(u[2]) for u in batch])
    text = {int(t): lm.tokenizer.decode([int(t)]) for t in np.unique(token_ids)}
    return RoutingTrace(idx_arr, w_arr, token_ids, docs, pos, layers, lm.num_experts, lm.fingerprint,
                        token_text=text, scores=np.stack(sc_l) if want_scores else None, meta=meta)


def _merge(shards, lm, layers, labels, meta, want_scores) -> RoutingTrace:
    k = max(s.k for s in shards)

    def cat(name, fill):
        parts = [getattr(s, name) for s in shards]
        if parts[0].ndim == 3 and name != "scores":
            parts = [np.pad(p, ((0, 0), (0, 0), (0, k - p.shape[2])), constant_values=fill) for p in parts]
        return np.concatenate(parts, axis=1 if parts[0].ndim == 3 else 0)

    text = {}
    for s in shards:
        text.update(s.token_text)
    return RoutingTrace(cat("topk_idx", -1), cat("topk_w", 0.0), cat("token_ids", 0), cat("doc", 0),
                        cat("pos", 0), layers, lm.num_experts, lm.fingerprint, token_text=text,
                        doc_labels=labels, scores=cat("scores", 0.0) if want_scores else None, meta=meta)


def _prepare_out(out: Path, key: str) -> int:
    """Units already recorded in ``out`` (-1 = the whole recording is there)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "recording.json"
    if stamp.exists():
        previous = json.loads(stamp.read_text()).get("input_key")
        if previous != key:
            raise ValueError(f"{out} holds a recording of other texts, model or settings; "
                             "choose another directory or delete it")
        if (out / META_FILE).exists():
            return -1
    else:
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no recording; choose an empty directory")
        stamp.write_text(json.dumps({"input_key": key}))
    shards = sorted((out / "shards").glob("*-*")) if (out / "shards").exists() else []
    return max((int(p.name.split("-")[1]) for p in shards if (p / META_FILE).exists()), default=0)


def _write_shard(out: Path, shard: RoutingTrace, start: int, end: int) -> None:
    final = out / "shards" / f"{start:08d}-{end:08d}"
    tmp = out / "shards" / f".tmp-{start:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    shard.save(tmp)
    tmp.rename(final)


def _load_shards(out: Path) -> list[RoutingTrace]:
    folder = out / "shards"
    if not folder.exists():
        return []
    return [RoutingTrace.load(p) for p in sorted(folder.glob("*-*")) if (p / META_FILE).exists()]
