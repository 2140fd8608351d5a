"""fTRI-style contrast: which experts does one prompt set activate more than another?

Each prompt becomes a layer × expert activation map — how many of its tokens chose the expert
(``measure="count"``) or how much routing weight the expert received (``measure="weight"``), summed
over the prompt's tokens and, by default, divided by its length. The maps of set A and set B are
compared per (layer, expert) with Welch's t (respects prompt-to-prompt variance), a p-value
(permutation test by default; ``test="welch"`` uses the t distribution through scipy), a
Benjamini-Hochberg q-value and Cohen's d as the effect size. This is MoTE's fTRI (Dahlke et al.,
2025) with a statistical test on top of the mean difference.

Beside it, every table carries SteerMoE's score (Fayyaz et al., 2025): the *risk difference*
``risk_diff = rate_a - rate_b`` of activation rates pooled over all tokens of each set, an expert
being "activated" for a token when it is in the token's top-k (``rank_by="risk_diff"`` sorts by it;
:func:`~workbench.steering.stats.risk_difference`). The two rank nearly alike when prompts are of
similar length; Welch's t also weighs the spread between prompts, and the risk difference lets long
prompts count more.

Shapes: ``D`` prompts (documents of the trace), ``L`` recorded MoE layers, ``E`` experts.

Example:
    >>> import numpy as np, workbench as wb
    >>> from workbench.steering import contrast_experts
    >>> rng = np.random.default_rng(0)
    >>> idx = rng.integers(0, 8, size=(1, 40, 2)); doc = np.repeat(np.arange(8), 5)
    >>> idx[0, doc < 4, 0] = 3                      # documents 0-3 ("de") always use expert 3
    >>> idx[0, doc < 4, 1] = np.where(idx[0, doc < 4, 1] == 3, 4, idx[0, doc < 4, 1])
    >>> trace = wb.RoutingTrace(idx, np.full((1, 40, 2), 0.5), np.zeros(40), doc, np.tile(np.arange(5), 8),
    ...                         [0], 8, "x", doc_labels=["de"] * 4 + ["en"] * 4)
    >>> result = contrast_experts(trace, "de", "en", permutations=200)
    >>> result.top(1)
    [(0, 3)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.steering import stats

MEASURES = ("count", "weight")
TESTS = ("permutation", "welch")
RANK_BY = ("t", "effect", "diff", "risk_diff")


def activation_maps(trace, measure: str = "count", normalize: bool = True) -> np.ndarray:
    """Per-prompt activation maps.

    Args:
        trace: a :class:`~workbench.trace.RoutingTrace` or a stored trace (one document = one prompt).
        measure: ``"count"`` (tokens that selected the expert) or ``"weight"`` (routing weight mass).
        normalize: divide by the prompt's number of tokens (a rate per token), so long and short
            prompts count alike.

    Returns:
        ``[D, L, E]`` float64.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    trace = trace.materialize()  # prompt sets are small: a stored trace is read into memory
    num_layers, num_tokens, k = trace.topk_idx.shape
    num_docs = trace.num_docs
    idx = trace.topk_idx.astype(np.int64)
    valid = idx >= 0
    doc = np.broadcast_to(trace.doc.astype(np.int64)[None, :, None], idx.shape)
    layer = np.broadcast_to(np.arange(num_layers)[:, None, None], idx.shape)
    flat = (doc * num_layers + layer) * trace.num_experts + idx
    weights = None if measure == "count" else trace.topk_w.astype(np.float64)[valid]
    size = num_docs * num_layers * trace.num_experts
    maps = np.bincount(flat[valid], weights=weights, minlength=size).astype(np.float64)
    maps = maps.reshape(num_docs, num_layers, trace.num_experts)
    if normalize:
        lengths = np.bincount(trace.doc, minlength=num_docs).astype(np.float64)
        maps /= np.maximum(lengths, 1)[:, None, None]
    return maps


def pooled_rates(trace, docs: np.ndarray) -> np.ndarray:
    """``[L * E]`` share of the tokens of the selected documents whose top-k holds each expert.

    Tokens of all the documents count alike (pooled, as SteerMoE does), so a long prompt weighs
    more than a short one; ``docs`` is a ``[D]`` bool mask.
    """
    counts = activation_maps(trace, "count", normalize=False)
    tokens = np.bincount(trace.materialize().doc, minlength=counts.shape[0])[docs].sum()
    if tokens == 0:
        raise ValueError("the selected documents have no tokens")
    return counts[docs].sum(axis=0).reshape(-1) / float(tokens)


def _as_labels(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _ordered(table: pd.DataFrame, by: str, sign: int = 1) -> pd.DataFrame:
    """``table`` sorted by ``sign * table[by]``, largest first, ties in (layer, expert) order (how the
    reference's table, built layer by layer, lists equal scores)."""
    frame = table.sort_values(["layer", "expert"], kind="mergesort")
    order = np.argsort(-(sign * frame[by].to_numpy()), kind="stable")
    return frame.iloc[order]


class RankedExperts(list):
    """``(layer, expert)`` pairs ranked on one model; ``fingerprint`` names that model."""

    def __init__(self, pairs=(), fingerprint: str | None = None):
        super().__init__(pairs)
        self.fingerprint = fingerprint


@dataclass
class ExpertContrast:
    """The ranked contrast of set A against set B.

    Attributes:
        table: one row per (layer, expert), best first: ``rank``, ``layer``, ``expert``,
            ``mean_a``, ``mean_b``, ``diff`` (``mean_a - mean_b``), ``t`` (Welch), ``effect``
            (Cohen's d), ``p`` (two-sided, of ``t``), ``q`` (Benjamini-Hochberg), ``rate_a``,
            ``rate_b`` (share of the set's tokens whose top-k holds the expert, pooled over prompts)
            and ``risk_diff`` (``rate_a - rate_b``, SteerMoE's score).
        means: ``{set name: [L, E] mean map}``.
        layers: the decoder-layer indices of the ``L`` axis.
        num_experts: ``E``.
        a: the label(s) of set A; ``b``: of set B.
        measure, test, rank_by: how the table was made.
        trace: the recorded trace, when the contrast recorded it.
        fingerprint: the model's fingerprint; the experts :meth:`top` returns carry it, and steering
            them on another model is refused.
    """

    table: pd.DataFrame
    means: dict
    layers: list
    num_experts: int
    a: list
    b: list
    measure: str = "count"
    test: str = "permutation"
    rank_by: str = "t"
    trace: object = field(default=None, repr=False)
    fingerprint: str | None = None

    def top(self, n: int = 10, direction: str = "a", max_p: float | None = None,
            by: str | None = None) -> list[tuple[int, int]]:
        """The ``n`` best-ranked ``(layer, expert)`` pairs.

        Args:
            n: how many.
            direction: ``"a"``: experts set A activates more (the table's order); ``"b"``: experts
                set B activates more.
            max_p: keep only experts with ``p <= max_p`` (may return fewer than ``n``).
            by: rank by this column instead of :attr:`rank_by` (one of ``"t"``, ``"effect"``,
                ``"diff"``, ``"risk_diff"``); only experts with the sign of ``direction`` count.
        """
        if direction not in ("a", "b"):
            raise ValueError(f"direction must be 'a' or 'b', got {direction!r}")
        by = self.rank_by if by is None else by
        if by not in RANK_BY:
            raise ValueError(f"by must be one of {RANK_BY}, got {by!r}")
        sign = 1 if direction == "a" else -1
        if by == "risk_diff":
            frame = _ordered(self.table, by, sign)
        else:
            table = self.table if by == self.rank_by else \
                self.table.sort_values([by, "diff"], ascending=False, kind="mergesort")
            frame = table if direction == "a" else table.iloc[::-1]
        frame = frame[sign * frame[by] > 0]
        if max_p is not None:
            frame = frame[frame.p <= max_p]
        return RankedExperts([(int(r.layer), int(r.expert)) for r in frame.head(int(n)).itertuples()],
                             fingerprint=self.fingerprint)

    def to_dataframe(self) -> pd.DataFrame:
        return self.table.copy()

    def save(self, path) -> Path:
        """Write the table as CSV (``path`` a file, or a folder that gets ``experts.csv``)."""
        path = Path(path)
        if path.suffix != ".csv":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "experts.csv"
        self.table.to_csv(path, index=False)
        return path

    def plot(self, value: str = "effect", title: str | None = None):
        """Layer × expert heatmap of ``value`` (see :func:`~workbench.steering.plot.contrast_heatmap`)."""
        from workbench.steering.plot import contrast_heatmap

        return contrast_heatmap(self, value=value, title=title)

    def __repr__(self) -> str:
        head = ", ".join(f"L{r.layer}/E{r.expert} (d={r.effect:.2f}, p={r.p:.3g})"
                         for r in self.table.head(5).itertuples())
        return (f"ExpertContrast({'+'.join(self.a)} vs {'+'.join(self.b)}, {self.measure}, "
                f"{len(self.table)} experts; top: {head})")


def contrast_experts(trace, a, b=None, *, measure: str = "count", normalize: bool = True,
                     test: str = "permutation", permutations: int = 1000, seed: int = 0,
                     rank_by: str = "t") -> ExpertContrast:
    """Rank experts by how much more the prompts labelled ``a`` activate them than those labelled ``b``.

    Args:
        trace: a labelled :class:`~workbench.trace.RoutingTrace` (one document per prompt).
        a: label (or labels) of set A.
        b: label(s) of set B; None = every other labelled document (one-vs-rest, for more than two
            sets).
        measure: ``"count"`` or ``"weight"`` (see :func:`activation_maps`).
        normalize: per-token rates instead of sums.
        test: ``"permutation"`` (numpy only) or ``"welch"`` (t distribution; needs scipy).
        permutations: shuffles for the permutation test.
        seed: its random seed.
        rank_by: ``"t"`` (default), ``"effect"``, ``"diff"`` or ``"risk_diff"`` (SteerMoE); the
            table is sorted by it, largest first.

    Returns:
        An :class:`ExpertContrast`.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if not trace.doc_labels:
        raise ValueError("the trace has no labels; record the prompt sets with labels=[...] "
                         "or use find_experts(lm, {name: texts, ...}, a=...)")
    labels = np.array([None if x is None else str(x) for x in trace.doc_labels], dtype=object)
    a_labels, b_labels = _as_labels(a), _as_labels(b)
    known = sorted({x for x in labels if x is not None})
    for name in a_labels + b_labels:
        if name not in known:
            raise ValueError(f"label {name!r} is not in the trace; labels: {known}")
    if not a_labels:
        raise ValueError("give the label of set A")
    in_a = np.isin(labels.astype(str), a_labels) & (labels != None)  # noqa: E711
    if b_labels:
        in_b = np.isin(labels.astype(str), b_labels) & (labels != None)  # noqa: E711
    else:
        in_b = ~in_a & (labels != None)  # noqa: E711
        b_labels = sorted({x for x in labels[in_b]})
    if set(a_labels) & set(b_labels):
        raise ValueError(f"sets A and B share labels {sorted(set(a_labels) & set(b_labels))}")
    maps = activation_maps(trace, measure, normalize)
    num_docs, num_layers, num_experts = maps.shape
    xa, xb = maps[in_a].reshape(int(in_a.sum()), -1), maps[in_b].reshape(int(in_b.sum()), -1)
    t, d = stats.welch_t(xa, xb)
    if test == "welch":
        p = stats.welch_pvalues(xa, xb)
    else:
        p = stats.permutation_pvalues(xa, xb, permutations=permutations, seed=seed)
    ma, mb = xa.mean(axis=0), xb.mean(axis=0)
    rate_a, rate_b = pooled_rates(trace, in_a), pooled_rates(trace, in_b)
    table = pd.DataFrame({
        "layer": np.repeat(trace.layers, num_experts), "expert": np.tile(np.arange(num_experts), num_layers),
        "mean_a": ma, "mean_b": mb, "diff": ma - mb, "t": t, "effect": d, "p": p, "q": stats.bh_adjust(p),
        "rate_a": rate_a, "rate_b": rate_b, "risk_diff": rate_a - rate_b,
    })
    table = _ordered(table, rank_by) if rank_by == "risk_diff" else \
        table.sort_values([rank_by, "diff"], ascending=False, kind="mergesort")
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    means = {"+".join(a_labels): ma.reshape(num_layers, num_experts),
             "+".join(b_labels): mb.reshape(num_layers, num_experts)}
    return ExpertContrast(table, means, list(trace.layers), num_experts, a_labels, b_labels,
                          measure=measure, test=test, rank_by=rank_by, fingerprint=trace.fingerprint)


def find_experts(lm, sets: Mapping[str, Sequence[str]], a, b=None, *, batch_size: int = 8,
                 max_length: int | None = None, progress: bool = False, **options) -> ExpertContrast:
    """Record labelled prompt sets on ``lm`` and contrast them (:func:`contrast_experts`).

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        sets: ``{name: [prompt, ...]}``, two or more sets.
        a: name(s) of set A; ``b``: of set B (None = all the other sets).
        batch_size, max_length, progress: passed to :func:`workbench.record`.
        **options: passed to :func:`contrast_experts` (``measure``, ``test``, ``permutations``, ...).

    Returns:
        An :class:`ExpertContrast` whose ``trace`` holds the recording.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> from workbench.steering import find_experts
        >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
        >>> sets = {"de": ["Der Hund", "Die Katze", "Das Haus"], "en": ["The dog", "The cat", "A house"]}
        >>> result = find_experts(lm, sets, a="de", permutations=50)
        >>> list(result.table.columns[:4]), len(result.table) == len(lm.moe_layers) * lm.num_experts
        (['rank', 'layer', 'expert', 'mean_a'], True)
    """
    import workbench as wb

    if not isinstance(sets, Mapping) or len(sets) < 2:
        raise ValueError("sets must be a mapping {name: [prompt, ...]} with at least two sets")
    texts, labels = [], []
    for name, prompts in sets.items():
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) < 2:
            raise ValueError(f"set {name!r} has {len(prompts)} prompt(s); each set needs at least 2")
        texts.extend(prompts)
        labels.extend([str(name)] * len(prompts))
    trace = wb.record(lm, texts, labels=labels, batch_size=batch_size, max_length=max_length,
                      progress=progress)
    result = contrast_experts(trace, a, b, **options)
    result.trace = trace
    return result
