"""The main job: record the demo model's held-out corpus, run every analysis, write a report folder.

``python -m workbench demo --out report`` (``make demo``) calls :func:`run_demo`, which writes::

    report/
      index.html            every figure (interactive), key tables, links; works offline
      figures/              one .html (interactive) and one .png per figure; plotly.min.js (shared)
      tables/               one .csv per analysis (sorted, fixed float format)
      trace/                the recorded routing trace: a store (Parquet shards; wb.open_trace)

When the trained demo checkpoint is not installed it says so and runs on a tiny random Qwen3-MoE
(the pipeline is the same; the routing means nothing). When Chromium is missing, PNGs are skipped
with a note on how to install it; HTML and CSV are written regardless.

Example:
    >>> from workbench.report import demo_corpus
    >>> texts, labels = demo_corpus(sample=4)
    >>> len(texts), len(set(labels)) > 1
    (4, True)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from workbench.views.report_sections import build_sections

#: Used when the held-out corpus is not installed (a tiny stand-in, four labels).
FALLBACK = [
    ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch.", "english"),
    ("She opened the window, looked at the rain and decided to stay home with a good book.", "english"),
    ("A man walks into a library and asks the librarian for books about paranoia.", "english"),
    ("Der schnelle braune Fuchs springt über den faulen Hund, und der Bauer sieht zu.", "german"),
    ("Heute regnet es in Berlin, deshalb bleiben wir zu Hause und lesen ein Buch.", "german"),
    ("Die Katze schläft auf dem Sofa, während draußen die Kinder im Garten spielen.", "german"),
    ("def add(a, b):\n    return a + b\n\nprint(add(2, 3))", "code"),
    ("for i in range(10):\n    if i % 2 == 0:\n        print(i)", "code"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y", "code"),
    ("12 + 34 = 46\n7 + 8 = 15\n50 + 25 = 75", "arithmetic"),
    ("91 + 9 = 100\n33 + 44 = 77\n18 + 27 = 45", "arithmetic"),
    ("6 + 7 = 13\n40 + 2 = 42\n99 + 1 = 100", "arithmetic"),
]


def _balanced(rows: list[dict], sample: int | None) -> list[dict]:
    """``sample`` rows taken round-robin over labels (file order within a label)."""
    if sample is None or sample >= len(rows):
        return rows
    if sample < 1:
        raise ValueError(f"sample must be at least 1, got {sample}")
    by_label: dict = {}
    for r in rows:
        by_label.setdefault(r.get("label"), []).append(r)
    queues = list(by_label.values())
    picked, i = [], 0
    while len(picked) < sample:
        queue = queues[i % len(queues)]
        if queue:
            picked.append(queue.pop(0))
        i += 1
    return picked


def demo_texts(sample: int | None = None):
    """The held-out demo corpus shipped with the package: ``(texts, labels)``, or None if absent.

    Args:
        sample: number of documents, taken round-robin over labels (default: all).
    """
    from workbench.demo import DATA_DIR

    path = DATA_DIR / "heldout.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = _balanced(rows, sample)
    return [r["text"] for r in rows], [r.get("label") for r in rows]


def demo_corpus(sample: int | None = None) -> tuple[list[str], list]:
    """:func:`demo_texts`, or the small :data:`FALLBACK` corpus when the held-out file is absent."""
    corpus = demo_texts(sample)
    if corpus is not None:
        return corpus
    rows = _balanced([{"text": t, "label": y} for t, y in FALLBACK], sample)
    return [r["text"] for r in rows], [r["label"] for r in rows]


def demo_model(source: str = "demo", device: str | None = None, dtype=None):
    """Load ``source``; for ``"demo"`` without the trained checkpoint, a tiny Qwen3-MoE (with a NOTE).

    Args:
        source: ``"demo"``, a checkpoint folder or a hub id.
        device: e.g. ``"cuda"`` (default: where ``wb.load`` puts it, the CPU).
        dtype: e.g. ``"bfloat16"`` for a large checkpoint on a GPU.
    """
    import workbench as wb
    from workbench.demo import checkpoint_available

    if source == "demo" and not checkpoint_available():
        from workbench.testing import tiny_model

        print("NOTE: the trained demo checkpoint is not in this installation yet; running on a tiny "
              "random Qwen3-MoE built from a config (routing is meaningless).")
        lm = wb.wrap(*tiny_model("qwen3_moe"), source="tiny-qwen3_moe")
        if device:
            lm.model.to(device)
        return lm
    return wb.load(source, device=device, dtype=dtype)


def analyse(trace, rule=None) -> dict:
    """Every trace analysis, by name (see :mod:`workbench.analysis`)."""
    from workbench import analysis as A

    counts = A.as_counts(trace)  # in memory: computed; a store: its cached one-pass aggregates
    vocab = A.vocab_specialization(trace)
    tables = {
        "expert_load": A.expert_load(counts), "load_summary": A.load_summary(counts),
        "label_specialization": A.label_specialization(counts),
        "specialization_scores": A.specialization_scores(counts),
        "vocab_specialization": vocab, "vocab_summary": A.vocab_summary(vocab),
        "coactivation": A.coactivation(counts),
    }
    if len(trace.layers) > 1:
        tables["layer_transitions"] = A.layer_transitions(trace)
    if trace.has_scores:
        tables["router_entropy"] = A.router_entropy(trace, rule)
    return tables


def norm_subset(texts, labels, per_label: int = 3):
    """A few texts of each label for the expert-output-norm analysis (it runs every expert)."""
    seen: dict = {}
    keep = []
    for text, label in zip(texts, labels):
        if seen.get(label, 0) < per_label:
            seen[label] = seen.get(label, 0) + 1
            keep.append((text, label))
    return [t for t, _ in keep], [y for _, y in keep]


def _step(n: int, total: int, what: str, start: float) -> None:
    print(f"[{n}/{total}] {what}  (t = {time.perf_counter() - start:.0f}s)", flush=True)


def run_demo(out: Path, source: str = "demo", sample: int | None = None, progress: bool = True,
             force: bool = False) -> Path:
    """Record and write the report folder ``out``; returns it.

    Args:
        out: output folder: new, empty, or an earlier report (its figures, tables and trace are
            replaced); any other folder is refused unless ``force``.
        source: ``"demo"`` or a checkpoint folder / hub id.
        sample: number of held-out documents (default: all).
        progress: progress bars.
        force: write into a non-empty folder the workbench did not make.
    """
    import workbench as wb
    from workbench import analysis as A
    from workbench.export import INSTALL_HINT, find_chromium, save_figure, save_figures, save_table
    from workbench.views.page import render_page

    from workbench.outputs import claim_folder

    start = time.perf_counter()
    out = claim_folder(out, "demo", force=force)  # a folder the workbench did not make is refused
    for sub in ("figures", "tables", "trace"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    _step(1, 6, f"loading model {source!r}", start)
    lm = demo_model(source)
    print(f"model: {lm!r}")
    texts, labels = demo_corpus(sample)
    _step(2, 6, f"recording {len(texts)} documents (router scores kept)", start)
    trace = wb.record(lm, texts, labels=labels, scores=True, max_length=512, progress=progress,
                      out=out / "trace")
    print(f"  {trace!r}")
    _step(3, 6, "analyses: load, specialisation, vocabulary, co-activation, transitions, entropy", start)
    tables = analyse(trace, lm.rule)
    norm_texts, norm_labels = norm_subset(texts, labels)
    _step(4, 6, f"expert output norms vs router rank on {len(norm_texts)} documents (all experts run)",
          start)
    norms = A.expert_output_norms(lm, norm_texts, norm_labels, max_tokens=2048, progress=progress)
    tables["norm_rank_table"] = A.norm_rank_table(norms)
    tables["norm_rank_summary"] = A.norm_rank_summary(norms)
    tables["expert_norm_stats"] = A.expert_norm_stats(norms)
    for name, frame in tables.items():
        save_table(frame, out / "tables" / f"{name}.csv")

    _step(5, 6, "figures: interactive HTML and PNG", start)
    sections = build_sections(trace, tables)
    notes = []
    if lm.source.startswith("tiny"):
        notes.append("The trained demo checkpoint is not installed: this report was made on a tiny random "
                     "model, so the routing it shows is meaningless.")
    for key, section in sections.items():
        save_figure(section.figure, out / "figures" / f"{key}.html", include_plotlyjs="directory")
        section.links = {"interactive figure": f"figures/{key}.html", **section.links}
    browser = find_chromium()
    if browser is None:
        print(f"  PNGs skipped: {INSTALL_HINT}")
        notes.append("PNG figures were not written: " + INSTALL_HINT)
    else:
        try:
            save_figures({out / "figures" / f"{key}.png": s.figure for key, s in sections.items()})
            for key, section in sections.items():
                section.links["PNG"] = f"figures/{key}.png"
        except RuntimeError as err:
            print(f"  PNGs failed: {err}")
            notes.append(f"PNG export failed: {err}")

    _step(6, 6, "index.html", start)
    meta = {"model": f"{lm.name} ({lm.adapter.describe(lm.config)})", "fingerprint": lm.fingerprint,
            "corpus": f"{trace.num_docs} documents, {trace.num_tokens} tokens, labels: "
                      + ", ".join(f"{k} ({v})" for k, v in trace.summary()["labels"].items()),
            "layers recorded": str(trace.layers), "experts": f"E = {lm.num_experts}, k = {lm.top_k}",
            "written": time.strftime("%Y-%m-%d %H:%M")}
    page = render_page("Routing report", list(sections.values()), plotlyjs_src="figures/plotly.min.js",
                       meta=meta, notes=notes)
    (out / "index.html").write_text(page, encoding="utf-8")
    print(f"wrote {out / 'index.html'}, {len(tables)} tables in {out / 'tables'}, "
          f"{len(sections)} figures in {out / 'figures'}  ({time.perf_counter() - start:.0f}s)")
    return out
