"""Expert steering in the style of MoTE (Dahlke et al., 2025) and SteerMoE (Fayyaz et al., 2025):
find behaviour-linked experts by contrasting prompt sets, switch them off or on, and measure against
random controls. ``preset="steermoe"`` reproduces SteerMoE's definitions (:mod:`~workbench.steering.presets`).

=====================================  ========================================================
:func:`find_experts`                   record labelled prompt sets and rank experts (fTRI)
:func:`contrast_experts`               the same on an existing labelled trace
:func:`activation_maps`                per-prompt layer × expert activation maps
:func:`contrast_heatmap`               layer × expert heatmap of the contrast
:func:`steer`                          context manager: experts off (two semantics) or on
:func:`switch`                         context manager: some experts on, others off, in one edit
:func:`generate` / :func:`compare`     continuations, with and without steering
:func:`run_experiment`                 baseline / top-N off / random-N off / top-N on (or SteerMoE's
                                       switch / random switch), with CIs and effect sizes
``PRESETS``                            ``"workbench"`` (default) and ``"steermoe"``
:func:`perplexity`                     the quality check under any edit
``behaviour``                          built-in scores: language, code, set classifier
=====================================  ========================================================

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import steering
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> sets = {"de": ["Der Hund ist", "Die Katze ist"], "en": ["The dog is", "The cat is"]}
    >>> found = steering.find_experts(lm, sets, a="de", permutations=50)
    >>> top = found.top(2)
    >>> exp = steering.run_experiment(lm, sets["de"], top, steering.set_behaviour(sets["de"], sets["en"]),
    ...                               seeds=(0,), max_new_tokens=3, progress=False)
    >>> exp.summary().condition.tolist()
    ['baseline', 'top_off', 'random_off', 'top_on']
"""

from workbench.steering.behaviour import (
    BEHAVIOURS,
    NgramClassifier,
    code_score,
    detect_language,
    is_code,
    resolve_behaviour,
    set_behaviour,
)
from workbench.steering.contrast import ExpertContrast, activation_maps, contrast_experts, find_experts
from workbench.steering.experiment import (
    ALL_CONDITIONS,
    CONDITIONS,
    SteeringExperiment,
    perplexity,
    run_experiment,
)
from workbench.steering.presets import PRESETS, Preset, get_preset, select_steermoe
from workbench.steering.plot import contrast_heatmap, experiment_plot
from workbench.steering.prompts import cut_prompt, demo_rows, prompt_sets, read_jsonl_texts
from workbench.steering.steer import (
    as_layer_map,
    as_pairs,
    compare,
    fit_to_k,
    generate,
    random_experts,
    random_switch,
    steer,
    steering_specs,
    switch,
    switch_specs,
)

__all__ = [
    "ALL_CONDITIONS", "PRESETS", "Preset", "get_preset", "random_switch", "select_steermoe", "switch", "switch_specs",
    "BEHAVIOURS", "CONDITIONS", "ExpertContrast", "NgramClassifier", "SteeringExperiment", "activation_maps",
    "as_layer_map", "as_pairs", "code_score", "compare", "contrast_experts", "contrast_heatmap", "cut_prompt",
    "demo_rows", "detect_language", "experiment_plot", "find_experts", "fit_to_k", "generate", "is_code",
    "perplexity", "prompt_sets", "random_experts", "read_jsonl_texts", "resolve_behaviour", "run_experiment",
    "set_behaviour", "steer", "steering_specs",
]
