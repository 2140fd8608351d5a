"""The tokens routed to one expert, each with its context in the document.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.analysis import expert_tokens
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> trace = wb.record(lm, ["the cat sat on the mat", "def f(x): return x"], labels=["en", "code"],
    ...                   progress=False)
    >>> rows = expert_tokens(trace, layer=0, expert=3, context=4)
    >>> list(rows.columns)
    ['doc', 'pos', 'left', 'token', 'right', 'weight', 'rank', 'label', 'token_id', 't']
    >>> bool(rows.weight.is_monotonic_decreasing)  # the most strongly routed tokens first
    True
    >>> df = trace.to_dataframe()
    >>> len(rows) == len(df[(df.layer == 0) & (df.expert == 3)])
    True
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.trace import char_spans

COLUMNS = ["doc", "pos", "left", "token", "right", "weight", "rank", "label", "token_id", "t"]


def _routed(trace, layer: int, expert: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, rank, weight)`` of every slot of ``layer`` that holds ``expert``, in trace order."""
    lp = trace.layer_index(layer)
    if getattr(trace, "is_stored", False):
        ts, ranks, weights = [], [], []
        for rows in trace.iter_batches(layers=[layer]):
            tok, rank = np.nonzero(rows.idx[0] == expert)
            ts.append(rows.t[tok])
            ranks.append(rank)
            weights.append(rows.w[0][tok, rank])
        if not ts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return (np.concatenate(ts).astype(np.int64), np.concatenate(ranks).astype(np.int64),
                np.concatenate(weights).astype(np.float32))
    idx = trace.topk_idx[lp]
    tok, rank = np.nonzero(idx == expert)
    return tok.astype(np.int64), rank.astype(np.int64), trace.topk_w[lp][tok, rank].astype(np.float32)


def _piece_maker(trace, tokenizer):
    """A function from trace token indices to their byte pieces: the trace's own (its
    ``meta["token_bytes"]`` for tokens that hold part of a character), completed from ``tokenizer``
    when one is given (traces recorded without those bytes decode such tokens as ``"�"``)."""
    if tokenizer is None:
        return trace._pieces
    from workbench.trace import _raw_bytes, partial_token_bytes

    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # an MoEModel gives its tokenizer
    ids = np.asarray(trace.token_ids)
    raw = {int(k): bytes.fromhex(v) for k, v in partial_token_bytes(tokenizer, np.unique(ids)).items()}
    raw.update(_raw_bytes(trace.meta))
    text = trace.token_text

    def pieces(tokens):
        return [raw[t] if t in raw else text.get(t, f"<{t}>").encode("utf-8")
                for t in (int(x) for x in ids[np.asarray(tokens, dtype=np.int64)])]

    return pieces


def expert_tokens(trace, layer: int, expert: int, context=8, *, top: int | None = None,
                  sort: str | None = "weight", tokenizer=None) -> pd.DataFrame:
    """Every token routed to ``expert`` at ``layer`` (in any of its top-k slots), with the text around it.

    The context is decoded on character boundaries: a character whose bytes are split across tokens
    (byte-level BPE) is shown whole, in ``token`` when the routed token holds any of its bytes, else
    in ``left`` / ``right``. Context never crosses into another document.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` or a stored trace (``wb.open_trace``).
        layer: a recorded decoder layer.
        expert: an expert id, ``0 .. E-1``.
        context: tokens of context on each side, or ``(left, right)``.
        top: keep only the first ``top`` rows (after sorting).
        sort: ``"weight"`` (default: highest routing weight first, ties in trace order) or None
            (trace order: document, then position).
        tokenizer: the model's tokenizer (or the :class:`~workbench.loading.MoEModel`), to decode
            tokens that hold part of a character when the trace does not keep their bytes
            (``meta["token_bytes"]``); without either, such a token reads ``"�"``.

    Returns:
        One row per routed token: ``doc``, ``pos``, ``left`` (the text of up to ``context`` tokens
        before it), ``token`` (its text), ``right``, ``weight`` (its routing weight to the expert),
        ``rank`` (0 = the expert was its top choice), ``label`` (the document's), ``token_id``, ``t``
        (token index in the trace, as in ``trace.to_dataframe()``).

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("mixtral"))
        >>> trace = wb.record(lm, ["hello world, hello moon"], progress=False)
        >>> rows = expert_tokens(trace, 0, 1, context=2, top=3)
        >>> len(rows) <= 3, set(rows.doc) <= {0}
        (True, True)
    """
    if isinstance(context, (tuple, list)):
        if len(context) != 2:
            raise ValueError(f"context must be a number of tokens or (left, right), got {context!r}")
        before, after = (int(c) for c in context)
    else:
        before = after = int(context)
    if before < 0 or after < 0:
        raise ValueError(f"context must be >= 0 tokens, got {context!r}")
    if sort not in ("weight", None):
        raise ValueError(f"sort must be 'weight' or None, got {sort!r}")
    if not 0 <= int(expert) < int(trace.num_experts):
        raise ValueError(f"expert {expert} is not an expert of this trace: ids are 0..{trace.num_experts - 1}")
    if top is not None and int(top) < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    t, rank, weight = _routed(trace, int(layer), int(expert))
    order = np.lexsort((rank, t))  # trace order
    if sort == "weight":
        order = np.lexsort((rank, t, -weight))
    if top is not None:
        order = order[: int(top)]
    t, rank, weight = t[order], rank[order], weight[order]
    doc, pos, token_ids = np.asarray(trace.doc), np.asarray(trace.pos), np.asarray(trace.token_ids)
    labels = list(trace.doc_labels) if trace.doc_labels else []
    n = trace.num_tokens
    pieces = _piece_maker(trace, tokenizer)
    lefts, tokens, rights = [], [], []
    for i in t.tolist():
        lo = max(0, i - before)
        lo += int(np.searchsorted(doc[lo:i] == doc[i], True))  # first token of the window in this document
        hi = min(n, i + after + 1)
        same = doc[i:hi] == doc[i]
        hi = i + (int(np.argmin(same)) if not same.all() else len(same))
        left, token, right = [], [], []
        j = i - lo  # the routed token's place in the window
        for char, first, last in char_spans(pieces(np.arange(lo, hi))):
            (left if last < j else right if first > j else token).append(char)
        lefts.append("".join(left))
        tokens.append("".join(token))
        rights.append("".join(right))
    docs = doc[t].astype(np.int64)
    return pd.DataFrame({
        "doc": docs, "pos": pos[t].astype(np.int64), "left": lefts, "token": tokens, "right": rights,
        "weight": weight, "rank": rank, "label": [labels[d] if d < len(labels) else None for d in docs.tolist()],
        "token_id": token_ids[t].astype(np.int64), "t": t,
    }, columns=COLUMNS)
