"""The controlled steering experiment: does switching off the linked experts change the behaviour
more than switching off as many random experts, and what does it cost elsewhere?

Conditions (MoTE's design): ``baseline`` (no edit); ``top_off`` (the top-N experts off);
``random_off`` (N random experts off, drawn from the others, once per seed); ``top_on`` (the
top-N forced on; at most ``k`` per layer, the best-ranked). For each: the behaviour rate of the
continuations with a 95% Wilson interval, and optionally the held-out perplexity of other texts
under the same edit (the quality check).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.steering import run_experiment
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> exp = run_experiment(lm, ["The quick", "A brown"], [(0, 1), (1, 2)], lambda s: "e" in s,
    ...                      seeds=(0,), max_new_tokens=3, quality={"en": ["the lazy dog"]}, progress=False)
    >>> exp.table.condition.tolist()
    ['baseline', 'top_off', 'random_off', 'top_on']
    >>> sorted(exp.table.columns)[:4]
    ['change', 'ci_high', 'ci_low', 'condition']
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.steering.behaviour import behaviour_name, resolve_behaviour
from workbench.steering.stats import mcnemar_exact, wilson_interval
from workbench.steering.steer import as_pairs, fit_to_k, generate, random_experts, steer

CONDITIONS = ("baseline", "top_off", "random_off", "top_on")


@torch.no_grad()
def perplexity(lm, texts: Sequence[str], max_length: int = 256, batch_size: int = 8) -> float:
    """Token-weighted perplexity of ``texts`` (each cut to ``max_length`` tokens); edits apply.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("mixtral"))
        >>> base = perplexity(lm, ["the quick brown fox"])
        >>> with wb.edit(lm, wb.Mask({0: [0, 1, 2, 3]})):
        ...     edited = perplexity(lm, ["the quick brown fox"])
        >>> base != edited
        True
    """
    encoded = [lm.tokenizer(t)["input_ids"][:max_length] for t in texts]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise ValueError("perplexity needs texts of at least two tokens")
    pad = lm.tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(batch):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return math.exp(total / count)


def _pairs_text(pairs) -> str:
    return " ".join(f"L{layer}/E{e}" for layer, e in pairs)


@dataclass
class SteeringExperiment:
    """Results of :func:`run_experiment`.

    Attributes:
        table: one row per condition run: ``condition``, ``seed`` (-1 unless random), ``n``,
            ``hits``, ``rate``, ``ci_low``, ``ci_high`` (95% Wilson), ``change`` (relative to the
            baseline rate, e.g. -0.52), ``experts`` (``"L1/E3 L2/E7"``), ``ppl_<label>`` per
            quality set and ``ppl_change_<label>`` (relative to baseline).
        continuations: ``condition``, ``seed``, ``prompt_id``, ``prompt``, ``continuation``, ``hit``.
        top: the ranked top-N experts used.
        behaviour_name: what was measured.
        settings: the arguments of the run.
    """

    table: pd.DataFrame
    continuations: pd.DataFrame
    top: list
    behaviour_name: str
    settings: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per condition; random seeds pooled (hits and prompts summed, perplexities averaged)."""
        rows = []
        base = self.table[self.table.condition == "baseline"]
        base_rate = float(base.rate.iloc[0]) if len(base) else float("nan")
        for condition, group in self.table.groupby("condition", sort=False):
            hits, n = int(group.hits.sum()), int(group.n.sum())
            low, high = wilson_interval(hits, n)
            row = {"condition": condition, "runs": len(group), "n": n, "hits": hits, "rate": hits / n,
                   "ci_low": low, "ci_high": high,
                   "change": (hits / n - base_rate) / base_rate if base_rate > 0 else float("nan")}
            for col in group.columns:
                if col.startswith("ppl"):
                    row[col] = float(group[col].mean())
            rows.append(row)
        return pd.DataFrame(rows)

    def paired(self, first: str = "top_off", second: str = "random_off") -> pd.DataFrame:
        """Paired comparison of two conditions on the same prompts (exact McNemar test).

        Returns:
            One row per run of ``second`` (e.g. per random seed): ``seed``, ``only_first`` (prompts
            that are hits only under ``first``), ``only_second``, ``rate_first``, ``rate_second``, ``p``.
        """
        hits = self.continuations.pivot_table(index="prompt_id", columns=["condition", "seed"], values="hit",
                                              aggfunc="first")
        missing = [c for c in (first, second) if c not in hits.columns.get_level_values(0)]
        if missing:
            raise ValueError(f"conditions {missing} were not run; this experiment has "
                             f"{sorted(set(hits.columns.get_level_values(0)))}")
        ref = hits[first].iloc[:, 0].astype(bool)
        rows = []
        for seed in hits[second].columns:
            other = hits[second][seed].astype(bool)
            b, c = int((ref & ~other).sum()), int((~ref & other).sum())
            rows.append({"seed": int(seed), "only_first": b, "only_second": c, "rate_first": float(ref.mean()),
                         "rate_second": float(other.mean()), "p": mcnemar_exact(b, c)})
        return pd.DataFrame(rows)

    def plot(self, title: str | None = None):
        from workbench.steering.plot import experiment_plot

        return experiment_plot(self, title=title)

    def save(self, folder) -> Path:
        """Write ``experiment.csv``, ``summary.csv``, ``continuations.csv`` and ``settings.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(folder / "experiment.csv", index=False)
        self.summary().to_csv(folder / "summary.csv", index=False)
        self.continuations.to_csv(folder / "continuations.csv", index=False)
        (folder / "settings.json").write_text(json.dumps(
            {**self.settings, "top": _pairs_text(self.top), "behaviour": self.behaviour_name}, indent=2, default=str))
        return folder

    def report_lines(self) -> list[str]:
        """A plain-text table of the summary (for RESULTS.md and the console)."""
        summary = self.summary()
        ppl_cols = [c for c in summary.columns if c.startswith("ppl_") and not c.startswith("ppl_change")]
        head = f"{'condition':<12}{'runs':>5}{'rate':>7}{'95% CI':>15}{'change':>9}" + \
            "".join(f"{c[4:]:>12}" for c in ppl_cols)
        lines = [f"behaviour: {self.behaviour_name}; top experts: {_pairs_text(self.top)}", head]
        for r in summary.to_dict("records"):
            ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            line = f"{r['condition']:<12}{r['runs']:>5}{r['rate']:>7.2f}{ci:>15}{r['change']:>+9.0%}"
            line += "".join(f"{r[c]:>12.2f}" for c in ppl_cols)
            lines.append(line)
        randoms = self.table[self.table.condition == "random_off"]
        if len(randoms) > 1:
            lines.append("random_off per seed: " + ", ".join(
                f"seed {r.seed}: {r.rate:.2f} ({r.change:+.0%})" for r in randoms.itertuples()))
        if {"top_off", "random_off"} <= set(self.table.condition):
            lines.append("top_off vs each random_off on the same prompts (exact McNemar): " + "; ".join(
                f"seed {r.seed}: hits only with random {r.only_second}, only with top off {r.only_first}, p={r.p:.2g}"
                for r in self.paired().itertuples()))
        if ppl_cols:
            lines.append("(columns after 'change': held-out perplexity per domain under each condition)")
        return lines

    def __repr__(self) -> str:
        return "SteeringExperiment(\n  " + "\n  ".join(self.report_lines()) + "\n)"


def run_experiment(lm, prompts: Sequence[str], experts, behaviour, *, n: int | None = None,
                   seeds: Sequence[int] = (0, 1, 2), mode: str = "next_best", on_weight: float | None = None,
                   quality: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                   max_new_tokens: int = 24, batch_size: int = 8, conditions: Sequence[str] = CONDITIONS,
                   quality_max_length: int = 256, generation: Mapping | None = None, progress: bool = True,
                   callback: Callable[[int, int, str], None] | None = None) -> SteeringExperiment:
    """Run the controlled experiment.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        prompts: prompts whose continuations are scored.
        experts: ranked ``(layer, expert)`` pairs, or an :class:`~workbench.steering.contrast.ExpertContrast`.
        behaviour: a callable ``text -> bool`` or a built-in name (see :mod:`~workbench.steering.behaviour`).
        n: how many of the ranked experts to steer (default: all given, or 10 from a contrast).
        seeds: one random-experts control per seed.
        mode: switch-off semantics, ``"next_best"`` or ``"empty"``.
        on_weight: weight of forced experts in ``top_on`` (None = the token's top-1 weight).
        quality: texts for the held-out perplexity check, ``{label: texts}`` or a list.
        max_new_tokens, batch_size: generation settings (greedy).
        conditions: which of :data:`CONDITIONS` to run.
        quality_max_length: tokens per quality text.
        generation: more options for :func:`~workbench.steering.generate` (e.g. ``{"do_sample": True,
            "seed": 0}`` or ``{"repetition_penalty": 1.3}``); the same for every condition.
        progress: show a progress bar.
        callback: called as ``callback(done, total, condition)`` after each run (e.g. a widget's bar).
    """
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; choose from {CONDITIONS}")
    if hasattr(experts, "top"):
        experts = experts.top(n or 10)
    ranked = as_pairs(experts)
    n = len(ranked) if n is None else int(n)
    if not 1 <= n <= len(ranked):
        raise ValueError(f"n={n} must be between 1 and the {len(ranked)} experts given")
    top = ranked[:n]
    score = resolve_behaviour(behaviour)
    prompts = list(prompts)
    if isinstance(quality, (list, tuple)):
        quality = {"heldout": list(quality)}
    quality = dict(quality or {})
    runs = [("baseline", -1, [], "off")] * ("baseline" in conditions)
    runs += [("top_off", -1, top, "off")] * ("top_off" in conditions)
    if "random_off" in conditions:
        runs += [("random_off", int(s), random_experts(lm, n, seed=int(s), exclude=top), "off") for s in seeds]
    if "top_on" in conditions:
        runs += [("top_on", -1, fit_to_k(top, lm.top_k), "on")]
    rows, texts = [], []
    bar = tqdm(total=len(runs), desc="steering experiment", disable=not progress)
    for done, (condition, seed, chosen, action) in enumerate(runs, 1):
        with steer(lm, chosen, action, mode=mode, weight=on_weight):
            outs = generate(lm, prompts, max_new_tokens, batch_size=batch_size, **dict(generation or {}))
            ppl = {label: perplexity(lm, qt, max_length=quality_max_length, batch_size=batch_size)
                   for label, qt in quality.items()}
        hits = [_hit(score(o)) for o in outs]
        low, high = wilson_interval(sum(hits), len(hits))
        rows.append({"condition": condition, "seed": seed, "n": len(hits), "hits": sum(hits),
                     "rate": sum(hits) / len(hits), "ci_low": low, "ci_high": high,
                     "experts": _pairs_text(chosen), **{f"ppl_{k}": v for k, v in ppl.items()}})
        texts += [{"condition": condition, "seed": seed, "prompt_id": i, "prompt": p, "continuation": o, "hit": h}
                  for i, (p, o, h) in enumerate(zip(prompts, outs, hits))]
        bar.update(1)
        if callback is not None:
            callback(done, len(runs), condition)
    bar.close()
    table = pd.DataFrame(rows)
    base = table[table.condition == "baseline"]
    base_rate = float(base.rate.iloc[0]) if len(base) else float("nan")
    table.insert(7, "change", (table.rate - base_rate) / base_rate if base_rate > 0 else np.nan)
    for label in quality:
        ref = float(base[f"ppl_{label}"].iloc[0]) if len(base) else float("nan")
        table[f"ppl_change_{label}"] = table[f"ppl_{label}"] / ref - 1
    settings = dict(n=n, seeds=list(seeds), mode=mode, on_weight=on_weight, max_new_tokens=max_new_tokens,
                    generation=dict(generation or {}),
                    prompts=len(prompts), quality={k: len(v) for k, v in quality.items()})
    return SteeringExperiment(table, pd.DataFrame(texts), top, behaviour_name(behaviour), settings)


def _hit(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"a behaviour must return a bool or a float in [0, 1], got {value}")
    return value >= 0.5
