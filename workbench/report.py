"""The main job: record a corpus's routing, run every analysis, write a report folder.

``python -m workbench report --model SOURCE --texts FILE --out DIR`` calls :func:`run_report`;
``python -m workbench demo --out report`` (``make demo``) is its default case, the demo model on its
held-out corpus (:func:`run_demo`). Both write::

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


def analyse(trace, rule=None, progress: bool = False) -> dict:
    """Every trace analysis, by name (see :mod:`workbench.analysis`).

    Args:
        trace: a recorded trace (in memory or a store).
        rule: the model's routing rule, for the router entropy of families that do not softmax.
        progress: a progress bar over the analyses.
    """
    from tqdm.auto import tqdm

    from workbench import analysis as A

    with tqdm(total=8 + (len(trace.layers) > 1) + trace.has_scores, desc="analyses", unit="table",
              disable=not progress) as bar:
        def step(name, make):
            bar.set_postfix_str(name, refresh=False)
            value = make()
            bar.update(1)
            return value

        counts = step("counts", lambda: A.as_counts(trace))  # a store: its cached one-pass aggregates
        vocab = step("vocab_specialization", lambda: A.vocab_specialization(trace))
        tables = {"vocab_specialization": vocab}
        for name, make in [("expert_load", lambda: A.expert_load(counts)),
                           ("load_summary", lambda: A.load_summary(counts)),
                           ("label_specialization", lambda: A.label_specialization(counts)),
                           ("specialization_scores", lambda: A.specialization_scores(counts)),
                           ("vocab_summary", lambda: A.vocab_summary(vocab)),
                           ("coactivation", lambda: A.coactivation(counts))]:
            tables[name] = step(name, make)
        if len(trace.layers) > 1:
            tables["layer_transitions"] = step("layer_transitions", lambda: A.layer_transitions(trace))
        if trace.has_scores:
            tables["router_entropy"] = step("router_entropy", lambda: A.router_entropy(trace, rule))
    order = ["expert_load", "load_summary", "label_specialization", "specialization_scores",
             "vocab_specialization", "vocab_summary", "coactivation", "layer_transitions", "router_entropy"]
    return {name: tables[name] for name in order if name in tables}


#: Columns renamed in the CSV files the report and ``python -m workbench analyse`` write, so that
#: each says what it holds (the DataFrames keep the library's short names).
CSV_COLUMNS = {"coactivation": {"a": "expert_a", "b": "expert_b"}}


def save_tables(tables: dict, folder) -> list:
    """Write every table as ``folder/<name>.csv`` (sorted, fixed float format); returns the paths."""
    from workbench.export import save_table

    return [save_table(frame.rename(columns=CSV_COLUMNS.get(name, {})), Path(folder) / f"{name}.csv")
            for name, frame in tables.items()]


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


def report_corpus(texts=None, labels=None, sample: int | None = None) -> tuple[list[str], list | None, str]:
    """``(texts, labels, description)`` of a report's corpus.

    Args:
        texts: None (the demo's held-out corpus), a ``.txt`` / ``.jsonl`` file (see
            :func:`workbench.jsonl.read_texts`), or a list of strings.
        labels: one label per text of a list (a file brings its own).
        sample: number of documents, taken round-robin over labels (default: all).
    """
    if texts is None:
        if labels is not None:
            raise ValueError("labels go with texts; the demo corpus brings its own")
        texts, labels = demo_corpus(sample)
        return texts, labels, "the demo's held-out corpus"
    if isinstance(texts, (str, Path)):
        from workbench.jsonl import read_texts

        if labels is not None:
            raise ValueError("labels go with a list of texts; a texts file brings its own")
        what = str(texts)
        texts, labels = read_texts(texts)
    else:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a file, or a list of strings")
        texts, what = list(texts), "the texts given"
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"one label per text: {len(labels)} labels for {len(texts)} texts")
    rows = _balanced([{"text": t, "label": None if labels is None else y}
                      for t, y in zip(texts, labels if labels is not None else [None] * len(texts))], sample)
    picked = [r["label"] for r in rows]
    return [r["text"] for r in rows], (picked if any(y is not None for y in picked) else None), what


def run_demo(out: Path, source: str = "demo", sample: int | None = None, progress: bool = True,
             force: bool = False) -> Path:
    """The report of the demo model on its held-out corpus (:func:`run_report`'s default case)."""
    return run_report(out, source=source, sample=sample, progress=progress, force=force, kind="demo")


def run_report(out: Path, source: str = "demo", texts=None, labels=None, *, sample: int | None = None,
               max_length: int | None = None, device: str | None = None, dtype=None, trust_remote_code: bool = False,
               progress: bool = True, force: bool = False, kind: str = "report") -> Path:
    """Record ``texts`` on ``source``, run every analysis and write the report folder ``out``; returns it.

    Args:
        out: output folder: new, empty, or an earlier report (its figures, tables and trace are
            replaced); any other folder is refused unless ``force``.
        source: ``"demo"`` or a checkpoint folder / hub id.
        texts: a ``.txt`` / ``.jsonl`` file, a list of strings, or None: the demo's held-out corpus.
        labels: one label per text of a list (optional; the label tables need labels).
        sample: number of documents (default: all), round-robin over labels.
        max_length: tokens recorded per document (default: 512, or the model's context if shorter).
        device, dtype: where and in what precision the model runs (default: the CPU, the
            checkpoint's dtype).
        trust_remote_code: allow the checkpoint's own Python code.
        progress: progress bars.
        force: write into a non-empty folder the workbench did not make.
        kind: the command recorded in the folder's marker.

    Example:
        >>> from workbench.report import run_report
        >>> run_report("report", "some-org/some-moe", "texts.jsonl")  # doctest: +SKIP
    """
    import workbench as wb
    from tqdm.auto import tqdm

    from workbench import analysis as A
    from workbench.export import INSTALL_HINT, find_chromium, save_figure, save_figures
    from workbench.outputs import claim_folder
    from workbench.views.page import render_page

    start = time.perf_counter()
    texts, labels, corpus = report_corpus(texts, labels, sample)  # a bad file is refused before anything runs
    if source != "demo":
        from workbench.loading import load_config, resolve_source

        load_config(*resolve_source(source), trust_remote_code)  # so is a wrong model path or a dense model
    out = claim_folder(out, kind, force=force)  # a folder the workbench did not make is refused
    for sub in ("figures", "tables", "trace"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    _step(1, 6, f"loading model {source!r}", start)
    with tqdm(total=1, desc="loading model", bar_format="{desc}: {elapsed}", disable=not progress) as bar:
        lm = demo_model(source, device=device, dtype=dtype) if source == "demo" else \
            wb.load(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        bar.update(1)
    print(f"model: {lm!r}")
    if max_length is None:
        context = getattr(lm.config, "max_position_embeddings", None)
        max_length = min(512, context) if isinstance(context, int) and context > 0 else 512
    _step(2, 6, f"recording {len(texts)} documents of {corpus} (router scores kept)", start)
    trace = wb.record(lm, texts, labels=labels, scores=True, max_length=max_length, progress=progress,
                      out=out / "trace")
    print(f"  {trace!r}")
    _step(3, 6, "analyses: load, specialisation, vocabulary, co-activation, transitions, entropy", start)
    tables = analyse(trace, lm.rule, progress=progress)
    norm_texts, norm_labels = norm_subset(texts, labels if labels is not None else [None] * len(texts),
                                          per_label=3 if labels is not None else 12)
    _step(4, 6, f"expert output norms vs router rank on {len(norm_texts)} documents (all experts run)",
          start)
    norms = A.expert_output_norms(lm, norm_texts, norm_labels if labels is not None else None, max_tokens=2048,
                                  progress=progress)
    tables["norm_rank_table"] = A.norm_rank_table(norms)
    tables["norm_rank_summary"] = A.norm_rank_summary(norms)
    tables["expert_norm_stats"] = A.expert_norm_stats(norms)
    save_tables(tables, out / "tables")

    _step(5, 6, "figures: interactive HTML and PNG", start)
    with tqdm(total=1, desc="figures (building)", bar_format="{desc}: {elapsed}", disable=not progress) as bar:
        sections = build_sections(trace, tables)
        bar.update(1)
    notes = []
    if lm.source.startswith("tiny"):
        notes.append("The trained demo checkpoint is not installed: this report was made on a tiny random "
                     "model, so the routing it shows is meaningless.")
    if labels is None:
        notes.append("The texts have no labels, so the label (domain) tables treat them as one group; give a "
                     ".jsonl file with a \"label\" on every line to compare domains.")
    for key, section in tqdm(sections.items(), desc="figures (HTML)", unit="figure", disable=not progress):
        save_figure(section.figure, out / "figures" / f"{key}.html", include_plotlyjs="directory")
        section.links = {"interactive figure": f"figures/{key}.html", **section.links}
    browser = find_chromium()
    if browser is None:
        print(f"  PNGs skipped: {INSTALL_HINT}")
        notes.append("PNG figures were not written: " + INSTALL_HINT)
    else:
        try:
            with tqdm(total=len(sections), desc="figures (PNG, one browser run)", unit="figure",
                      disable=not progress) as bar:
                save_figures({out / "figures" / f"{key}.png": s.figure for key, s in sections.items()})
                bar.update(len(sections))
            for key, section in sections.items():
                section.links["PNG"] = f"figures/{key}.png"
        except RuntimeError as err:
            print(f"  PNGs failed: {err}")
            notes.append(f"PNG export failed: {err}")

    _step(6, 6, "index.html", start)
    summary_labels = trace.summary()["labels"]
    meta = {"model": f"{lm.name} ({lm.adapter.describe(lm.config)})", "fingerprint": lm.fingerprint,
            "corpus": f"{corpus}: {trace.num_docs} documents, {trace.num_tokens} tokens"
                      + (", labels: " + ", ".join(f"{k} ({v})" for k, v in summary_labels.items())
                         if labels is not None else ", no labels"),
            "layers recorded": str(trace.layers), "experts": f"E = {lm.num_experts}, k = {lm.top_k}",
            "written": time.strftime("%Y-%m-%d %H:%M")}
    title = "Routing report" if kind == "demo" else f"Routing report: {lm.name}"
    page = render_page(title, list(sections.values()), plotlyjs_src="figures/plotly.min.js",
                       meta=meta, notes=notes)
    (out / "index.html").write_text(page, encoding="utf-8")
    print(f"wrote {out / 'index.html'}, {len(tables)} tables in {out / 'tables'}, "
          f"{len(sections)} figures in {out / 'figures'}  ({time.perf_counter() - start:.0f}s)")
    return out
