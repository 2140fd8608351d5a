"""Which experts a label's (domain's) tokens and a token id's occurrences go to (OLMoE-style).

*Label specialisation*: for each layer, label and expert, the share of the label's tokens routed to
the expert (any of the ``k`` slots), against the uniform ``k/E``. One score per layer summarises it:
the mean over labels of the total-variation distance between a label's routing distribution and the
uniform one, divided by its largest possible value ``1 - k/E`` (0: every label is routed evenly;
1: each label's tokens all go to the same ``k`` experts). ``score_vs_corpus`` measures the distance
from the layer's overall distribution instead, so that load imbalance shared by all labels does not
count as specialisation.

*Vocabulary specialisation*: for each token id, the share of its occurrences routed to its most
frequent expert (1: always the same expert; ``k/E``: no preference).

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis import label_specialization, vocab_specialization
    >>> trace = wb.RoutingTrace(topk_idx=[[[0], [0], [1]]], topk_w=np.ones((1, 3, 1)),
    ...                         token_ids=[7, 7, 7], doc=[0, 0, 1], pos=[0, 1, 0], layers=[0],
    ...                         num_experts=2, fingerprint="x", doc_labels=["a", "b"])
    >>> label_specialization(trace)[["label", "expert", "tokens", "share", "ratio"]]
      label  expert  tokens  share  ratio
    0     a       0       2    1.0    2.0
    1     a       1       0    0.0    0.0
    2     b       0       0    0.0    0.0
    3     b       1       1    1.0    2.0
    >>> round(float(vocab_specialization(trace).top_share[0]), 3)
    0.667
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.analysis.counts import distinct_slots
from workbench.analysis.load import as_counts
from workbench.trace import is_stored


def label_specialization(trace) -> pd.DataFrame:
    """Share of each label's tokens routed to each expert, per layer.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` (or its
            :class:`~workbench.analysis.counts.TraceCounts`).

    Returns:
        One row per (layer, label, expert): ``tokens`` (the label's tokens with the expert in a
        slot), ``label_tokens``, ``share`` (``tokens / label_tokens``), ``uniform`` (``k/E``),
        ``ratio`` (``share / uniform``), ``corpus_share`` (the expert's share of all tokens) and
        ``lift`` (``share / corpus_share``; 0 where the expert got no token at all).
    """
    c = as_counts(trace)
    num_layers, groups, num_experts = c.label_counts.shape
    label_tokens = np.maximum(c.label_tokens, 1)[None, :, None]
    share = c.label_counts / label_tokens
    corpus = np.broadcast_to((c.counts / max(c.num_tokens, 1))[:, None, :], share.shape)
    lift = np.divide(share, corpus, out=np.zeros_like(share), where=corpus > 0)
    rows = num_layers * groups * num_experts
    return pd.DataFrame({
        "layer": np.repeat(np.asarray(c.trace.layers, dtype=np.int64), groups * num_experts),
        "label": np.tile(np.repeat(np.array(c.label_names, dtype=object), num_experts), num_layers),
        "expert": np.tile(np.arange(num_experts, dtype=np.int64), num_layers * groups),
        "tokens": c.label_counts.reshape(-1).astype(np.int64),
        "label_tokens": np.broadcast_to(c.label_tokens[None, :, None], share.shape).reshape(-1),
        "share": share.reshape(-1),
        "uniform": np.full(rows, c.uniform),
        "ratio": (share / c.uniform).reshape(-1),
        "corpus_share": corpus.reshape(-1),
        "lift": lift.reshape(-1),
    })


def specialization_scores(trace) -> pd.DataFrame:
    """One specialisation score per layer (see the module docstring).

    Returns:
        One row per layer: ``layer``, ``score`` (vs uniform, in [0, 1]), ``score_vs_corpus`` (mean
        total-variation distance between each label's and the layer's overall routing), ``labels``.
    """
    c = as_counts(trace)
    counts = c.label_counts.astype(np.float64)  # [L, G, E]
    present = c.label_tokens > 0
    totals = counts.sum(axis=2, keepdims=True)
    dist = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    overall = c.counts / np.maximum(c.counts.sum(axis=1, keepdims=True), 1)
    tv_uniform = 0.5 * np.abs(dist - 1.0 / c.num_experts).sum(axis=2)  # [L, G]
    tv_corpus = 0.5 * np.abs(dist - overall[:, None, :]).sum(axis=2)
    top = 1.0 - c.uniform
    score = np.clip(tv_uniform[:, present].mean(axis=1) / top, 0.0, 1.0) if top > 0 else \
        np.zeros(len(c.trace.layers))
    return pd.DataFrame({"layer": np.asarray(c.trace.layers, dtype=np.int64), "score": score,
                         "score_vs_corpus": tv_corpus[:, present].mean(axis=1),
                         "labels": int(present.sum())})


def vocab_specialization(trace, min_count: int = 1, top1: bool = False) -> pd.DataFrame:
    """For each token id, the share of its occurrences routed to its most frequent expert.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace`.
        min_count: leave out token ids with fewer occurrences.
        top1: count only the rank-0 (heaviest) slot instead of all ``k`` slots.

    Returns:
        One row per (layer, token id), sorted by layer, then most frequent token first:
        ``layer``, ``token_id``, ``token`` (text), ``count`` (occurrences), ``top_expert`` (lowest
        id on ties), ``top_count``, ``top_share`` (``top_count / count``), ``uniform`` (``k/E``, or
        ``1/E`` with ``top1``).
    """
    trace = getattr(trace, "trace", trace)
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if is_stored(trace):
        from workbench.store.analyses import stored_vocab_specialization
        return stored_vocab_specialization(trace, min_count, top1)
    num_experts = trace.num_experts
    uniq, inv, occ = np.unique(trace.token_ids, return_inverse=True, return_counts=True)
    keep = occ >= min_count
    idx = trace.topk_idx[:, :, :1] if top1 else distinct_slots(trace.topk_idx)  # an occurrence counts once
    frames = []
    for pos, layer in enumerate(trace.layers):
        slots = idx[pos].astype(np.int64)
        ok = slots >= 0
        flat = (inv[:, None] * num_experts + slots)[ok]
        table = np.bincount(flat, minlength=len(uniq) * num_experts).reshape(len(uniq), num_experts)
        top = table.argmax(axis=1)
        top_count = table[np.arange(len(uniq)), top]
        frames.append(pd.DataFrame({
            "layer": layer, "token_id": uniq[keep].astype(np.int64),
            "token": [trace.token_string(int(t)) for t in uniq[keep]],
            "count": occ[keep].astype(np.int64), "top_expert": top[keep].astype(np.int64),
            "top_count": top_count[keep].astype(np.int64), "top_share": top_count[keep] / occ[keep],
            "uniform": (1 if top1 else trace.top_k) / num_experts}))
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["layer", "count", "token_id"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


def vocab_summary(frame: pd.DataFrame, min_count: int = 5) -> pd.DataFrame:
    """Per layer: the occurrence-weighted mean ``top_share`` of token ids seen ``min_count`` times.

    Args:
        frame: the output of :func:`vocab_specialization`.
        min_count: token ids with fewer occurrences are left out.
    """
    sub = frame[frame["count"] >= min_count]
    grouped = sub.assign(mass=sub.top_share * sub["count"]).groupby("layer")
    out = pd.DataFrame({"vocab_specialization": grouped.mass.sum() / grouped["count"].sum(),
                        "token_ids": grouped.size()}).reset_index()
    out["uniform"] = float(frame.uniform.iloc[0]) if len(frame) else np.nan
    return out
