"""Self-contrast decoding (SCMoE, Shi et al. 2024): contrast a model's default routing with a weak
routing of the same model, both run as two rows of one batch.

* :func:`generate` — SCMoE, greedy or sampled, one forward pass of batch 2 per step
  (:mod:`~workbench.contrast.decode`); :func:`generate_greedy` — the baseline with the same loop.
* :func:`generate_two_pass` — the plain reference, two passes and two caches per step.
* :func:`contrast_scores` — the score ``(1+β)·log p_s − β·log p_w`` under the plausibility cut
  ``p_s ≥ α·max p_s`` (:mod:`~workbench.contrast.scoring`).
* Weak routings: ``"rank2"`` (default), ``"rankN"``, ``"top1"``, ``"random"`` (:class:`RandomExpert`)
  or any routing spec (:mod:`~workbench.contrast.weak`).
* :meth:`Generation.explain` — per-token strong/weak candidates and whether the contrast changed the
  choice (:mod:`~workbench.contrast.explain`); :mod:`~workbench.contrast.render` shows greedy and SCMoE
  side by side as HTML, and :class:`workbench.widgets.contrast.ContrastPanel` makes it interactive.
* :mod:`~workbench.contrast.evaluate` — exact-match accuracy (GSM8K-style extraction) and ms per token
  of greedy vs SCMoE on a JSONL task file; ``python -m workbench contrast`` runs it.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import contrast
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> g = contrast.generate(lm, "def add(a, b):", max_new_tokens=4)
    >>> list(g.explain().columns[:4])
    ['step', 'token', 'token_id', 'strong_choice']
"""

from workbench.contrast.decode import generate, generate_greedy
from workbench.contrast.reference import generate_two_pass
from workbench.contrast.result import Generation
from workbench.contrast.scoring import contrast_scores, plausible_mask
from workbench.contrast.weak import WEAK_CHOICES, RandomExpert, weak_spec

__all__ = ["WEAK_CHOICES", "Generation", "RandomExpert", "contrast_scores", "generate", "generate_greedy",
           "generate_two_pass", "plausible_mask", "weak_spec"]
