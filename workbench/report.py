"""The main job: record the demo model's held-out corpus and write a report folder.

This first version writes the trace and an expert-load CSV; the analyses, figures and
``index.html`` grow with the views (see ``workbench.views``).
"""

from __future__ import annotations

import json
from pathlib import Path


def demo_texts(sample: int | None = None):
    """The held-out demo corpus shipped with the package: ``(texts, labels)``."""
    from workbench.demo import DATA_DIR

    path = DATA_DIR / "heldout.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if sample is not None:
        rows = rows[:sample]
    return [r["text"] for r in rows], [r.get("label") for r in rows]


def run_demo(out: Path, source: str = "demo", sample: int | None = None, progress: bool = True) -> Path:
    """Record and write the report folder ``out``; returns it."""
    import workbench as wb
    from workbench.demo import checkpoint_available

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source == "demo" and not checkpoint_available():
        from workbench.testing import tiny_model

        print("NOTE: the trained demo checkpoint is not in this installation yet; running on a tiny "
              "random Qwen3-MoE built from a config (routing is meaningless).")
        lm = wb.wrap(*tiny_model("qwen3_moe"), source="tiny-qwen3_moe")
    else:
        lm = wb.load(source)
    print(f"model: {lm!r}")
    corpus = demo_texts(sample)
    if corpus is None:
        texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
                 "Der schnelle braune Fuchs springt.", "12 + 34 = 46"]
        labels = ["english", "code", "german", "arithmetic"]
    else:
        texts, labels = corpus
    trace = wb.record(lm, texts, labels=labels, progress=progress)
    trace.save(out / "trace")
    frame = trace.to_dataframe()
    load = frame.groupby(["layer", "expert"]).agg(tokens=("t", "size"), weight=("weight", "sum")).reset_index()
    load["share"] = load.tokens / load.groupby("layer").tokens.transform("sum")
    load.to_csv(out / "expert_load.csv", index=False)
    print(f"{trace!r}\nwrote {out / 'trace'} and {out / 'expert_load.csv'}")
    return out
