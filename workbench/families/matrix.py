"""The published coverage matrix: which MoE model types the workbench records and edits exactly.

``coverage.csv`` beside this file is written by ``python -m workbench families --write`` (see
:mod:`workbench.families.coverage`) and checked against a fresh run by the test suite, so it always
describes the installed transformers.

Example:
    >>> from workbench.families.matrix import FIELDS, verified_model_types
    >>> isinstance(verified_model_types(), list), FIELDS[:3]
    (True, ('model_type', 'model_class', 'status'))
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

MATRIX_CSV = Path(__file__).with_name("coverage.csv")
FIELDS = ("model_type", "model_class", "status", "recorded", "edits", "pruning", "rule", "adapter",
          "moe_layers", "experts", "top_k", "reason")


@functools.lru_cache(maxsize=1)
def load_matrix() -> list[dict]:
    """The rows of the published matrix (empty when it has not been written)."""
    if not MATRIX_CSV.exists():
        return []
    with MATRIX_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


def verified_model_types() -> list[str]:
    """Model types the published matrix reports as recorded and edited exactly."""
    return sorted(row["model_type"] for row in load_matrix() if row["status"] == "exact")
