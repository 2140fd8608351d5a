"""Analyses of a recorded routing trace; each returns a tidy DataFrame.

=================================  ==========================================================
:func:`expert_load`                tokens and weight mass per (layer, expert), against ``k/E``
:func:`label_specialization`       share of a label's tokens routed to each expert
:func:`specialization_scores`      one label-specialisation score per layer
:func:`vocab_specialization`       per token id: share of occurrences sent to its top expert
:func:`coactivation`               expert pairs in a token's top-k: counts, P(b|a), lift
:func:`router_entropy`             router entropy and top-1 margin per layer (needs scores)
:func:`layer_transitions`          expert at layer l -> expert at the next recorded layer
:func:`expert_output_norms`        every expert's output norm vs the router's rank (runs lm)
:func:`norm_rank_table`            the rank-vs-rank table of those norms
:func:`expert_tokens`              the tokens routed to one expert, with their context
=================================  ==========================================================

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import analysis
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> trace = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], progress=False)
    >>> load = analysis.expert_load(trace)
    >>> bool((load.groupby("layer").token_share.sum().round(6) == lm.top_k).all())
    True
"""

from workbench.analysis.coactivation import coactivation, coactivation_matrix, layer_transitions, pair_metrics
from workbench.analysis.counts import UNLABELLED, TraceCounts
from workbench.analysis.load import as_counts, expert_load, load_summary
from workbench.analysis.norms import (
    expert_norm_stats,
    expert_output_norms,
    norm_rank_summary,
    norm_rank_table,
)
from workbench.analysis.router import MissingScoresError, router_entropy, token_entropy
from workbench.analysis.specialization import (
    label_specialization,
    specialization_scores,
    vocab_specialization,
    vocab_summary,
)
from workbench.analysis.tokens import expert_tokens

__all__ = [
    "MissingScoresError", "TraceCounts", "UNLABELLED", "as_counts", "coactivation", "coactivation_matrix", "expert_load",
    "expert_norm_stats", "expert_output_norms", "expert_tokens", "label_specialization", "layer_transitions",
    "load_summary",
    "norm_rank_summary", "norm_rank_table", "pair_metrics", "router_entropy", "specialization_scores",
    "token_entropy", "vocab_specialization", "vocab_summary",
]
