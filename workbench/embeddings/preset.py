"""The MoEE paper preset: the reference code's prompts, RW unit and standardisation, exactly.

With identical prompts and units the workbench's HS and RW equal the reference's (cosine 1.0). Its
*defaults* differ, and ``MoEEmbedder(lm, preset="moee")`` switches every one of them to the reference
(tianyi-lab/MoE-Embedding at f80bebd):

* **prompts** — ``moee.py`` lines 195-208: the sentence gets a ``"."`` unless it ends in one of
  ``. ? ! " '``, its ``"`` become ``'``, it is put into the template, every ``_`` of the prompt
  becomes a space and the prompt is stripped. The plain template is ``"<text>"`` in double quotes
  (line 177), PromptEOL ``This sentence : "<text>" means in one word:"`` (line 175). The workbench
  default embeds the text as it is (template ``"{text}"``, no rewriting).
* **RW unit** — what the modified modelling code returns from each router: the raw router logits
  for Qwen-MoE and OLMoE (``models/modeling_qwen2_moe.py`` line 794, ``models/modeling_olmoe.py``
  line 723), the softmax scores for DeepSeek-MoE, whose gate computes them
  (``models/modeling_deepseek.py`` lines 306-320). The workbench default is ``"probs"`` (the softmax
  over all experts for every softmax family), so that one unit means one thing across families.
* **standardisation** — ``moee.py`` lines 230-241: within each ``encode`` batch (64 texts, the
  ``--batch_size`` default of ``eval_mteb.py`` line 1095), every dimension is z-scored with that
  batch's mean and (unbiased) standard deviation plus ``1e-8``; NaN becomes 0 (lines 271-273). HS
  alone is not standardised (line 230), RW is, and so are both parts and their concatenation for
  MoEE. MoEE (sum) is the sum of the cosines of the z-scored parts (e.g.
  ``mteb/evaluation/evaluators/STSEvaluator.py`` lines 79-91). The workbench default fits the
  statistics once on reference texts, so a text's vector never depends on the texts batched with it.

Not reproduced: for classification and clustering the reference's MoEE (sum) averages the *label
ids* predicted from HS and from RW (``ClassificationEvaluator.py`` lines 351-358,
``ClusteringEvaluator.py`` lines 76-96), which is not a label for more than two classes; the
workbench classifies and clusters the sum vectors instead. Task instructions (``eval_mteb.py``'s e5
set in GritLM format) are MTEB-task specific and left to the caller (prepend them to the texts).

Example:
    >>> from workbench.embeddings.preset import moee_prompt
    >>> moee_prompt('He said "hi"', "none"), moee_prompt("snake_case names", "prompteol")
    ('"He said \\'hi\\'"', 'This sentence : "snake case names." means in one word:"')
"""

from __future__ import annotations

import numpy as np

#: the reference's templates (``*sent 0*`` written as ``{text}``)
MOEE_TEMPLATES = {
    "none": '"{text}"',
    "prompteol": 'This sentence : "{text}" means in one word:"',
}
PRESETS = ("moee",)
ZSCORE_BATCH = 64
ZSCORE_EPS = 1e-8


def check_preset(preset) -> str | None:
    """``preset`` if it is None or a known name, else a ValueError listing the names."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown embedding preset {preset!r}; choose None (the workbench default) or "
                         f"{', '.join(map(repr, PRESETS))}")
    return preset


def resolve_moee_template(template: str | None) -> str:
    """The reference template for a name (``"none"``, ``"prompteol"``) or a custom ``{text}`` string."""
    from workbench.embeddings.templates import resolve_template

    if template is None:
        return MOEE_TEMPLATES["none"]
    if isinstance(template, str) and template.lower() in MOEE_TEMPLATES:
        return MOEE_TEMPLATES[template.lower()]
    return resolve_template(template)


def moee_prompt(text: str, template: str | None = "none") -> str:
    """The prompt the reference builds from ``text`` (see the module docstring for the rules)."""
    sent = text
    if sent and sent[-1] not in ".?!\"'":
        sent += "."
    sent = sent.replace('"', "'")
    return resolve_moee_template(template).replace("{text}", sent).replace("_", " ").strip()


def reference_unit(lm) -> str:
    """The RW unit of the reference for this model: ``"probs"`` for DeepSeek families (their gate
    returns scores), else ``"logits"``."""
    model_type = str(getattr(lm.config, "model_type", ""))
    return "probs" if model_type.startswith("deepseek") else "logits"


def batch_zscore(x, batch_size: int = ZSCORE_BATCH) -> np.ndarray:
    """``x [N, D]`` z-scored within consecutive batches of ``batch_size`` rows, as the reference does.

    Each batch's mean and unbiased standard deviation (``torch.std``), ``+ 1e-8``; NaN (a batch of
    one row) becomes 0. Float32 in, float32 out.

    Example:
        >>> batch_zscore(np.array([[1.0], [3.0], [5.0]]), batch_size=2).astype(float).round(3).tolist()
        [[-0.707], [0.707], [0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.zeros_like(x)
    for s in range(0, x.shape[0], int(batch_size)):
        part = x[s:s + int(batch_size)]
        if part.shape[0] > 1:
            out[s:s + len(part)] = (part - part.mean(axis=0)) / (part.std(axis=0, ddof=1) + ZSCORE_EPS)
        else:  # the reference's unbiased std of one row is NaN, and NaN becomes 0
            out[s:s + len(part)] = 0.0
    return np.nan_to_num(out, nan=0.0).astype(np.float32)
