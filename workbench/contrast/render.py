"""Greedy and SCMoE outputs side by side as escaped HTML, changed tokens highlighted.

Every token is a ``<span>`` whose ``title`` (shown on hover) gives the strong and weak
probabilities of the token, its contrast score and, where the contrast changed the choice, what the
strong routing alone would have picked. All token text is HTML-escaped.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.contrast import generate, generate_greedy
    >>> lm = wb.wrap(*tiny_model("phimoe"))
    >>> g = generate_greedy(lm, "<b>", max_new_tokens=3)
    >>> s = generate(lm, "<b>", max_new_tokens=3, beta=1.0)
    >>> html_text = comparison_html(g, s)
    >>> "&lt;b&gt;" in html_text and html_text.count("<b>") == 1  # the prompt is escaped
    True
"""

from __future__ import annotations

import html

from workbench.views._style import escape_token

CHANGED_STYLE = "background:#E69F00;color:#000;border-radius:3px;outline:1px solid #D55E00"
TOKEN_STYLE = "border-bottom:1px dotted #999"


def _hover(df_row, greedy: bool) -> str:
    parts = [f"step {df_row.step}", f"p_strong {df_row.p_strong:.3f}"]
    if not greedy:
        parts += [f"p_weak {df_row.p_weak:.3f}", f"score {df_row.score:.2f}",
                  f"plausible tokens {df_row.n_plausible}"]
        if df_row.changed:
            parts.append(f"strong alone: {df_row.strong_choice!r}")
        parts.append(f"weak top: {df_row.weak_1!r} {df_row.weak_1_p:.3f}")
    parts.append(f"strong top: {df_row.strong_1!r} {df_row.strong_1_p:.3f}")
    return html.escape(" | ".join(parts), quote=True)


def tokens_html(gen) -> str:
    """One generation as token spans (changed tokens highlighted, contrast data on hover)."""
    df = gen.explain(top=1)
    greedy = gen.method == "greedy"
    spans = []
    for row in df.itertuples(index=False):
        style = CHANGED_STYLE if row.changed else TOKEN_STYLE
        brk = "<br>" if "\n" in row.token else ""  # newlines show as ↵ and also break the line
        spans.append(f"<span style='{style}' title='{_hover(row, greedy)}'>{escape_token(row.token)}</span>{brk}")
    return "".join(spans)


def comparison_html(greedy, scmoe) -> str:
    """Two columns: the greedy output and the SCMoE output, with a one-line legend."""
    changed = sum(scmoe.changed)
    label = html.escape(f"scmoe (beta={scmoe.beta:g}, alpha={scmoe.alpha:g}, weak={scmoe.weak})")
    cell = "padding:6px 10px;vertical-align:top;white-space:pre-wrap;font-family:monospace;width:50%"
    return (
        "<div style='font-size:13px'>"
        f"<div>prompt: <code>{escape_token(scmoe.prompt)}</code></div>"
        "<table style='border-collapse:collapse;width:100%;table-layout:fixed'><tr>"
        f"<th style='text-align:left'><b>greedy</b> ({greedy.num_tokens} tokens, "
        f"{greedy.ms_per_token:.1f} ms/token)</th>"
        f"<th style='text-align:left'>{label} ({scmoe.num_tokens} tokens, {scmoe.ms_per_token:.1f} ms/token)</th>"
        f"</tr><tr><td style='{cell}'>{tokens_html(greedy)}</td><td style='{cell}'>{tokens_html(scmoe)}</td></tr>"
        "</table>"
        f"<div style='color:#555'>{changed} of {scmoe.num_tokens} SCMoE tokens differ from what the strong "
        f"routing alone would pick at that step (<span style='{CHANGED_STYLE}'>highlighted</span>); "
        "hover a token for its strong/weak probabilities and contrast score.</div></div>"
    )
