"""Publishing the coverage matrix: the CSV the package ships and the table in the docs.

Example:
    >>> from workbench.families.publish import summary
    >>> summary([{"model_type": "mixtral", "status": "exact"}, {"model_type": "x", "status": "not moe"}])
    '1 MoE model types: 1 recorded and edited exactly, 0 recorded only, 0 refused, 0 not built'
"""

from __future__ import annotations

import csv
from pathlib import Path

from workbench.families.matrix import FIELDS, MATRIX_CSV

DOCS_TABLE = Path(__file__).resolve().parents[2] / "docs" / "supported_models.md"
MOE_STATUSES = ("exact", "recorded only", "refused", "not built", "error")


def moe_rows(rows: list[dict]) -> list[dict]:
    """The rows of MoE types (vision/audio sub-configs without experts left out)."""
    return [r for r in rows if r.get("status") in MOE_STATUSES]


def summary(rows: list[dict]) -> str:
    """One line: how many MoE types, and how many in each state."""
    moe = moe_rows(rows)
    count = {s: sum(r["status"] == s for r in moe) for s in MOE_STATUSES}
    return (f"{len(moe)} MoE model types: {count['exact']} recorded and edited exactly, "
            f"{count['recorded only']} recorded only, {count['refused']} refused, "
            f"{count['not built'] + count['error']} not built")


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the matrix, one line per model type."""
    lines = [f"{'model type':28s} {'status':14s} {'adapter':10s} {'rule / reason'}"]
    for r in rows:
        detail = r.get("rule") or ""
        if r.get("status") != "exact":
            detail = r.get("edits") if r.get("status") == "recorded only" else r.get("reason", "")
        lines.append(f"{r['model_type']:28s} {r['status']:14s} {r.get('adapter') or '-':10s} {str(detail)[:110]}")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    """The supported-models page: the summary line and one table row per MoE type."""
    head = ["# Supported models", "",
            "Computed by `python -m workbench families --write` on the installed transformers: a tiny random model of",
            "every model type with routed experts is built from its own config class and checked (recording equals what",
            "the experts received; every edit routes with the identified rule and restores the model bit-exactly; a",
            "pruned checkpoint reloads in plain transformers, or is refused with a reason).", "",
            summary(rows), "",
            "| model type | status | adapter | rule | pruning | notes |", "|---|---|---|---|---|---|"]
    body = []
    for r in moe_rows(rows):
        notes = r.get("reason", "") if r["status"] != "recorded only" else r.get("edits", "")
        cells = [r["model_type"], r["status"], r.get("adapter", ""), r.get("rule", ""),
                 (r.get("pruning") or "").split(":")[0], notes]
        body.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(head + body) + "\n"


def write_matrix(rows: list[dict], csv_path: Path = MATRIX_CSV, docs_path: Path = DOCS_TABLE) -> list[Path]:
    """Write the CSV (every row, fixed columns, sorted by type) and the docs page."""
    rows = sorted(rows, key=lambda r: r["model_type"])
    with Path(csv_path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = [Path(csv_path)]
    if docs_path is not None:
        Path(docs_path).parent.mkdir(parents=True, exist_ok=True)
        Path(docs_path).write_text(markdown(rows))
        written.append(Path(docs_path))
    from workbench.families.matrix import load_matrix

    load_matrix.cache_clear()
    return written
