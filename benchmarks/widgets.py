"""How long a widget control change takes in Python, on a 20k-token, 16-layer synthetic trace.

The target: every control change of the routing explorer and the expert card updates within 100 ms
of Python time (no browser involved: the time from setting ``control.value`` until the figure
objects hold the new data). Per-trace aggregates are computed once when a widget is built.

Run:
    OMP_NUM_THREADS=1 python benchmarks/widgets.py            # prints the table, updates RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/widgets.py --no-write

The trace is synthetic (OLMoE-like shape: E = 64, k = 8, 100 documents, 9 labels, Zipf token ids);
routing is drawn with per-label expert preferences so the maps are not flat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench.widgets import ExpertCard, RoutingExplorer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BUDGET_MS = 100.0


def synthetic_trace(tokens=20_000, layers=16, experts=64, k=8, docs=100, labels=9, seed=0) -> wb.RoutingTrace:
    rng = np.random.default_rng(seed)
    doc = np.sort(rng.integers(0, docs, size=tokens)).astype(np.int32)
    doc[:docs] = np.arange(docs)
    doc.sort()
    pos = np.zeros(tokens, dtype=np.int32)
    for d in range(docs):
        pos[doc == d] = np.arange((doc == d).sum())
    label_of_doc = rng.integers(0, labels, size=docs)
    prefs = rng.gamma(0.5, size=(layers, labels, experts))
    logits = np.log(prefs[:, label_of_doc[doc]] + 1e-3) + rng.gumbel(size=(layers, tokens, experts))
    idx = np.argsort(-logits, axis=-1)[:, :, :k]
    w = rng.dirichlet(np.ones(k), size=(layers, tokens)).astype(np.float32)
    w = -np.sort(-w, axis=-1)
    token_ids = np.minimum(rng.zipf(1.3, size=tokens), 5000)
    text = {int(t): f" tok{int(t)}" for t in np.unique(token_ids)}
    return wb.RoutingTrace(idx.astype(np.int16), w, token_ids, doc, pos, list(range(layers)), experts, "bench",
                           token_text=text, doc_labels=[f"domain{label}" for label in label_of_doc],
                           meta={"top_k": k})


def timed(fn, repeats: int = 7) -> list[float]:
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def run(repeats: int = 7) -> tuple[list[tuple[str, float, float]], dict]:
    RoutingExplorer(synthetic_trace(tokens=200, layers=2, docs=2))  # imports (plotly widgets) out of the way
    trace = synthetic_trace()
    start = time.perf_counter()
    explorer = RoutingExplorer(trace)
    build_explorer = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    card = ExpertCard(trace, counts=explorer.counts)
    build_card = (time.perf_counter() - start) * 1000
    layers = trace.layers
    labels = [explorer.label.options[1 + i % 9] for i in range(9)]
    metrics = [v for _, v in explorer.metric.options]
    cases = {
        "explorer: layers": lambda i: setattr(explorer.layers, "value", tuple(layers[i % 3::2])),
        "explorer: label": lambda i: setattr(explorer.label, "value", labels[i % len(labels)]),
        "explorer: metric": lambda i: setattr(explorer.metric, "value", metrics[(i + 1) % len(metrics)]),
        "explorer: document": lambda i: setattr(explorer.doc, "value", (7 * i + 3) % trace.num_docs),
        "explorer: window start": lambda i: setattr(explorer.start, "value", (i % 3) * 32),
        "explorer: slot rank": lambda i: setattr(explorer.rank, "value", (i + 1) % trace.k),
        "explorer: click a cell": lambda i: explorer.show_cell(layers[i % 16], (5 * i) % trace.num_experts),
        "card: layer": lambda i: setattr(card.layer, "value", layers[(i + 1) % 16]),
        "card: expert": lambda i: setattr(card.expert, "value", (3 * i + 1) % trace.num_experts),
    }
    explorer.layers.value = tuple(layers)
    rows = []
    for name, fn in cases.items():
        ms = timed(fn, repeats)
        rows.append((name, statistics.median(ms), max(ms)))
    info = {"tokens": trace.num_tokens, "layers": len(layers), "experts": trace.num_experts, "k": trace.k,
            "docs": trace.num_docs, "build_explorer_ms": build_explorer, "build_card_ms": build_card}
    return rows, info


SECTION = "Widgets: Python time per control change"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/widgets.py"


def report_lines(rows, info, repeats) -> list[str]:
    """The RESULTS.md section body: what was measured and the per-control table."""
    width = max(len(r[0]) for r in rows)
    lines = [
        (f"synthetic trace: {info['tokens']} tokens, {info['layers']} layers, E={info['experts']}, "
         f"k={info['k']}, {info['docs']} documents"),
        "time from setting a control's value until the FigureWidget/HTML outputs hold the new state;",
        f"median and worst of {repeats} changes; budget {BUDGET_MS:.0f} ms; Python {platform.python_version()}",
        (f"build (aggregates computed once, imports excluded): explorer {info['build_explorer_ms']:.0f} ms, "
         f"expert card {info['build_card_ms']:.0f} ms"),
        "",
        f"{'control':<{width}}  median ms  max ms  within budget",
    ]
    lines += [f"{name:<{width}}  {med:9.1f}  {worst:6.1f}  {'yes' if worst <= BUDGET_MS else 'NO'}"
              for name, med, worst in rows]
    return lines


def write_results(lines: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (the shared writer in benchmarks/results.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results import write_section

    write_section(SECTION, COMMAND, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    rows, info = run(args.repeats)
    lines = report_lines(rows, info, args.repeats)
    print("\n".join(lines))
    if not args.no_write:
        write_results(lines)
        print(f"updated the section '{SECTION}' of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
