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
        self.text = np.array([escape_token(s) for s in self.trace.tokens()], dtype=object)

    def neighbours(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Token indices before and after token ``t`` in its document (up to ``window`` each)."""
        c = self.counts
        doc = int(self.trace.doc[t])
        lo, hi = c.doc_start[doc], c.doc_start[doc + 1]
        w = self.where[t]
        return c.doc_order[max(lo, w - self.window):w], c.doc_order[w + 1:min(hi, w + 1 + self.window)]

    def html(self, tokens, layer_pos: int, expert: int | None = None, limit: int = 40,
             heading: str = "") -> str:
        """An HTML block listing up to ``limit`` of ``tokens`` in context (all text escaped)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        labels = self.trace.doc_labels
        rows = []
        for t in tokens[:limit]:
            before, after = self.neighbours(int(t))
            slot_e, slot_w = self.trace.topk_idx[layer_pos, t], self.trace.topk_w[layer_pos, t]
            weight = float(slot_w[slot_e == expert][0]) if expert is not None and (slot_e == expert).any() \
                else float(slot_w[0])
            doc = int(self.trace.doc[t])
            label = f" [{html.escape(str(labels[doc]))}]" if labels and labels[doc] is not None else ""
            rows.append(
                "<div style='font-family:monospace;white-space:pre'>"
                f"<span style='color:#555'>{''.join(self.text[before])}</span>"
                f"<mark style='background:#56B4E9;color:#000'>{self.text[t]}</mark>"
                f"<span style='color:#555'>{''.join(self.text[after])}</span>"
                f"  <small style='color:#777'>doc {doc}{label}, pos {int(self.trace.pos[t])}, "
                f"weight {weight:.2f}</small></div>")
        more = f"<div><small>… and {len(tokens) - limit} more</small></div>" if len(tokens) > limit else ""
        return f"<div>{heading}{''.join(rows) or '<i>no tokens</i>'}{more}</div>"
