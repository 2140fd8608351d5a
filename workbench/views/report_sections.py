"""The report's figures, each with a short method paragraph: trace + analysis tables → sections.

Used by :func:`workbench.report.run_demo`; the keys of the returned dict name the figure files.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.report import analyse
    >>> from workbench.views.report_sections import build_sections
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> trace = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], scores=True,
    ...                   progress=False)
    >>> sorted(build_sections(trace, analyse(trace, lm.rule)))[:3]
    ['coactivation_first', 'coactivation_last', 'entropy']
"""

from __future__ import annotations

import numpy as np

from workbench.views.experts import coactivation_heatmap, load_heatmap, specialization_heatmap, transitions_heatmap
from workbench.views.layers import entropy_plot, norm_rank_heatmap, specialization_plot, vocab_bar
from workbench.views.page import Section
from workbench.views.tokens import token_caption, token_heatmap

MAX_PANELS = 6


def _spread(layers: list[int], n: int) -> list[int]:
    """At most ``n`` layers, evenly spread, first and last included."""
    if len(layers) <= n:
        return list(layers)
    picks = np.unique(np.linspace(0, len(layers) - 1, n).round().astype(int))
    return [layers[i] for i in picks]


def build_sections(trace, tables: dict, docs_per_label: int = 1, max_tokens: int = 64) -> dict:
    """``{key: Section}`` for every figure the tables allow, in reading order."""
    k, num_experts = trace.top_k, trace.num_experts
    first, last = trace.layers[0], trace.layers[-1]

    def csv(name):
        return {"CSV": f"tables/{name}.csv"}

    out = {}

    shown = {}
    for d, label in enumerate(trace.doc_labels or [None] * trace.num_docs):
        if shown.get(label, 0) < docs_per_label and len(shown) + (label not in shown) <= 4:
            shown[label] = shown.get(label, 0) + 1
            key = f"tokens_doc{d}"
            out[key] = Section(
                f"Routing of one document{'' if label is None else f' ({label})'}",
                token_caption(trace, max_tokens), token_heatmap(trace, d, max_tokens=max_tokens))

    out["load"] = Section(
        "Expert load",
        f"For every layer and expert, the share of tokens that have the expert among their top-{k}, divided "
        f"by the uniform share k/E = {k}/{num_experts}: 1 is an evenly used expert, 0 a dead one. Load "
        "balancing during training pushes this towards 1; strong deviations mark experts the router "
        "favours or starves.", load_heatmap(tables["expert_load"]), table=tables["load_summary"],
        links=csv("expert_load"))

    spec_layers = _spread(trace.layers, MAX_PANELS)
    out["specialization"] = Section(
        "Label (domain) specialisation",
        "For each label, the share of its tokens routed to each expert, divided by k/E (OLMoE's domain "
        "specialisation). Values well above 1 mark experts that a domain prefers; a column that is bright "
        f"for one label only is a domain expert. Layers shown: {spec_layers}.",
        specialization_heatmap(tables["label_specialization"], layer=spec_layers),
        links=csv("label_specialization"))
    out["specialization_profile"] = Section(
        "Specialisation per layer",
        "One number per layer: the mean over labels of the total-variation distance between a label's "
        "routing distribution and uniform routing, scaled to [0, 1] (solid); the same distance measured from "
        "the layer's overall routing, which discounts imbalance shared by all labels (dashed); and the "
        "vocabulary specialisation: for token ids seen at least five times, the occurrence-weighted share "
        "of a token's occurrences sent to its most frequent expert (dotted: the uniform k/E).",
        specialization_plot(tables["specialization_scores"], tables.get("vocab_summary")),
        table=tables["specialization_scores"], links=csv("specialization_scores"))
    out["vocabulary"] = Section(
        "Vocabulary specialisation",
        f"The most frequent token ids at layer {last}: how consistently each is sent to one expert. A share "
        "near 1 means the token id alone decides the routing (a lexical expert).",
        vocab_bar(tables["vocab_specialization"], last), links=csv("vocab_specialization"))

    for key, layer in (("coactivation_first", first), ("coactivation_last", last)):
        if key == "coactivation_last" and last == first:
            continue
        out[key] = Section(
            f"Co-activation at layer {layer}",
            f"For every pair of experts (a, b), how often they appear together in a token's top-{k} (all pairs "
            "of slots), as lift: the observed rate over the rate expected if choices were independent "
            "(1 = chance). Pairs far above 1 work as a team; the matrix is symmetric.",
            coactivation_heatmap(tables["coactivation"], layer), links=csv("coactivation"))

    if "layer_transitions" in tables:
        out["transitions"] = Section(
            f"Transitions from layer {first} to {trace.layers[1]}",
            "For tokens whose heaviest expert at one layer is a, the distribution of their heaviest expert at "
            "the next layer: P(to | from). Concentrated rows are routing paths that persist across depth.",
            transitions_heatmap(tables["layer_transitions"], first), links=csv("layer_transitions"))
    if "router_entropy" in tables:
        out["entropy"] = Section(
            "Router entropy and margin",
            "From the full router logits, the family's routing probabilities for every token; their entropy "
            "divided by log E (1 = undecided, 0 = certain; bars: one standard deviation over tokens) and the "
            "gap between the two most probable experts.", entropy_plot(tables["router_entropy"]),
            table=tables["router_entropy"], links=csv("router_entropy"))
    if "norm_rank_table" in tables:
        out["norm_rank"] = Section(
            "Expert output norm versus router rank",
            "Following Lo et al. (2024): every expert is run on the recorded inputs of each MoE block (not "
            "only the chosen ones), and the experts are ranked per token by the L2 norm of their output and "
            "by the router's selection score. Each row is one router rank; its cells give where that "
            "expert falls by output norm. Mass on the diagonal means the router prefers the experts that "
            "would write the largest update into the residual stream.",
            norm_rank_heatmap(tables["norm_rank_table"]), table=tables.get("norm_rank_summary"),
            links=csv("norm_rank_table"))
    return out
