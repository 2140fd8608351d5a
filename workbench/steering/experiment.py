"""The controlled steering experiment: does switching off the linked experts change the behaviour
more than switching off as many random experts, and what does it cost elsewhere?

Conditions (MoTE's design): ``baseline`` (no edit); ``top_off`` (the top-N experts off);
``random_off`` (N random experts off, drawn from the others, once per seed); ``top_on`` (the
top-N switched on, by default with :class:`workbench.Offset`; at most ``k`` per layer, the
best-ranked). SteerMoE's design (``preset="steermoe"``): ``switch`` (the ``activate`` experts on and
the top-N off in one :class:`workbench.Offset`) and ``random_switch`` (as many random experts on and
off, once per seed). For each: the behaviour rate of the continuations with a 95% Wilson interval,
and optionally the held-out perplexity of other texts under the same edit (the quality check).

:meth:`SteeringExperiment.effect` is the effect size of one condition over another on the same
prompts (random controls averaged per prompt) with a bootstrap confidence interval and a
sign-flip p-value (:func:`~workbench.steering.stats.paired_effect`); ``report_lines`` prints it for
the steered condition against its random control and against the baseline, on the hit rate and on
the behaviour's continuous score (the classifier's probability, when it has one: more power).

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
from workbench.steering.presets import DEFAULT_ACTIVATE, get_preset, select_steermoe
from workbench.steering.stats import mcnemar_exact, paired_effect, wilson_interval
from workbench.steering.steer import (
    as_pairs, fit_to_k, generate, random_experts, random_switch, steering_specs, switch_specs,
)

#: MoTE's conditions (the default preset's)
CONDITIONS = ("baseline", "top_off", "random_off", "top_on")
#: every condition run_experiment knows: MoTE's and SteerMoE's
ALL_CONDITIONS = CONDITIONS + ("switch", "random_switch")
#: (steered, control) pairs whose effect sizes the report prints
CONTRASTS = (("top_off", "random_off"), ("top_off", "baseline"), ("switch", "random_switch"),
             ("switch", "baseline"))


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


def _switch_text(on, off) -> str:
    return " ".join([f"+L{layer}/E{e}" for layer, e in on] + [f"-L{layer}/E{e}" for layer, e in off])


@dataclass
class SteeringExperiment:
    """Results of :func:`run_experiment`.

    Attributes:
        table: one row per condition run: ``condition``, ``seed`` (-1 unless random), ``n``,
            ``hits``, ``rate``, ``ci_low``, ``ci_high`` (95% Wilson), ``change`` (relative to the
            baseline rate, e.g. -0.52), ``experts`` (``"L1/E3 L2/E7"``), ``ppl_<label>`` per
            quality set and ``ppl_change_<label>`` (relative to baseline).
        continuations: ``condition``, ``seed``, ``prompt_id``, ``prompt``, ``continuation``, ``hit``,
            ``score`` (the behaviour's probability when it has one, else the hit as 0/1), ``group``
            (the document the prompt was cut from).
        top: the ranked top-N experts used (switched off).
        activated: the experts switched on in ``switch`` (empty unless it ran).
        behaviour_name: what was measured.
        settings: the arguments of the run.
    """

    table: pd.DataFrame
    continuations: pd.DataFrame
    top: list
    behaviour_name: str
    settings: dict = field(default_factory=dict)
    activated: list = field(default_factory=list)

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

    def effect(self, first: str = "top_off", second: str = "random_off", value: str = "hit",
               confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> dict:
        """Effect size of condition ``first`` over ``second`` on the same prompts, with its interval.

        Args:
            first: the steered condition (one run).
            second: the control: ``"random_off"``/``"random_switch"`` (runs averaged per prompt) or
                ``"baseline"``.
            value: ``"hit"`` (the effect is a difference of rates) or ``"score"`` (of mean scores).
            confidence, resamples, seed: of the bootstrap interval (:func:`~workbench.steering.stats.paired_effect`).

        Returns:
            ``{"first", "second", "value", "effect", "ci_low", "ci_high", "p", "n", "groups", "runs"}``.
        """
        if value not in ("hit", "score"):
            raise ValueError(f"value must be 'hit' or 'score', got {value!r}")
        conts = self.continuations
        ran = set(conts.condition)
        missing = [c for c in (first, second) if c not in ran]
        if missing:
            raise ValueError(f"conditions {missing} were not run; this experiment has {sorted(ran)}")
        table = conts.pivot_table(index="prompt_id", columns=["condition", "seed"], values=value, aggfunc="first")
        x = table[first].to_numpy(dtype=float)
        if x.shape[1] != 1:
            raise ValueError(f"{first!r} has {x.shape[1]} runs; give the single steered condition first")
        groups = None
        if "group" in conts.columns:
            groups = conts[conts.condition == first].set_index("prompt_id").group.reindex(table.index).to_numpy()
        result = paired_effect(x[:, 0], table[second].to_numpy(dtype=float), confidence, resamples, seed, groups)
        return {"first": first, "second": second, "value": value, **result}

    def effects(self, confidence: float = 0.95) -> pd.DataFrame:
        """:meth:`effect` for every pair of :data:`CONTRASTS` that ran, on hits and on scores."""
        ran = set(self.table.condition)
        rows = [self.effect(a, b, value, confidence) for a, b in CONTRASTS if {a, b} <= ran
                for value in ("hit", "score")]
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
            "".join(f"{c:>12}" for c in ppl_cols)
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
        if self.activated:
            lines.append(f"switch: on {_pairs_text(self.activated)}; off {_pairs_text(self.top)}")
        effects = self.effects()
        for r in effects.itertuples():
            unit = "rate points" if r.value == "hit" else "mean score"
            lines.append(f"effect {r.first} - {r.second} ({unit}): {r.effect:+.3f} "
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] (95% CI, bootstrap over {r.n} prompts"
                         f"{f' in {r.groups} documents' if r.groups < r.n else ''}"
                         f"{f' and {r.runs} random runs' if r.runs > 1 else ''}), sign-flip p={r.p:.2g}")
        if ppl_cols:
            lines.append("(columns after 'change': held-out perplexity per domain under each condition)")
        return lines

    def __repr__(self) -> str:
        return "SteeringExperiment(\n  " + "\n  ".join(self.report_lines()) + "\n)"


def run_experiment(lm, prompts: Sequence[str], experts, behaviour, *, n: int | None = None,
                   seeds: Sequence[int] = (0, 1, 2), mode: str = "next_best", on_weight: float | None = None,
                   quality: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                   max_new_tokens: int = 24, batch_size: int = 8, conditions: Sequence[str] | None = None,
                   quality_max_length: int = 256, generation: Mapping | None = None, progress: bool = True,
                   callback: Callable[[int, int, str], None] | None = None, preset: str | None = None,
                   activate=None, on_mechanism: str | None = None, groups=None) -> SteeringExperiment:
    """Run the controlled experiment.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        prompts: prompts whose continuations are scored.
        experts: ranked ``(layer, expert)`` pairs, or an :class:`~workbench.steering.contrast.ExpertContrast`.
        behaviour: a callable ``text -> bool`` or a built-in name (see :mod:`~workbench.steering.behaviour`).
        n: how many of the ranked experts to steer (default: all given, or 10 from a contrast).
        seeds: one random-experts control per seed.
        mode: switch-off semantics, ``"next_best"`` or ``"empty"``.
        on_weight: weight of forced experts in ``top_on`` (None = the offset mechanism, see
            :func:`~workbench.steering.steering_specs`).
        quality: texts for the held-out perplexity check, ``{label: texts}`` or a list.
        max_new_tokens, batch_size: generation settings (greedy).
        conditions: which of :data:`ALL_CONDITIONS` to run (default: the preset's).
        quality_max_length: tokens per quality text.
        generation: more options for :func:`~workbench.steering.generate` (e.g. ``{"do_sample": True,
            "seed": 0}`` or ``{"repetition_penalty": 1.3}``); the same for every condition.
        progress: show a progress bar.
        callback: called as ``callback(done, total, condition)`` after each run (e.g. a widget's bar).
        preset: ``"workbench"`` (default) or ``"steermoe"`` (:mod:`~workbench.steering.presets`): with
            a contrast, ``"steermoe"`` ranks by risk difference and switches the ``activate`` most
            set-B experts on and the ``n`` most set-A experts off in one edit.
        activate: for ``switch``: the experts to switch on, as pairs, or (with a contrast) how many
            of set B's (default :data:`~workbench.steering.presets.DEFAULT_ACTIVATE`); at most ``k``
            per layer are kept.
        on_mechanism: for ``top_on``: ``"offset"`` or ``"force"`` (see :func:`~workbench.steering.steering_specs`).
        groups: the document each prompt was cut from (default: ``prompts.groups`` of a
            :class:`~workbench.steering.prompts.PromptList`, else one group per prompt); effect
            intervals resample groups.
    """
    chosen_preset = get_preset(preset)
    conditions = tuple(chosen_preset.conditions if conditions is None else conditions)
    unknown = [c for c in conditions if c not in ALL_CONDITIONS]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; choose from {ALL_CONDITIONS}")
    switching = bool({"switch", "random_switch"} & set(conditions))
    from_contrast = hasattr(experts, "top")
    on: list = []
    if activate is not None and not isinstance(activate, int):
        on = fit_to_k(activate, lm.top_k)
    if from_contrast and switching:
        count = activate if isinstance(activate, int) else DEFAULT_ACTIVATE
        picked, experts = select_steermoe(experts, count, n or 10, lm.top_k, by=chosen_preset.rank_by)
        on = on or picked
        if not experts:
            raise ValueError(f"no expert has a positive {chosen_preset.rank_by} (set A uses none more); nothing "
                             "to switch off")
        n = len(experts)
    elif from_contrast:
        experts = experts.top(n or 10, by=chosen_preset.rank_by)
    if switching and not on:
        raise ValueError("switch conditions need experts to activate: activate=[(layer, expert), ...], or a "
                         "contrast as experts (its set-B experts are activated)")
    ranked = as_pairs(experts)
    n = len(ranked) if n is None else int(n)
    if not 1 <= n <= len(ranked):
        raise ValueError(f"n={n} must be between 1 and the {len(ranked)} experts given")
    top = ranked[:n]
    score = resolve_behaviour(behaviour)
    probability = getattr(score, "probability", None)
    groups = list(getattr(prompts, "groups", range(len(prompts))) if groups is None else groups)
    prompts = list(prompts)
    if len(groups) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} groups")
    if isinstance(quality, (list, tuple)):
        quality = {"heldout": list(quality)}
    quality = dict(quality or {})
    runs = [("baseline", -1, [], "")] * ("baseline" in conditions)
    runs += [("top_off", -1, steering_specs(lm, top, "off", mode), _pairs_text(top))] * ("top_off" in conditions)
    for s in seeds if "random_off" in conditions else ():
        drawn = random_experts(lm, n, seed=int(s), exclude=top)
        runs.append(("random_off", int(s), steering_specs(lm, drawn, "off", mode), _pairs_text(drawn)))
    if "top_on" in conditions:
        kept = fit_to_k(top, lm.top_k)
        runs.append(("top_on", -1, steering_specs(lm, kept, "on", weight=on_weight, on_mechanism=on_mechanism),
                     _pairs_text(kept)))
    if "switch" in conditions:
        runs.append(("switch", -1, switch_specs(lm, on, top, chosen_preset.margin), _switch_text(on, top)))
    for s in seeds if "random_switch" in conditions else ():
        r_on, r_off = random_switch(lm, len(on), len(top), seed=int(s), exclude=list(on) + list(top))
        runs.append(("random_switch", int(s), switch_specs(lm, r_on, r_off, chosen_preset.margin),
                     _switch_text(r_on, r_off)))
    rows, texts = [], []
    bar = tqdm(total=len(runs), desc="steering experiment", disable=not progress)
    for done, (condition, seed, specs, experts_text) in enumerate(runs, 1):
        with _edit_context(lm, specs):
            outs = generate(lm, prompts, max_new_tokens, batch_size=batch_size, **dict(generation or {}))
            ppl = {label: perplexity(lm, qt, max_length=quality_max_length, batch_size=batch_size)
                   for label, qt in quality.items()}
        hits = [_hit(score(o)) for o in outs]
        scores = [_score(probability, o, h) for o, h in zip(outs, hits)]
        low, high = wilson_interval(sum(hits), len(hits))
        rows.append({"condition": condition, "seed": seed, "n": len(hits), "hits": sum(hits),
                     "rate": sum(hits) / len(hits), "ci_low": low, "ci_high": high,
                     "experts": experts_text, **{f"ppl_{k}": v for k, v in ppl.items()}})
        texts += [{"condition": condition, "seed": seed, "prompt_id": i, "group": g, "prompt": p, "continuation": o,
                   "hit": h, "score": v} for i, (p, g, o, h, v) in enumerate(zip(prompts, groups, outs, hits, scores))]
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
    settings = dict(preset=chosen_preset.name, n=n, seeds=list(seeds), mode=mode, on_weight=on_weight,
                    max_new_tokens=max_new_tokens, generation=dict(generation or {}), activated=_pairs_text(on),
                    prompts=len(prompts), quality={k: len(v) for k, v in quality.items()})
    return SteeringExperiment(table, pd.DataFrame(texts), top, behaviour_name(behaviour), settings, activated=on)


def _edit_context(lm, specs):
    """``workbench.edit(lm, *specs)``, or a no-op context when there are none."""
    import contextlib

    import workbench as wb

    return wb.edit(lm, *specs) if specs else contextlib.nullcontext()


def _score(probability, text: str, hit: bool) -> float:
    if probability is None:
        return float(hit)
    return float(probability(text)) if text.strip() else 0.0


def _hit(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"a behaviour must return a bool or a float in [0, 1], got {value}")
    return value >= 0.5
