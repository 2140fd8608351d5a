"""What attaches to a live model: recording hooks, routing edits, the nnsight bridge."""

from workbench.probes.edits import Force, KeepRank, Mask, Skip, Spec, TopK, TopP, edit
from workbench.probes.record import record

__all__ = ["Force", "KeepRank", "Mask", "Skip", "Spec", "TopK", "TopP", "edit", "record"]
