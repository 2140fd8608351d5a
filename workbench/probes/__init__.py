"""What attaches to a live model: recording hooks, routing edits, the nnsight bridge."""

from workbench.probes.edits import Force, ForceSlot, KeepRank, Mask, Offset, Skip, Spec, TopK, TopP, edit
from workbench.probes.nnsight_bridge import NNsightRouting, apply_edits, record_routing, to_nnsight
from workbench.probes.record import record

__all__ = ["Force", "ForceSlot", "KeepRank", "Mask", "NNsightRouting", "Offset", "Skip", "Spec", "TopK", "TopP",
           "apply_edits", "edit", "record", "record_routing", "to_nnsight"]
