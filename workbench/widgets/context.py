"""Tokens in context, as escaped HTML: the text around each token routed to an expert.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.analysis import TraceCounts
    >>> from workbench.widgets.context import TokenContext
    >>> trace = wb.RoutingTrace(topk_idx=[[[0], [1], [0]]], topk_w=np.ones((1, 3, 1)),
    ...                         token_ids=[1, 2, 3], doc=[0, 0, 0], pos=[0, 1, 2], layers=[0],
    ...                         num_experts=2, fingerprint="x", token_text={1: "a", 2: "<b>", 3: "c"})
    >>> ctx = TokenContext(TraceCounts(trace))
    >>> "&lt;b&gt;" in ctx.html([1], layer_pos=0) and "<b>" not in ctx.html([1], layer_pos=0)
    True
"""

from __future__ import annotations

import html

import numpy as np

from workbench.views._style import escape_token


class TokenContext:
    """Renders tokens with ``window`` neighbours on each side (same document only)."""

    def __init__(self, counts, window: int = 6):
        self.counts = counts
        self.trace = counts.trace
        self.window = window
        self.where = np.empty(counts.num_tokens, dtype=np.int64)
        self.where[counts.doc_order] = np.arange(counts.num_tokens)
        self.token_ids = self.trace.token_ids
        self._docs = self.trace.doc
        self._pos = self.trace.pos
        self._escaped: dict[int, str] = {}

    def _text(self, tokens) -> str:
        out = []
        for t in np.atleast_1d(tokens):
            tid = int(self.token_ids[t])
            if tid not in self._escaped:
                self._escaped[tid] = escape_token(self.trace.token_text.get(tid, f"<{tid}>"))
            out.append(self._escaped[tid])
        return "".join(out)

    def _parts(self, before, t, after) -> tuple[str, str, str]:
        """The escaped text before, of and after token ``t``, on character boundaries: a character
        split across tokens is shown whole (never ``"��"``), marked when it touches token ``t``."""
        window = np.concatenate([np.atleast_1d(before), [t], np.atleast_1d(after)]).astype(np.int64)
        if not hasattr(self.trace, "char_spans") or not self.trace.meta.get("token_bytes"):
            return self._text(before), self._text(t), self._text(after)
        cut = (len(np.atleast_1d(before)), len(np.atleast_1d(before)) + 1)
        parts = ["", "", ""]
        for char, first, last in self.trace.char_spans(window):
            parts[0 if last < cut[0] else 2 if first >= cut[1] else 1] += char
        return tuple(escape_token(x) if x else "" for x in parts)

    def neighbours(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Token indices before and after token ``t`` in its document (up to ``window`` each)."""
        c = self.counts
        doc = int(self._docs[t])
        lo, hi = c.doc_start[doc], c.doc_start[doc + 1]
        w = self.where[t]
        return c.doc_order[max(lo, w - self.window):w], c.doc_order[w + 1:min(hi, w + 1 + self.window)]

    def html(self, tokens, layer_pos: int, expert: int | None = None, limit: int = 40,
             heading: str = "", weights=None, total: int | None = None) -> str:
        """An HTML block listing up to ``limit`` of ``tokens`` in context (all text escaped).

        ``weights`` (one per token) saves reading them; ``total`` is how many tokens there are in all
        when ``tokens`` is only the first of them.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        total = len(tokens) if total is None else int(total)
        labels = self.trace.doc_labels
        if weights is None:
            slot_e, slot_w = self.trace.slots([layer_pos], tokens[:limit])
            weights = slot_w[0][:, 0] if expert is None else (slot_w[0] * (slot_e[0] == expert)).max(axis=1, initial=0.0)
        docs, positions = self._docs, self._pos
        rows = []
        for t, weight in zip(tokens[:limit], weights):
            before, after = self.neighbours(int(t))
            doc = int(docs[t])
            label = f" [{html.escape(str(labels[doc]))}]" if labels and labels[doc] is not None else ""
            left, mid, right = self._parts(before, int(t), after)
            rows.append(
                "<div style='font-family:monospace;white-space:pre'>"
                f"<span style='color:#555'>{left}</span>"
                f"<mark style='background:#56B4E9;color:#000'>{mid}</mark>"
                f"<span style='color:#555'>{right}</span>"
                f"  <small style='color:#777'>doc {doc}{label}, pos {int(positions[t])}, "
                f"weight {float(weight):.2f}</small></div>")
        shown = min(limit, len(tokens))
        more = f"<div><small>… and {total - shown} more</small></div>" if total > shown else ""
        return f"<div>{heading}{''.join(rows) or '<i>no tokens</i>'}{more}</div>"
