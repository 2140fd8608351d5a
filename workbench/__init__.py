"""moe-workbench: record, view and edit the routing of Mixture-of-Experts language models.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> trace = wb.record(lm, ["The quick brown fox"], progress=False)
    >>> with wb.edit(lm, wb.Mask({0: [0]})):
    ...     edited = wb.record(lm, ["The quick brown fox"], progress=False)
    >>> bool((edited.topk_idx[0] != 0).all())
    True
"""

from workbench import analysis  # noqa: F401  (wb.analysis.expert_tokens, ... without a separate import)
from workbench.adapters import (Adapter, UnsupportedModelError, adapter_for, get_adapter, register,
                                registered_model_types, supported_model_types)
from workbench.kernels import RoutingRule
from workbench.loading import MoEModel, describe, load, wrap
from workbench.probes import Force, ForceSlot, KeepRank, Mask, Offset, Skip, Spec, TopK, TopP, edit, record
from workbench.pruning import Pruner, PruningResult, SkipCalibration, calibrate_skipping, prune_model
from workbench.store import StoreBusyError, StoredTrace, StoreError, convert_trace, open_trace
from workbench.trace import RoutingTrace, TraceMismatchError

__version__ = "0.1.0"

__all__ = [
    "Adapter", "adapter_for", "describe", "registered_model_types", "Force", "ForceSlot", "KeepRank", "Mask", "MoEModel", "Offset", "RoutingRule", "RoutingTrace", "Skip", "Spec",
    "TopK", "TopP", "TraceMismatchError", "UnsupportedModelError", "edit", "get_adapter", "load",
    "record", "register", "supported_model_types", "wrap",
    "Pruner", "PruningResult", "SkipCalibration", "calibrate_skipping", "prune_model",
    "StoreBusyError", "StoreError", "StoredTrace", "convert_trace", "open_trace",
]
