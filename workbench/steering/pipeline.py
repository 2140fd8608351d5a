"""The whole steering job on two prompt sets: rank, steer, measure, write the folder.

This is what ``python -m workbench steer`` runs. The default behaviour is "the continuation of a
set-A prompt looks like set A": a character n-gram classifier fitted on the full texts of both sets
decides, and ``rate`` is the share of continuations it assigns to A. ``preset="workbench"`` (the
default) runs MoTE's design on Welch-t ranked experts; ``preset="steermoe"`` runs SteerMoE's: experts
ranked by risk difference, set B's ``activate`` experts switched on and set A's ``top`` experts off in
one edit, against as many random experts (:mod:`~workbench.steering.presets`).

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.steering.pipeline import steer_sets
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> a = ["Der Hund ist hier und da", "Die Katze ist nicht da", "Das Haus ist groß und alt"]
    >>> b = ["The dog is here and there", "The cat is not there", "The house is big and old"]
    >>> out = tempfile.mkdtemp()
    >>> contrast, exp = steer_sets(lm, a, b, top=2, out=out, seeds=(0,), max_new_tokens=3,
    ...                            prompt_tokens=3, permutations=50, progress=False)
    >>> sorted(p.name for p in __import__("pathlib").Path(out).iterdir())[:2]
    ['continuations.csv', 'experiment.csv']
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from workbench.steering.behaviour import set_behaviour
from workbench.steering.contrast import find_experts
from workbench.steering.experiment import run_experiment
from workbench.steering.presets import DEFAULT_ACTIVATE, get_preset, select_steermoe
from workbench.steering.prompts import cut_prompt


def steer_sets(lm, a_texts: Sequence[str], b_texts: Sequence[str], *, top: int = 10, out=None,
               prompt_tokens: int | None = 16, seeds: Sequence[int] = (0, 1, 2), mode: str = "next_best",
               on_weight: float | None = None, max_new_tokens: int = 24, measure: str = "count",
               test: str = "permutation", permutations: int = 1000, quality_max_length: int = 128,
               batch_size: int = 8, behaviour=None, figures: bool = False, progress: bool = True,
               preset: str | None = None, activate: int | None = None):
    """Rank experts by set A vs set B, then run :func:`~workbench.steering.run_experiment` on set A.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        a_texts, b_texts: the two sets (full texts; prompts are their first ``prompt_tokens`` tokens).
        top: N, the experts to steer.
        out: folder for ``experts.csv``, ``experiment.csv``, ``summary.csv``, ``continuations.csv``,
            ``settings.json`` (and ``contrast.html``, ``experiment.html`` with ``figures``); None =
            write nothing.
        prompt_tokens: tokens per prompt (None = the whole text is the prompt).
        seeds: random-control seeds.
        mode, on_weight, max_new_tokens: steering and generation settings.
        measure, test, permutations: contrast settings (:func:`~workbench.steering.contrast_experts`).
        quality_max_length: tokens of each set-B text in the perplexity check.
        batch_size: prompts per forward pass.
        behaviour: override the default classifier (a callable or a built-in name).
        figures: also write the two figures as standalone HTML.
        progress: progress bars.
        preset: ``"workbench"`` (default) or ``"steermoe"`` (ranking, mechanism and conditions).
        activate: with ``"steermoe"``: how many set-B experts to switch on (at most ``k`` per layer
            are kept; default :data:`~workbench.steering.presets.DEFAULT_ACTIVATE`); ``top`` set-A
            experts are switched off.

    Returns:
        ``(ExpertContrast, SteeringExperiment)``.
    """
    a_texts, b_texts = [str(t) for t in a_texts], [str(t) for t in b_texts]
    if len(a_texts) < 2 or len(b_texts) < 2:
        raise ValueError(f"each set needs at least 2 texts (got {len(a_texts)} and {len(b_texts)})")
    if prompt_tokens:
        a_prompts = [cut_prompt(t, lm.tokenizer, prompt_tokens) for t in a_texts]
        b_prompts = [cut_prompt(t, lm.tokenizer, prompt_tokens) for t in b_texts]
    else:
        a_prompts, b_prompts = a_texts, b_texts
    chosen_preset = get_preset(preset)
    contrast = find_experts(lm, {"A": a_prompts, "B": b_prompts}, a="A", b="B", measure=measure, test=test,
                            permutations=permutations, batch_size=batch_size, progress=progress,
                            rank_by=chosen_preset.rank_by)
    total = len(lm.moe_layers) * lm.num_experts
    if not 1 <= top <= total // 2:
        raise ValueError(f"top={top} must be between 1 and {total // 2} (half of this model's {total} experts, "
                         "so that random controls exist)")
    if behaviour is None:
        behaviour = set_behaviour(a_texts, b_texts, name="classified as set A")
    chosen = contrast.top(top)  # only experts set A uses more: fewer than `top` when fewer have a positive effect
    if not chosen:
        raise ValueError("no expert is activated more by set A than by set B; nothing to steer (give sets that "
                         "differ, or more prompts)")
    if len(chosen) < top:
        warnings.warn(f"only {len(chosen)} experts are activated more by set A than by set B; steering those "
                      f"instead of top={top}", stacklevel=2)
    options = {}
    if chosen_preset.combined:
        on, _ = select_steermoe(contrast, DEFAULT_ACTIVATE if activate is None else int(activate), 0, lm.top_k)
        if not on:
            raise ValueError("no expert is activated more by set B than by set A, so the steermoe preset has "
                             "nothing to switch on (give sets that differ, and activate >= 1)")
        options = dict(activate=on, preset=chosen_preset)
    experiment = run_experiment(lm, a_prompts, chosen,
                                behaviour, seeds=seeds, mode=mode, on_weight=on_weight,
                                quality={"b": b_texts}, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                quality_max_length=quality_max_length, progress=progress, **options)
    if out is not None:
        out = Path(out)
        experiment.save(out)
        contrast.save(out / "experts.csv")
        if figures:
            contrast.plot().write_html(out / "contrast.html")
            experiment.plot().write_html(out / "experiment.html")
    return contrast, experiment
