"""Expert pruning and dynamic skipping (Lu et al., "Not All Experts are Equal", ACL 2024).

* :class:`Pruner` — capture layer caches over calibration text once, then choose the experts each
  layer keeps: exhaustive enumeration of ``L(S) = sum_b ||Z_b - Z_hat_S,b||_F`` scored through
  recombine (beam/greedy search above a switch-over size), the progressive variant, and the
  least-frequently-routed and random baselines. Returns a :class:`PruningResult`.
* :meth:`PruningResult.apply` / :func:`prune_model` — the pruned model in memory;
  :meth:`PruningResult.save_checkpoint` — a checkpoint with fewer experts that plain transformers loads.
* :func:`calibrate_skipping` — per-layer thresholds ``beta_l`` (:class:`SkipCalibration`), applied as
  a ``wb.Skip`` edit, saved in a checkpoint's config and re-applied by ``workbench.load``.
* :func:`perplexity`, :func:`compare`, :func:`speed` — held-out evaluation and timing.
* :func:`demo_split` — the demo's held-out documents split into calibration and evaluation parts.
* ``preset="lu2024"`` (of :class:`Pruner` and :func:`calibrate_skipping`) — Lu et al.'s calibration
  units, their code's stream of fixed blocks (:class:`StreamBlocks`, :mod:`workbench.pruning.presets`);
  the default chunks each document on its own.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench import pruning
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b"]
    >>> result = pruning.Pruner(lm, texts, progress=False).prune(keep=4)
    >>> small = result.apply(lm)
    >>> small.num_experts, sorted(result.kept) == lm.moe_layers
    (4, True)
    >>> beta = pruning.calibrate_skipping(small, texts, progress=False)
    >>> sorted(beta.to_dataframe().columns)
    ['beta', 'layer', 'skip_rate', 'threshold', 'tokens']
"""

from workbench.pruning.calibration import demo_split
from workbench.pruning.evaluate import compare, perplexity, ppl_table, speed
from workbench.pruning.plots import kept_map, loss_plot, ppl_plot, skip_plot
from workbench.pruning.presets import PRESETS, StreamBlocks, stream_blocks
from workbench.pruning.pruner import METHODS, Pruner, keep_count, prune
from workbench.pruning.result import PruningResult
from workbench.pruning.search import LayerChoice
from workbench.pruning.skipping import SkipCalibration, calibrate_skipping, saved_skipping_off
from workbench.pruning.slicing import UnsupportedPruning, prune_model, save_pruned
from workbench.pruning.subsets import Groups, PruningConstraintError

__all__ = ["METHODS", "PRESETS", "Groups", "LayerChoice", "Pruner", "PruningConstraintError", "PruningResult",
           "SkipCalibration", "StreamBlocks", "UnsupportedPruning", "calibrate_skipping", "compare", "demo_split",
           "keep_count", "kept_map", "loss_plot", "perplexity", "ppl_plot", "ppl_table", "prune", "prune_model",
           "save_pruned", "saved_skipping_off", "skip_plot", "speed", "stream_blocks"]
