"""Recording a corpus into a trace: in memory (:class:`~workbench.trace.RoutingTrace`) or on disk.

Texts are tokenised in full and split into chunks of at most ``max_length`` tokens (never silently
truncated); chunks are batched with right padding and padding is excluded from the trace. With
``out``, every batch is written as one Parquet shard of a store (:mod:`workbench.store`) as it
completes and nothing is kept in memory: an interrupted run started again with the same arguments
resumes after the last finished shard and yields exactly the uninterrupted store. On a GPU the
routing of a batch is gathered on the device and copied to the host in one asynchronous copy, written
while the next batch runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.probes.seams import in_rank_order
from workbench.store.layout import label_json
from workbench.trace import RoutingTrace, partial_token_bytes


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


def check_text(text: str, i: int) -> None:
    """Refuse text ``i`` when it holds a NUL character or a lone surrogate (saying where)."""
    at = text.find("\0")
    if at >= 0:
        raise ValueError(f"text {i} contains a NUL character at position {at}; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text {i} contains a lone surrogate ({text[err.start]!r}) at position {err.start}, "
                         "which is not valid Unicode; decode the source with errors='replace'") from None


def _default_max_length(lm) -> int:
    candidates = [getattr(lm.config, "max_position_embeddings", None),
                  getattr(lm.tokenizer, "model_max_length", None), 2048]
    return int(min(c for c in candidates if isinstance(c, int) and c > 0))


def _fingerprint_inputs(texts, labels, params) -> str:
    """A key of the inputs that differs whenever they differ (``1`` vs ``"1"``, separators in texts)."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for text, label in zip(texts, labels):
        item = json.dumps([text, label_json(label)], ensure_ascii=False).encode("utf-8", "surrogatepass")
        h.update(len(item).to_bytes(8, "little") + item)
    return h.hexdigest()[:32]


def record(lm, texts, labels=None, *, batch_size: int = 8, max_length: int | None = None,
           scores: bool = False, layers=None, out=None, progress: bool = True,
           add_special_tokens: bool = True, max_new_tokens: int = 0):
    """Record which experts every token is routed to.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        texts: list of strings (one document each).
        labels: optional list of labels (e.g. domains), one per text.
        batch_size: chunks per forward pass.
        max_length: chunk length in tokens (default: the model's context, at most 2048).
        scores: also keep the full ``[L, T, E]`` router logits (float16).
        layers: decoder-layer indices to record (default: every MoE layer).
        out: a folder: the recording is written there as a store, one Parquet shard per batch, with no
            routing kept in memory; run again with the same arguments it resumes an interrupted
            recording (or opens the finished one). Corpus-scale traces should always use it.
        progress: show a progress bar.
        add_special_tokens: let the tokenizer add its special tokens (e.g. BOS).
        max_new_tokens: also record this many greedily generated tokens after each text (under the
            edits in force; end-of-sequence does not stop generation). Each text and its continuation
            must fit in one chunk of ``max_length`` tokens. Generated tokens follow the prompt's
            positions; ``meta["prompt_tokens"]`` gives each document's prompt length.

    Returns:
        A :class:`~workbench.trace.RoutingTrace` (in memory), or with ``out`` the
        :class:`~workbench.store.StoredTrace` of the store (opened lazily). Active
        :func:`~workbench.edit` blocks apply: what is recorded is the routing the model actually used.

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
        check_text(text, i)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 1):
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a list with one label per text, not one string (e.g. [label] * len(texts))")
    labels = [None] * len(texts) if labels is None else list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    layers = list(lm.moe_layers) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    context = getattr(lm.config, "max_position_embeddings", None)
    if max_length is not None and isinstance(context, int) and max_length > context:
        raise ValueError(f"max_length={max_length} is longer than the model's context ({context} positions); "
                         "longer texts are split into chunks of at most max_length tokens, so choose "
                         f"max_length <= {context}")
    max_length = max_length or _default_max_length(lm)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    params = {"fingerprint": lm.fingerprint, "max_length": max_length, "scores": scores, "layers": layers,
              "add_special_tokens": add_special_tokens, "max_new_tokens": max_new_tokens, "edits": [repr(f) for f in lm.probes.edit_frames]}
    key = _fingerprint_inputs(texts, labels, params)
    meta = {"model": lm.name, "adapter": lm.adapter.name, "top_k": lm.top_k, "max_length": max_length,
            "edits": params["edits"], "input_key": key, "scores_unit": lm.adapter.router_output,
            "weights_unit": "the routing weights the experts received", "layer_names": lm.layer_names,
            "routed_experts": lm.num_routed_experts}

    if out is not None and _finished(Path(out), key):
        from workbench.store import open_trace
        return open_trace(out)
    units = _units(lm, texts, max_length, add_special_tokens)
    collector = _Collector(layers)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if max_new_tokens:
        units = _with_continuations(lm, units, max_new_tokens, max_length, batch_size, pad_id, progress)
        meta["max_new_tokens"] = max_new_tokens
        meta["prompt_tokens"] = [len(u[2]) - max_new_tokens for u in units]
    meta["token_bytes"] = partial_token_bytes(lm.tokenizer, np.concatenate([np.asarray(u[2]) for u in units]))
    if out is not None:
        return _record_to_store(lm, Path(out), units, labels, layers, key, meta, scores, batch_size, collector,
                                pad_id, progress)
    shards = []
    bar = tqdm(total=sum(len(u[2]) for u in units), desc="recording", unit="tok", disable=not progress)
    lm.probes.add_listener(collector)
    try:
        for start in range(0, len(units), batch_size):
            batch = units[start:start + batch_size]
            shards.append(_host_arrays(_run_batch(lm, batch, collector, layers, pad_id, scores)))
            bar.update(sum(len(u[2]) for u in batch))
    finally:
        lm.probes.remove_listener(collector)
        bar.close()
    return _merge(shards, lm, layers, labels, meta, scores, _token_text(lm, units))


def _record_to_store(lm, out, units, labels, layers, key, meta, scores, batch_size, collector, pad_id, progress):
    from workbench.store import open_trace
    from workbench.store.writer import StoreWriter

    tokens_per_doc = np.zeros(len(labels), dtype=np.int64)
    for doc, _, ids in units:
        tokens_per_doc[doc] += len(ids)
    header = {"fingerprint": lm.fingerprint, "layers": layers, "num_experts": lm.num_experts, "k": lm.top_k,
              "scores": bool(scores), "meta": meta, "batch_size": batch_size, "units": len(units)}
    writer = StoreWriter(out, key=key, header=header, labels=labels, tokens_per_doc=tokens_per_doc)
    try:
        if not writer.complete:
            if writer.batch_size not in (None, batch_size):
                warnings.warn(f"{out} was started with batch_size={writer.batch_size}; resuming with it so "
                              "that the store equals an uninterrupted recording", stacklevel=3)
                batch_size = writer.batch_size
            done = writer.done_units
            bar = tqdm(total=int(tokens_per_doc.sum()), desc="recording", unit="tok", disable=not progress)
            bar.update(sum(len(u[2]) for u in units[:done]))
            pending = None
            lm.probes.add_listener(collector)
            try:
                for start in range(done, len(units), batch_size):
                    batch = units[start:start + batch_size]
                    captured = _run_batch(lm, batch, collector, layers, pad_id, scores)
                    if pending is not None:  # written while this batch's forward runs on the device
                        finished, pending = pending, None
                        _write(writer, *finished)
                    pending = (start, batch, captured)
                    bar.update(sum(len(u[2]) for u in batch))
            finally:
                lm.probes.remove_listener(collector)
                bar.close()
                if pending is not None:  # a batch that finished is kept, even when a later one failed
                    _write(writer, *pending)
            writer.finish(_token_text(lm, units))
    finally:
        writer.close()
    return open_trace(out)


def _with_continuations(lm, units, new_tokens, max_length, batch_size, pad_id, progress):
    from workbench.probes.continuation import continue_units

    chunks = Counter(u[0] for u in units)
    for doc, _, ids in units:
        if chunks[doc] > 1 or len(ids) + new_tokens > max_length:
            raise ValueError(f"text {doc} has {len(ids)} tokens: with max_new_tokens={new_tokens} it does not fit in "
                             f"one chunk of max_length={max_length} tokens; shorten the text or raise max_length")
    return continue_units(lm, units, new_tokens, batch_size, pad_id, progress)


def _finished(out: Path, key: str) -> bool:
    """Whether ``out`` holds the finished store of exactly these inputs."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    leftovers = (out / ".lock").exists() or (out / "shards.jsonl").exists()  # a writer killed while finishing
    return bool(manifest.get("complete")) and manifest.get("input_key") == key and not leftovers


def _write(writer, start, batch, captured) -> None:
    idx, w, sc, docs, pos, token_ids = _host_arrays(captured)
    writer.add_shard((start, start + len(batch)), docs, pos, token_ids, idx, w, sc)


def _token_text(lm, units) -> dict:
    ids = np.unique(np.concatenate([np.asarray(u[2], dtype=np.int64) for u in units]))
    return {int(t): lm.tokenizer.decode([int(t)]) for t in ids}


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
def _run_batch(lm, batch, collector, layers, pad_id, want_scores) -> dict:
    """Run one batch; its routing gathered on the device, with one asynchronous copy to the host started."""
    if hasattr(lm, "run_units"):  # a serving engine (workbench.engine) runs and records the batch itself
        return lm.run_units(batch, layers, want_scores)
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
        idx_l.append(torch.where(valid, idx, torch.full_like(idx, -1))[keep_d].to(torch.int16))
        w_l.append(torch.where(valid, w.float(), torch.zeros_like(w, dtype=torch.float32))[keep_d])
        if want_scores:
            sc_l.append(logits.float()[keep_d].to(torch.float16))
    _check_numbers(layers, collector, keep, w_l, batch)
    k = max(a.shape[1] for a in idx_l)
    device = idx_l[0].device
    idx_all = torch.stack([torch.nn.functional.pad(a.to(device), (0, k - a.shape[1]), value=-1) for a in idx_l])
    w_all = torch.stack([torch.nn.functional.pad(a.to(device), (0, k - a.shape[1])) for a in w_l])
    tensors = {"idx": idx_all, "w": w_all}
    if want_scores:
        tensors["scores"] = torch.stack([a.to(device) for a in sc_l])
    if device.type == "cuda":  # one bulk, asynchronous copy per batch into pinned memory
        host = {}
        for name, t in tensors.items():
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t, non_blocking=True)
            host[name] = buf
        event = torch.cuda.Event()
        event.record()
        tensors = dict(host, event=event)
    docs = np.concatenate([np.full(len(u[2]), u[0]) for u in batch])
    pos = np.concatenate([np.arange(u[1], u[1] + len(u[2])) for u in batch])
    token_ids = np.concatenate([np.asarray(u[2]) for u in batch])
    return dict(tensors, docs=docs, pos=pos, token_ids=token_ids)


def _check_numbers(layers, collector, keep, w_l, batch) -> None:
    """Raise, naming the layer, document and position, when router scores or weights are NaN or inf."""
    for layer, w in zip(layers, w_l):
        logits = collector.calls[layer][0]
        for what, values in (("router scores", logits[keep.to(logits.device)]), ("routing weights", w)):
            finite = torch.isfinite(values.float()).reshape(values.shape[0], -1).all(dim=1)
            if not bool(finite.all()):
                t = int((~finite).nonzero()[0, 0])
                starts = np.cumsum([0] + [len(u[2]) for u in batch])
                unit = int(np.searchsorted(starts, t, side="right") - 1)
                doc, start, _ = batch[unit]
                raise FloatingPointError(
                    f"layer {layer}: the {what} of document {doc}, token {start + t - starts[unit]} are not "
                    "finite (NaN or inf); the model's activations overflowed or are NaN (try float32 or "
                    "bfloat16 instead of float16); nothing of this batch was recorded")


def _host_arrays(captured: dict):
    """``(idx, w, scores or None, docs, pos, token_ids)`` as numpy, waiting for the copy if needed."""
    if "event" in captured:
        captured["event"].synchronize()
    sc = captured.get("scores")
    return (captured["idx"].numpy(), captured["w"].numpy(), None if sc is None else sc.numpy(),
            captured["docs"], captured["pos"], captured["token_ids"])


def _merge(shards, lm, layers, labels, meta, want_scores, token_text) -> RoutingTrace:
    k = max(s[0].shape[2] for s in shards)

    def cat(i, fill):
        parts = [s[i] for s in shards]
        if parts[0].ndim == 3 and i < 2:
            parts = [np.pad(p, ((0, 0), (0, 0), (0, k - p.shape[2])), constant_values=fill) for p in parts]
        return np.concatenate(parts, axis=1 if parts[0].ndim == 3 else 0)

    return RoutingTrace(cat(0, -1), cat(1, 0.0), cat(5, 0), cat(3, 0), cat(4, 0), layers, lm.num_experts,
                        lm.fingerprint, token_text=token_text, doc_labels=labels,
                        scores=cat(2, 0.0) if want_scores else None, meta=meta)
